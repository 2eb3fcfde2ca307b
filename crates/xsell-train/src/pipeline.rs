//! The training pipeline: aggregates → embeddings → ranker → calibration → refit.

use std::time::Instant;

use ndarray::{Array3, ArrayViewMut2};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xsell_core::aggregate::AggregateConfig;
use xsell_core::baseline::{Cooccurrence, Popularity, Recommender};
use xsell_core::metrics::{Evaluator, QueryTags};
use xsell_core::model::{CustomerTable, FEATURE_GROUPS, ItemTable, ModelParts, N_FEATURES, Policy, Ranker, feature};
use xsell_core::protocol::draw_index_queries;
use xsell_core::{Aggregates, CrossSellModel, Csr, ItemIx, OrderLog};

use crate::ease::{self, LAMBDA_GRID, LambdaTrial, PosQuery};
use crate::embed::train_embeddings;
use crate::ranker::{RankerFit, fit_platt, fit_ranker};
use crate::{Progress, Result, TrainConfig, TrainError};

/// Wall time of one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseTime {
    /// Phase name.
    pub phase: String,
    /// Seconds.
    pub seconds: f64,
}

/// hit@10 / mrr@20 of the model and the baselines on the trainer's held-out queries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValidationMetrics {
    /// Queries judged.
    pub queries: usize,
    /// Per system: (name, hit@10, mrr@20).
    pub systems: Vec<(String, f64, f64)>,
}

/// What happened during training.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    /// Orders trained on.
    pub orders: usize,
    /// Items in the model.
    pub items: usize,
    /// Customers in the model.
    pub customers: usize,
    /// Ranker queries used for fitting.
    pub ranker_queries: usize,
    /// The ranker kept, by validation: "hidden-layer ranker", "linear ranker", "fitted ranker"
    /// (the only fit, when `ranker_hidden` is 0) or "ease alone".
    pub ranker: String,
    /// Time per phase.
    pub phases: Vec<PhaseTime>,
    /// Validation metrics.
    pub validation: ValidationMetrics,
    /// EASE: items covered, the regularization kept and the validation of each candidate.
    pub ease: Option<EaseReport>,
}

/// How EASE was fitted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EaseReport {
    /// Items covered by the final fit.
    pub items: usize,
    /// λ as a multiple of the mean Gram diagonal (chosen on the validation queries).
    pub alpha: f64,
    /// λ of the final fit.
    pub lambda: f64,
    /// hit@10 / mrr@20 of EASE alone on the validation queries, per candidate λ.
    pub trials: Vec<LambdaTrial>,
}

/// A trained model with its report and the aggregates of all training orders (log index space).
#[derive(Debug)]
pub struct Fitted {
    /// The model.
    pub parts: ModelParts,
    /// The report.
    pub report: TrainReport,
    /// Aggregates over every training order, in the log's index space (for baselines).
    pub aggregates: Aggregates,
    /// With [`TrainConfig::ablation`]: per feature group, a ranker of the kept family (linear
    /// when EASE alone was kept) fitted without it (uncalibrated).
    pub ablations: Vec<(String, Ranker)>,
}

struct Timer<'a> {
    phases: &'a mut Vec<PhaseTime>,
    start: Instant,
}

impl Timer<'_> {
    fn lap(&mut self, phase: &str) {
        self.phases.push(PhaseTime { phase: phase.into(), seconds: self.start.elapsed().as_secs_f64() });
        self.start = Instant::now();
    }
}

/// Maps between a log's index space and a model's.
struct Spaces {
    item_to_model: Vec<Option<ItemIx>>,
    customer_to_model: Vec<Option<u32>>,
}

