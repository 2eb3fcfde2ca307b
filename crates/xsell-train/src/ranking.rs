//! The ranker's half of training: validation queries, their examples, the fits, and the choice
//! between EASE alone, the linear and the hidden-layer ranker on held-out orders.

use ndarray::{Array3, ArrayViewMut2};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use xsell_core::baseline::{Cooccurrence, Popularity, Recommender};
use xsell_core::metrics::{Evaluator, QueryTags};
use xsell_core::model::{FEATURE_GROUPS, ModelParts, N_FEATURES, Ranker, feature};
use xsell_core::protocol::draw_index_queries;
use xsell_core::{Aggregates, CrossSellModel, ItemIx, OrderLog};

use crate::pipeline::{Spaces, ValidationMetrics};
use crate::ranker::{RankerData, RankerFit, fit_platt, fit_ranker};
use crate::{Progress, Result, TrainConfig};

/// Held-out targets drawn per validation order, at most.
const RANKER_DRAWS: u64 = 4;

/// One ranker query in model space.
pub(crate) struct MQuery {
    /// Index into `log.orders`.
    pub(crate) order: usize,
    pub(crate) customer: Option<u32>,
    pub(crate) basket: Vec<ItemIx>,
    pub(crate) target: ItemIx,
    /// The same query in log space, for the baselines.
    pub(crate) log_basket: Vec<ItemIx>,
    pub(crate) log_target: ItemIx,
}

/// Up to [`RANKER_DRAWS`] held-out targets per validation order (for more ranker examples), at
/// most `cfg.ranker_queries`, in model space.
pub(crate) fn draw_queries(log: &OrderLog, valid: &[usize], spaces: &Spaces, cfg: &TrainConfig) -> Vec<MQuery> {
    let mut queries: Vec<MQuery> = Vec::new();
    for draw in 0..RANKER_DRAWS {
        if queries.len() >= cfg.ranker_queries {
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
    queries
}

/// (calibration, fitting) queries: `share` of the orders go to calibration, whole orders apart.
pub(crate) fn split_calibration(queries: &[MQuery], share: f64) -> (Vec<&MQuery>, Vec<&MQuery>) {
    queries.iter().partition(|q| (q.order as f64 * share).fract() + share >= 1.0)
}

/// The fitted rankers and the examples they were fitted on (kept for ablations).
pub(crate) struct Fits {
    data: RankerData,
    fit: RankerFit,
    /// Fitted with `cfg.ranker_hidden` hidden units.
    main: Ranker,
    /// The linear one, when `main` has a hidden layer.
    linear: Option<Ranker>,
}

/// Builds the examples of `queries` and fits the ranker (with `cfg.ranker_mining_rounds` refits
/// on negatives mined from the previous fit), plus a linear one when it has a hidden layer.
pub(crate) fn fit_rankers(model: &CrossSellModel, queries: &[&MQuery], cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<Fits> {
    progress.start("ranker features", queries.len() as u64);
    // a small catalog holds fewer candidates than asked for
    let rows = (1 + cfg.ranker_hard_negatives + cfg.ranker_random_negatives).min(model.n_items().max(2));
    let fit = RankerFit { epochs: cfg.ranker_epochs, seed: cfg.seed, disabled: [false; N_FEATURES], hidden: cfg.ranker_hidden };
    let mut mined: Option<Ranker> = None;
    let mut data = None;
    for round in 0..=cfg.ranker_mining_rounds {
        let mut examples = Array3::<f32>::zeros((queries.len(), rows, N_FEATURES));
        let valid: Vec<usize> = examples
            .outer_iter_mut()
            .into_par_iter()
            .zip(queries.par_iter())
            .enumerate()
            .map(|(k, (slot, q))| examples_for(model, q, cfg, cfg.seed ^ k as u64, mined.as_ref(), slot))
            .collect();
        if round == 0 {
            progress.finish();
        }
        let d = RankerData::new(examples, &valid)?;
        mined = Some(fit_ranker(&d, &fit, progress)?);
        data = Some(d);
    }
    let (main, data) = (mined.expect("at least one round"), data.expect("at least one round"));
    let linear = if cfg.ranker_hidden > 0 { Some(fit_ranker(&data, &RankerFit { hidden: 0, ..fit }, progress)?) } else { None };
    Ok(Fits { data, fit, main, linear })
}

impl Fits {
    /// The fitted rankers, simplest first, named.
    pub(crate) fn contenders(&self) -> Vec<(&'static str, Ranker)> {
        match &self.linear {
            Some(l) => vec![("linear ranker", l.clone()), ("hidden-layer ranker", self.main.clone())],
            None => vec![("fitted ranker", self.main.clone())],
        }
    }

    /// Per feature group, a ranker of the family of `kept` (the linear one when EASE alone or
    /// the linear ranker was kept) fitted without it (uncalibrated).
    pub(crate) fn without_each_group(&self, kept: &str, progress: &mut dyn Progress) -> Result<Vec<(String, Ranker)>> {
        let hidden = if kept == "linear ranker" || kept == "ease alone" { 0 } else { self.fit.hidden };
        FEATURE_GROUPS
            .iter()
            .map(|(group, features)| {
                let mut disabled = [false; N_FEATURES];
                features.iter().for_each(|&f| disabled[f] = true);
                Ok((group.to_string(), fit_ranker(&self.data, &RankerFit { disabled, hidden, ..self.fit }, progress)?))
            })
            .collect()
    }
}

/// The ranker kept by [`select`], calibrated, with the validation table.
pub(crate) struct Chosen {
    pub(crate) name: String,
    pub(crate) ranker: Ranker,
    pub(crate) validation: ValidationMetrics,
}

/// Judges `contenders` (simplest first) on `queries` and keeps the simplest one that no richer
/// one beats by more than one standard error of the paired per-query difference (so a small
/// validation slice cannot hand the model to noise); then Platt-calibrates it on its top 10s.
pub(crate) fn select(model: &CrossSellModel, agg: &Aggregates, queries: &[&MQuery], contenders: Vec<(&str, Ranker)>) -> Result<Chosen> {
    let mut kept: Option<(&str, Ranker, Judged)> = None;
    let mut rows = Vec::new();
    let mut validation = ValidationMetrics::default();
    for (name, r) in contenders {
        let judge = CrossSellModel::new(ModelParts { ranker: r.clone(), ..model.parts().clone() })?;
        let (top, metrics) = calibrate_and_judge(&judge, agg, queries);
        let (_, hit, mrr) = metrics.systems[0];
        rows.push((name.to_string(), hit, mrr));
        if kept.as_ref().is_none_or(|(_, _, k)| clearly_better(&top.outcome, &k.outcome)) {
            kept = Some((name, r, top));
        }
        // the baselines' rows are the same for every contender
        validation = ValidationMetrics { systems: metrics.systems[1..].to_vec(), ..metrics };
    }
    let Some((name, mut ranker, top)) = kept else {
        return Ok(Chosen { name: "co-occurrence".into(), ranker: Ranker::single(feature::COOC_MEAN), validation });
    };
    (ranker.calib_a, ranker.calib_b) = fit_platt(&top.scores, &top.labels);
    rows.append(&mut validation.systems);
    validation.systems = rows;
    Ok(Chosen { name: name.into(), ranker, validation })
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