/// Builds model parts (everything but a fitted ranker) from aggregates over a log.
fn build(log: &OrderLog, agg: &Aggregates, cfg: &TrainConfig, ranker: Ranker, progress: &mut dyn Progress) -> Result<(ModelParts, Spaces)> {
    let mut item_to_model = vec![None; log.catalog.len()];
    let mut items = ItemTable::default();
    for (i, &c) in agg.item_orders.iter().enumerate() {
        if c > 0.0 {
            item_to_model[i] = Some(items.ids.len() as ItemIx);
            items.ids.push(log.catalog.ids[i].clone());
            items.names.push(log.catalog.names[i].clone());
            items.categories.push(log.catalog.categories[i].clone());
            items.prices.push(log.catalog.prices[i]);
            items.orders.push(c);
            items.recent_orders.push(agg.item_recent_orders[i]);
            items.return_rate.push(agg.item_return_rate(i as ItemIx));
        }
    }
    if items.ids.is_empty() {
        return Err(TrainError::NotEnoughData("no item was bought in the training orders".into()));
    }
    let mut customer_to_model = vec![None; log.customers.len()];
    let mut customers = CustomerTable::default();
    let mut customer_lines = Vec::new();
    for (c, slot) in customer_to_model.iter_mut().enumerate() {
        if agg.customer_orders[c] > 0.0 || agg.customer_returns[c] > 0.0 {
            *slot = Some(customers.ids.len() as u32);
            customers.ids.push(log.customers[c].clone());
            customers.orders.push(agg.customer_orders[c]);
            customers.return_rate.push(agg.customer_return_rate(c as u32));
            customer_lines.push(agg.customer_lines[c]);
        }
    }
    let remap = |csr: &Csr, rows: &[Option<u32>]| -> Csr {
        Csr::from_rows(rows.iter().enumerate().filter(|(_, m)| m.is_some()).map(|(r, _)| {
            let (cols, vals) = csr.row(r);
            cols.iter().zip(vals).filter_map(|(&c, &v)| item_to_model[c as usize].map(|m| (m, v))).collect()
        }))
    };
    let pairs = remap(&agg.pairs, &item_to_model);
    let history = remap(&agg.history, &customer_to_model);
    let since = remap(&agg.since, &customer_to_model);
    let (emb_in, emb_out) = train_embeddings(&pairs, &items.orders, cfg, progress)?;
    let n_items = items.ids.len();
    let parts = ModelParts {
        items,
        customers,
        customer_lines,
        pairs,
        history,
        since,
        ease: Csr::from_rows(vec![Vec::new(); n_items]),
        emb_in,
        emb_out,
        n_orders: agg.n_orders as f32,
        n_recent: agg.n_recent as f32,
        ranker,
        policy: Policy::default(),
    };
    Ok((parts, Spaces { item_to_model, customer_to_model }))
}

/// Fits EASE on the Gram of `agg` into `parts.ease`: at `alpha` when given, else at the best
/// of [`LAMBDA_GRID`] on `queries` (the middle of the grid when there is none).
fn fit_ease(
    agg: &Aggregates,
    spaces: &Spaces,
    parts: &mut ModelParts,
    cfg: &TrainConfig,
    alpha: Option<f64>,
    queries: &[&MQuery],
) -> Result<Option<EaseReport>> {
    if agg.gram_items.is_empty() {
        return Ok(None);
    }
    let items: Vec<ItemIx> = agg.gram_items.iter().map(|&i| spaces.item_to_model[i as usize].expect("Gram items were bought")).collect();
    let (alpha, trials) = match alpha {
        Some(a) => (a, Vec::new()),
        None if queries.is_empty() => (1.0, Vec::new()),
        None => {
            let mut pos = vec![None; parts.items.ids.len()];
            for (a, &i) in items.iter().enumerate() {
                pos[i as usize] = Some(a);
            }
            let pq: Vec<PosQuery> =
                queries.iter().map(|q| (q.basket.iter().filter_map(|&i| pos[i as usize]).collect(), pos[q.target as usize])).collect();
            ease::choose(&agg.gram, &LAMBDA_GRID, &pq, cfg.ease_search_items)?
        }
    };
    let fitted = ease::fit(&agg.gram, alpha)?;
    parts.ease = ease::sparsify(&fitted, &items, parts.items.ids.len(), cfg.max_neighbours);
    Ok(Some(EaseReport { items: items.len(), alpha: fitted.alpha, lambda: fitted.lambda, trials }))
}

/// A ranker on held-out queries.
struct Judged {
    /// Top-10 scores and whether each was the target (Platt's input).
    scores: Vec<f32>,
    labels: Vec<bool>,
    /// Per query: hit@10 + reciprocal rank within the top 20.
    outcome: Vec<f64>,
}

/// True when `new` beats `old` on the same queries by more than one standard error of the
/// per-query difference.
fn clearly_better(new: &[f64], old: &[f64]) -> bool {
    let n = new.len().min(old.len());
    if n < 2 {
        return false;
    }
    let d: Vec<f64> = new.iter().zip(old).map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    mean > (var / n as f64).sqrt()
}

/// Held-out targets drawn per validation order, at most.
const RANKER_DRAWS: u64 = 4;

/// One ranker query in model space.
struct MQuery {
    /// Index into `log.orders`.
    order: usize,
    customer: Option<u32>,
    basket: Vec<ItemIx>,
    target: ItemIx,
    /// The same query in log space, for the baselines.
    log_basket: Vec<ItemIx>,
    log_target: ItemIx,
}

/// Trains a model on `orders` (indices into `log.orders`, oldest first); return signals at or
/// after `cutoff_ts` are ignored.
pub fn train(log: &OrderLog, orders: &[usize], cutoff_ts: Option<i64>, cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<Fitted> {
    cfg.validate()?;
    if orders.is_empty() {
        return Err(TrainError::NotEnoughData("no training order".into()));
    }
    let agg_cfg = AggregateConfig {
        max_neighbours: cfg.max_neighbours,
        gram_items: cfg.ease_items,
        recent_fraction: cfg.recent_fraction,
        gram_half_life: cfg.ease_half_life,
    };
    let mut report = TrainReport { orders: orders.len(), ..Default::default() };
    let mut timer = Timer { phases: &mut report.phases, start: Instant::now() };

    let n_valid = (orders.len() as f64 * cfg.validation_fraction).round() as usize;
    let (base, valid) = orders.split_at(orders.len() - n_valid);
    let base_cut = valid.first().and_then(|&o| log.orders[o].ts).or(cutoff_ts);
    let fit_ranker_now = !valid.is_empty() && !base.is_empty();
    let (base, base_cut) = if fit_ranker_now { (base, base_cut) } else { (orders, cutoff_ts) };
    progress.start("aggregates", 1);
    let base_agg = Aggregates::compute(log, base, base_cut, &agg_cfg);
    progress.finish();
    timer.lap("aggregates");
    let (mut parts, spaces) = build(log, &base_agg, cfg, Ranker::single(1), progress)?;
    timer.lap("embeddings");

    // up to RANKER_DRAWS held-out targets per validation order, for more ranker examples
    let mut queries: Vec<MQuery> = Vec::new();
    for draw in 0..RANKER_DRAWS {
        if !fit_ranker_now || queries.len() >= cfg.ranker_queries {
            break;
        }
        let want = cfg.ranker_queries - queries.len();
        queries.extend(draw_index_queries(log, valid, cfg.seed.wrapping_add(draw), want).into_iter().filter_map(|(o, t)| {
            let order = &log.orders[o];
            let target = spaces.item_to_model[t as usize]?;
            let log_basket: Vec<ItemIx> = order.items.iter().copied().filter(|&i| i != t).collect();
            let basket: Vec<ItemIx> = log_basket.iter().filter_map(|&i| spaces.item_to_model[i as usize]).collect();
            let customer = order.customer.and_then(|c| spaces.customer_to_model[c as usize]);
            Some(MQuery { order: o, customer, basket, target, log_basket, log_target: t })
        }));
    }
    // calibration queries are whole orders apart from the fitting ones
    let share = cfg.calibration_share;
    let (calib, fit): (Vec<&MQuery>, Vec<&MQuery>) = queries.iter().partition(|q| (q.order as f64 * share).fract() + share >= 1.0);
    progress.start("ease", 1);
    let fixed_alpha = (cfg.ease_lambda > 0.0).then(|| cfg.ease_lambda / ease::diagonal_scale(&base_agg.gram));
    report.ease = fit_ease(&base_agg, &spaces, &mut parts, cfg, fixed_alpha, &fit)?;
    progress.finish();
    timer.lap("ease");

    let model = CrossSellModel::new(parts)?;
    let mut ranker = Ranker::single(feature::COOC_MEAN);
    let mut validation = ValidationMetrics::default();
    let mut ablations = Vec::new();
    let mut linear = None;
    let mut fitted = None;
    if fit_ranker_now {
        report.ranker_queries = fit.len();
        if !fit.is_empty() {
            progress.start("ranker features", fit.len() as u64);
            // a small catalog holds fewer candidates than asked for
            let rows = (1 + cfg.ranker_hard_negatives + cfg.ranker_random_negatives).min(model.n_items().max(2));
            let mut examples = Array3::<f32>::zeros((fit.len(), rows, N_FEATURES));
            let fit_cfg = RankerFit { epochs: cfg.ranker_epochs, seed: cfg.seed, disabled: [false; N_FEATURES], hidden: cfg.ranker_hidden };
            let mut mined: Option<Ranker> = None;
            let mut valid = Vec::new();
            for round in 0..=cfg.ranker_mining_rounds {
                valid = examples
                    .outer_iter_mut()
                    .into_par_iter()
                    .zip(fit.par_iter())
                    .enumerate()
                    .map(|(k, (slot, q))| examples_for(&model, q, cfg, cfg.seed ^ k as u64, mined.as_ref(), slot))
                    .collect();
                if round == 0 {
                    progress.finish();
                    timer.lap("ranker features");
                }
                mined = Some(fit_ranker(&examples, &valid, &fit_cfg, progress)?);
            }
            ranker = mined.take().expect("at least one round");
            if cfg.ranker_hidden > 0 {
                linear = Some(fit_ranker(&examples, &valid, &RankerFit { hidden: 0, ..fit_cfg }, progress)?);
            }
            timer.lap("ranker fit");
            fitted = Some((examples, valid, fit_cfg));
        }
        // calibration and validation metrics on the held-out queries. Contenders go from the
        // simplest (EASE alone) to the richest; a richer one is kept only when it beats the one
        // kept so far by more than one standard error of the paired per-query difference, so a
        // small validation slice cannot hand the model to noise.
        let judged = if calib.is_empty() { &fit } else { &calib };
        let mut contenders = Vec::new();
        if report.ease.is_some() {
            contenders.push(("ease alone", Ranker::single(feature::EASE)));
        }
        match linear {
            Some(l) => contenders.extend([("linear ranker", l), ("hidden-layer ranker", ranker.clone())]),
            None => contenders.push(("fitted ranker", ranker.clone())),
        }
        let mut kept: Option<(&str, Ranker, Judged)> = None;
        let mut contender_rows = Vec::new();
        for (name, r) in contenders {
            let judge = CrossSellModel::new(ModelParts { ranker: r.clone(), ..model.parts().clone() })?;
            let (top, metrics) = calibrate_and_judge(&judge, &base_agg, judged);
            let (_, hit, mrr) = metrics.systems[0];
            contender_rows.push((name.to_string(), hit, mrr));
            if kept.as_ref().is_none_or(|(_, _, k)| clearly_better(&top.outcome, &k.outcome)) {
                kept = Some((name, r, top));
            }
            // the baselines' rows are the same for every contender
            validation = ValidationMetrics { systems: metrics.systems[1..].to_vec(), ..metrics };
        }
        let (name, chosen, Judged { scores, labels, .. }) = kept.expect("the fitted ranker is a contender");
        report.ranker = name.into();
        ranker = chosen;
        let (a, b) = fit_platt(&scores, &labels);
        ranker.calib_a = a;
        ranker.calib_b = b;
        contender_rows.append(&mut validation.systems);
        validation.systems = contender_rows;
        timer.lap("calibration");
        if let Some((examples, valid, fit_cfg)) = fitted.filter(|_| cfg.ablation) {
            // the kept family (the linear one when EASE alone was kept), without each group
            let hidden = if name == "linear ranker" || name == "ease alone" { 0 } else { cfg.ranker_hidden };
            for (group, features) in FEATURE_GROUPS {
                let mut disabled = [false; N_FEATURES];
                features.iter().for_each(|&f| disabled[f] = true);
                ablations.push((group.to_string(), fit_ranker(&examples, &valid, &RankerFit { disabled, hidden, ..fit_cfg }, progress)?));
            }
            timer.lap("ablation rankers");
        }
    }
    // without a validation slice the base pass already covered every training order
    let (parts, all_agg) = if cfg.refit && fit_ranker_now {
        progress.start("refit aggregates", 1);
        let agg = Aggregates::compute(log, orders, cutoff_ts, &agg_cfg);
        progress.finish();
        let (mut parts, spaces) = build(log, &agg, cfg, ranker, progress)?;
        // the relative λ carries over: the Gram's scale grows with the orders
        let alpha = report.ease.as_ref().map(|e| e.alpha);
        if let Some(e) = fit_ease(&agg, &spaces, &mut parts, cfg, alpha, &[])? {
            let trials = report.ease.take().map(|r| r.trials).unwrap_or_default();
            report.ease = Some(EaseReport { trials, ..e });
        }
        timer.lap("refit");
        (parts, agg)
    } else {
        (ModelParts { ranker, ..model.parts().clone() }, base_agg)
    };
    report.items = parts.items.ids.len();
    report.customers = parts.customers.ids.len();
    report.validation = validation;
    // validates the final parts once, so a bad model fails here and not in the server
    CrossSellModel::new(parts.clone())?;
    Ok(Fitted { parts, report, aggregates: all_agg, ablations })
}

/// Features whose best-scored items become hard negatives: each candidate source's favourites,
/// so the ranker sees every kind of item it will have to rank down when it scores the catalog.
const NEGATIVE_SOURCES: [usize; 11] = [
    feature::EASE,
    feature::EASE_HISTORY,
    feature::COOC_MEAN,
    feature::JACCARD_MEAN,
    feature::EMB_COMP,
    feature::EMB_COS,
    feature::NAME_BASKET,
    feature::HIST_SHARE,
    feature::HIST_RECENCY,
    feature::POPULARITY,
    feature::POP_RECENT,
];

/// Target row first, then hard negatives, then random ones, written into `out` (at most
/// `1 + hard + random` rows, fewer in a tiny catalog); returns the rows written. The hard negatives are the best items of each of
/// [`NEGATIVE_SOURCES`] in turn; with a `mined` ranker, half of them are that ranker's own
/// favourites first (the mistakes it still makes).
fn examples_for(
    model: &CrossSellModel,
    q: &MQuery,
    cfg: &TrainConfig,
    seed: u64,
    mined: Option<&Ranker>,
    mut out: ArrayViewMut2<'_, f32>,
) -> usize {
    let x = model.features(q.customer, &q.basket);
    let n = x.nrows();
    let mut taken = vec![false; n];
    taken[q.target as usize] = true;
    for &i in &q.basket {
        taken[i as usize] = true;
    }
    let mut rows = vec![q.target as usize];
    let mut take_best = |score: &dyn Fn(usize) -> f32, room: usize, rows: &mut Vec<usize>| {
        let mut best: Vec<usize> = (0..n).filter(|&j| !taken[j] && score(j) > 0.0).collect();
        if best.len() > room && room > 0 {
            best.select_nth_unstable_by(room - 1, |&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        }
        for &j in best.iter().take(room) {
            taken[j] = true;
            rows.push(j);
        }
    };
    let mut hard = cfg.ranker_hard_negatives;
    if let Some(r) = mined {
        let s = r.scores(&x);
        let lowest = s.iter().copied().fold(f32::INFINITY, f32::min);
        take_best(&|j| s[j] - lowest + 1.0, hard / 2, &mut rows);
        hard -= rows.len() - 1;
    }
    let per_source = hard.div_ceil(NEGATIVE_SOURCES.len());
    let hard_end = rows.len() + hard;
    for f in NEGATIVE_SOURCES {
        let room = per_source.min(hard_end - rows.len());
        take_best(&|j| x[[j, f]], room, &mut rows);
    }
    let want = 1 + cfg.ranker_hard_negatives + cfg.ranker_random_negatives;
    let rest: Vec<usize> = (0..n).filter(|&j| !taken[j]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let take = (want - rows.len()).min(rest.len());
    rows.extend(sample(&mut rng, rest.len(), take).into_iter().map(|k| rest[k]));
    // tiny catalogs leave rows over: zeros, masked out by the fit
    out.fill(0.0);
    for (mut dst, &j) in out.outer_iter_mut().zip(&rows) {
        dst.assign(&x.row(j));
    }
    rows.len()
}

/// Top-10 scores and labels of the held-out queries (for Platt), and validation metrics of the
/// model and of the baselines.
fn calibrate_and_judge(model: &CrossSellModel, agg: &Aggregates, queries: &[&MQuery]) -> (Judged, ValidationMetrics) {
    let results: Vec<(Vec<ItemIx>, Vec<f32>)> = queries
        .par_iter()
        .map(|q| {
            let scores = model.scores(q.customer, &q.basket);
            let mut order: Vec<ItemIx> = (0..scores.len() as ItemIx).filter(|j| !q.basket.contains(j)).collect();
            order.sort_unstable_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
            order.truncate(20);
            let s = order.iter().map(|&j| scores[j as usize]).collect();
            (order, s)
        })
        .collect();
    let (mut cal_s, mut cal_y, mut outcome) = (Vec::new(), Vec::new(), Vec::new());
    let mut eval_model = Evaluator::new();
    let key = |i: ItemIx| i.to_string();
    for (q, (order, s)) in queries.iter().zip(&results) {
        for (&j, &sc) in order.iter().zip(s).take(10) {
            cal_s.push(sc);
            cal_y.push(j == q.target);
        }
        outcome.push(order.iter().position(|&j| j == q.target).map_or(0.0, |r| f64::from(u8::from(r < 10)) + 1.0 / (r + 1) as f64));
        let ranked: Vec<String> = order.iter().map(|&j| key(j)).collect();
        eval_model.add(&ranked, None, &key(q.target), QueryTags::default());
    }
    let mut systems = vec![summary("xsell", &eval_model, model.n_items())];
    let baselines: [(&str, &dyn Recommender); 2] = [("cooccurrence", &Cooccurrence(agg)), ("popularity", &Popularity(agg))];
    for (name, rec) in baselines {
        let mut ev = Evaluator::new();
        for q in queries {
            let ranked: Vec<String> = rec.recommend(None, &q.log_basket, 20).into_iter().map(key).collect();
            ev.add(&ranked, None, &key(q.log_target), QueryTags::default());
        }
        systems.push(summary(name, &ev, model.n_items()));
    }
    (Judged { scores: cal_s, labels: cal_y, outcome }, ValidationMetrics { queries: queries.len(), systems })
}

fn summary(name: &str, ev: &Evaluator, n: usize) -> (String, f64, f64) {
    let m = ev.finish(n);
    (name.to_owned(), m.hit10, m.mrr20)
}

#[cfg(test)]
mod tests {
    use super::clearly_better;

    #[test]
    fn a_richer_ranker_must_win_beyond_noise() {
        let old = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        assert!(clearly_better(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], &old), "wins on 3 queries, loses none");
        assert!(!clearly_better(&[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], &old), "one win, one loss: a tie");
        assert!(!clearly_better(&old, &old));
        assert!(!clearly_better(&[1.0], &[0.0]), "one query proves nothing");
    }
}
