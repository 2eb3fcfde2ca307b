//! The training pipeline: aggregates → embeddings → ranker → calibration → refit.

use std::sync::Arc;
use std::time::Instant;

use ndarray::s;
use serde::{Deserialize, Serialize};
use xsell_core::aggregate::AggregateConfig;
use xsell_core::model::{CustomerTable, ItemTable, ModelParts, Ranker, feature};
use xsell_core::retrieval::{Neighbours, Retrieval};
use xsell_core::tally::{Tally, Track};
use xsell_core::{Aggregates, CrossSellModel, Csr, ItemIx, OrderLog};

use crate::ease::{self, LambdaTrial, PosQuery};
use crate::embed::{WarmStart, train_embeddings_from};
use crate::ranking::{self, Kind, MQuery};
use crate::{Progress, Result, TrainConfig, TrainError, ValidTrainConfig};

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
    /// The ranker kept, by validation: "hidden-layer ranker", "linear ranker" or "ease alone"
    /// ("co-occurrence" when there was nothing to fit).
    pub ranker: String,
    /// Time per phase.
    pub phases: Vec<PhaseTime>,
    /// Validation metrics.
    pub validation: ValidationMetrics,
    /// EASE: items covered, the regularization kept and the validation of each candidate.
    pub ease: Option<EaseReport>,
    /// The candidate budget kept (the smallest of the budgets tried that no larger one beat on
    /// the held-out queries).
    #[serde(default)]
    pub candidate_budget: usize,
    /// (budget, hit@10, mrr@20) of the kept ranker on the held-out queries, per budget tried.
    #[serde(default)]
    pub budget_trials: Vec<(usize, f64, f64)>,
    /// How the discovery ranker was chosen (absent: too few novel-target queries).
    #[serde(default)]
    pub discovery: Option<DiscoveryReport>,
    /// How the latent-category substitute rule was judged (absent: the catalog has categories).
    #[serde(default)]
    pub latent_substitutes: Option<LatentSubstituteReport>,
    /// Set when the model is an update (`xsell train --update`): the choices and the
    /// validation above are those of the bundle it started from.
    #[serde(default)]
    pub updated_from: Option<UpdateReport>,
}

/// What an update folded in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateReport {
    /// The bundle version updated.
    pub version: String,
    /// New orders folded in.
    pub new_orders: usize,
    /// Lines read for them.
    pub new_lines: u64,
    /// The share of a fresh fit's steps the embeddings continued for from the bundle's (`None`:
    /// refitted from scratch, the model a full retrain refits).
    #[serde(default)]
    pub warm: Option<f64>,
}

/// How the latent-category substitute rule was judged on the held-out queries: it is applied
/// when customers add the items it calls substitutes of their basket clearly less often than the
/// ranker offers them (those items are then interchangeable, not bought together): at most
/// [`LATENT_SUBSTITUTE_RATIO`] as often, and below by [`LATENT_SUBSTITUTE_Z`] standard errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatentSubstituteReport {
    /// Latent categories.
    pub categories: usize,
    /// Held-out queries judged.
    pub queries: usize,
    /// Share of their targets the rule calls a substitute of a basket item.
    pub targets_judged_substitutes: f64,
    /// Share of the ranker's top-10 offers (substitutes allowed) it calls substitutes.
    pub offers_judged_substitutes: f64,
    /// Whether the model applies it.
    pub applied: bool,
}

/// Targets judged substitutes must be below this share of offers judged substitutes for the
/// latent-category substitute rule to apply ...
const LATENT_SUBSTITUTE_RATIO: f64 = 2.0 / 3.0;
/// ... and the difference beyond this many standard errors of the target share.
const LATENT_SUBSTITUTE_Z: f64 = 3.0;

/// Judges the latent-category substitute rule on `queries` (None: the catalog has categories,
/// or no latent categories or queries).
fn latent_substitute_check(model: &CrossSellModel, ranker: &Ranker, queries: &[&MQuery]) -> Result<Option<LatentSubstituteReport>> {
    if !model.latent_kinds() || queries.is_empty() {
        return Ok(None);
    }
    let m = CrossSellModel::new(ModelParts { ranker: ranker.clone(), ..model.parts().clone() })?;
    let ids = &m.parts().items.ids;
    let (mut targets, mut offers, mut flagged) = (0usize, 0usize, 0usize);
    for q in queries {
        let judged = |j: ItemIx| q.basket.iter().any(|&i| m.judged_substitute(i, j));
        targets += usize::from(judged(q.target));
        let rq = xsell_core::RankQuery {
            customer_id: q.customer.map(|c| m.parts().customers.ids[c as usize].clone()),
            basket: q.basket.iter().map(|&i| ids[i as usize].clone()).collect(),
            k: 10,
            allow_substitutes: true,
            ..Default::default()
        };
        let r = m.rank(&rq)?;
        offers += r.items.len();
        flagged += r.items.iter().filter(|o| judged(o.item)).count();
    }
    let t = targets as f64 / queries.len() as f64;
    let o = flagged as f64 / offers.max(1) as f64;
    let categories = m.parts().latent_categories.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    Ok(Some(LatentSubstituteReport {
        categories,
        queries: queries.len(),
        targets_judged_substitutes: t,
        offers_judged_substitutes: o,
        applied: t <= LATENT_SUBSTITUTE_RATIO * o
            && o - t >= LATENT_SUBSTITUTE_Z * (o * (1.0 - o) / queries.len() as f64).sqrt()
            && o > 0.0,
    }))
}

/// Fewest novel-target queries a discovery ranker is fitted on (a quarter of it held out).
const DISCOVERY_MIN_QUERIES: usize = 200;

/// The discovery ranker's validation: held-out novel-target queries ranked without the
/// customer's past items.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiscoveryReport {
    /// Held-out queries judged.
    pub queries: usize,
    /// "general ranker" (none kept), or the discovery ranker kept.
    pub kept: String,
    /// Per contender: (name, hit@10, mrr@20).
    pub systems: Vec<(String, f64, f64)>,
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
    /// Item pairs used as inputs (higher-order EASE; 0: plain EASE).
    pub pairs: usize,
    /// The pairs' λ, as a multiple of the mean Gram diagonal.
    pub pair_alpha: f64,
    /// hit@10 / mrr@20 of EASE alone on the validation queries, per candidate.
    pub trials: Vec<LambdaTrial>,
    /// Items beyond the dense fit given EASE rows by tail blocks ([`ease::fit_tail`]; 0: none).
    #[serde(default)]
    pub tail_items: usize,
    /// hit@10 of EASE alone on the validation queries without and with the tail blocks' rows,
    /// when they were judged (they are kept only when clearly better).
    #[serde(default)]
    pub tail_trial: Option<(f64, f64)>,
}

/// EASE's regularization: item λ and pair λ (multiples of the mean item Gram diagonal) and
/// how many of the most co-bought pairs to use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EaseSetting {
    alpha: f64,
    pairs: usize,
    pair_alpha: f64,
    /// Whether the items beyond the dense fit get rows from tail blocks.
    tail: bool,
}

/// A trained model with its report and the aggregates of all training orders (log index space).
#[derive(Debug)]
pub struct Fitted {
    /// The model.
    pub parts: ModelParts,
    /// The report.
    pub report: TrainReport,
    /// Aggregates over every training order, in the log's index space (for baselines; their
    /// Gram, `history` and `since` have moved into the model).
    pub aggregates: Aggregates,
    /// With [`TrainConfig::ablation`]: per feature group, a ranker of the kept family (linear
    /// when EASE alone was kept) fitted without it (uncalibrated).
    pub ablations: Vec<(String, Ranker)>,
    /// The additive counts of every training order, in the log's index space, when the pass
    /// gives them and no return cutoff applies: stored with the bundle for `--update`.
    pub tally: Option<Tally>,
}

/// What a refit keeps from the fit on the base slice, or an update from its bundle: the
/// rankers, the substitute rule's verdict, the candidate budget and EASE's setting.
#[derive(Debug, Clone)]
pub struct Choices {
    ranker: Ranker,
    discovery_ranker: Option<Ranker>,
    latent_substitutes: bool,
    candidate_budget: usize,
    ease: Option<EaseSetting>,
}

impl Choices {
    /// The choices a bundle was trained with (its parts and its training report).
    pub fn of_bundle(parts: &ModelParts, report: &TrainReport) -> Self {
        Choices {
            ranker: parts.ranker.clone(),
            discovery_ranker: parts.discovery_ranker.clone(),
            latent_substitutes: parts.latent_substitutes,
            candidate_budget: parts.retrieval.budget,
            ease: ease_setting(report.ease.as_ref()),
        }
    }

    /// Puts the choices into model parts.
    fn apply(&self, parts: &mut ModelParts) {
        parts.ranker = self.ranker.clone();
        parts.discovery_ranker = self.discovery_ranker.clone();
        parts.latent_substitutes = self.latent_substitutes;
        if self.candidate_budget > 0 {
            parts.retrieval.budget = self.candidate_budget;
        }
    }
}

/// The EASE setting a report records: the relative λs carry over (the Gram's scale grows with
/// the orders), and so does the pair count.
fn ease_setting(ease: Option<&EaseReport>) -> Option<EaseSetting> {
    ease.map(|e| EaseSetting { alpha: e.alpha, pairs: e.pairs, pair_alpha: e.pair_alpha, tail: e.tail_items > 0 })
}

/// The refit: the model's tables, embeddings and EASE from `agg` (over `log`'s index space),
/// with `choices` kept. Returns the parts and how EASE was fitted.
fn refit(
    log: &OrderLog,
    agg: &mut Aggregates,
    cfg: &TrainConfig,
    choices: &Choices,
    warm: Option<Warm<'_>>,
    timer: &mut Timer<'_>,
    progress: &mut dyn Progress,
) -> Result<(ModelParts, Option<EaseReport>)> {
    let (mut parts, spaces) = build(log, agg, cfg, choices.ranker.clone(), warm, progress)?;
    timer.lap("refit embeddings");
    let ease = fit_ease(agg, &spaces, &mut parts, cfg, choices.ease, &[])?;
    timer.lap("refit ease");
    choices.apply(&mut parts);
    Ok((parts, ease))
}

/// The aggregate settings of a refit keeping `choices`: the pair count EASE uses.
fn refit_aggregate_config(cfg: &ValidTrainConfig, choices: &Choices) -> AggregateConfig {
    AggregateConfig { gram_pairs: choices.ease.map_or(0, |e| e.pairs), ..cfg.aggregate_config() }
}

/// Folds `newer` (the counts of orders strictly newer than the bundle's, counted with
/// [`Track::Given`] of the bundle's tracked pairs and every order kept as recent) into the
/// bundle's `tally` and refits with the bundle's `choices`: the model a full retrain on the union
/// would refit, without rescanning the bundle's orders. `report` is the bundle's training report.
/// With `warm`, the embeddings continue from the bundle's for a share of the steps and known
/// items keep their latent categories: faster, and no longer equal to a retrain.
pub fn update(
    tally: Tally,
    newer: &Tally,
    choices: &Choices,
    report: &TrainReport,
    cfg: &ValidTrainConfig,
    warm: Option<Warm<'_>>,
    progress: &mut dyn Progress,
) -> Result<Fitted> {
    let mut phases = Vec::new();
    let mut timer = Timer { phases: &mut phases, start: Instant::now() };
    let agg_cfg = refit_aggregate_config(cfg, choices);
    progress.start("merge counts", 1);
    let tally = tally.merge(newer, &agg_cfg).map_err(|e| TrainError::Counts(e.to_string()))?;
    let mut agg = tally.aggregates(&agg_cfg);
    progress.finish();
    timer.lap("merge");
    let log = tally.as_log();
    let (parts, ease) = refit(&log, &mut agg, cfg, choices, warm, &mut timer, progress)?;
    let report = TrainReport {
        orders: tally.n_orders as usize,
        items: parts.items.ids.len(),
        customers: parts.customers.ids.len(),
        phases,
        ease: ease.map(|e| EaseReport { trials: Vec::new(), tail_trial: None, ..e }),
        ..report.clone()
    };
    parts.validate()?;
    Ok(Fitted { parts, report, aggregates: agg, ablations: Vec::new(), tally: Some(tally) })
}

/// The additive counts of every training order a pass gives (see [`Counts::tally`]), or the
/// error of the pass.
fn tally_of(counts: &dyn Counts, cutoff_ts: Option<i64>, cfg: &AggregateConfig) -> Result<Option<Tally>> {
    if cutoff_ts.is_some() { Ok(None) } else { counts.tally(cfg) }
}

struct Timer<'a> {
    phases: &'a mut Vec<PhaseTime>,
    start: Instant,
}

impl Timer<'_> {
    fn lap(&mut self, phase: &str) {
        let seconds = self.start.elapsed().as_secs_f64();
        self.phases.push(PhaseTime { phase: phase.into(), seconds });
        xsell_data::release_freed_memory();
        tracing::debug!(phase, seconds, resident_mib = xsell_data::resident_mib(), "training phase done");
        self.start = Instant::now();
    }
}

/// Maps between a log's index space and a model's.
pub(crate) struct Spaces {
    pub(crate) item_to_model: Vec<Option<ItemIx>>,
    pub(crate) customer_to_model: Vec<Option<u32>>,
}

/// An update's warm start: the model it starts from, and the share of a fresh fit's embedding
/// steps to take from its embeddings.
#[derive(Debug, Clone, Copy)]
pub struct Warm<'a> {
    /// The model updated.
    pub parts: &'a ModelParts,
    /// Embedding steps, as a share of a fresh fit's.
    pub steps_share: f64,
}

/// Builds model parts (everything but a fitted ranker) from aggregates over a log. The
/// aggregates' `history` and `since` move into the model (left empty in `agg`).
fn build(
    log: &OrderLog,
    agg: &mut Aggregates,
    cfg: &TrainConfig,
    ranker: Ranker,
    warm: Option<Warm<'_>>,
    progress: &mut dyn Progress,
) -> Result<(ModelParts, Spaces)> {
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
    // the customer tables are the largest (a million customers: hundreds of MB each): the model
    // shares them when it keeps every customer and item in order, and otherwise takes a
    // remapped copy; either way the aggregates' reference is released, so the counts' own copy
    // is freed unless something else (a tally) holds it
    let identity = |m: &[Option<u32>]| m.iter().enumerate().all(|(k, &x)| x == Some(k as u32));
    let shared = identity(&item_to_model) && identity(&customer_to_model);
    let customer_table = |t: &mut Arc<Csr>| -> Arc<Csr> {
        let t = std::mem::take(t);
        if shared { t } else { Arc::new(remap(&t, &customer_to_model)) }
    };
    let history = customer_table(&mut agg.history);
    let since = customer_table(&mut agg.since);
    // with a warm start, each item's row in the earlier model (None: new)
    let earlier: Option<Vec<Option<u32>>> = warm.map(|w| {
        let ix: std::collections::HashMap<&str, u32> = w.parts.items.ids.iter().enumerate().map(|(k, s)| (s.as_str(), k as u32)).collect();
        items.ids.iter().map(|id| ix.get(id.as_str()).copied()).collect()
    });
    let start = warm.zip(earlier.as_deref()).map(|(w, rows)| WarmStart {
        rows,
        emb_in: &w.parts.emb_in,
        emb_out: &w.parts.emb_out,
        steps_share: w.steps_share,
    });
    let (emb_in, emb_out) = train_embeddings_from(&pairs, &items.orders, cfg, start, progress)?;
    progress.start("embedding neighbours", 1);
    let neighbours = Neighbours::compute(&emb_in, &emb_out, &items.orders, cfg.neighbours_per_item, cfg.neighbour_targets);
    progress.finish();
    let latent_categories = if items.categories.iter().any(Option::is_some) {
        Vec::new()
    } else {
        progress.start("latent categories", 1);
        let kept = warm
            .zip(earlier.as_deref())
            .filter(|(w, _)| !w.parts.latent_categories.is_empty())
            .map(|(w, rows)| rows.iter().map(|r| r.and_then(|r| w.parts.latent_categories.get(r as usize).copied())).collect::<Vec<_>>());
        let groups = match kept {
            Some(kept) => crate::latent::kept_categories(&emb_in, &kept),
            None => crate::latent::latent_categories(&emb_in, &items.orders, cfg.latent_categories)?,
        };
        progress.finish();
        groups
    };
    let n_items = items.ids.len();
    let parts = ModelParts {
        items,
        customers,
        customer_lines,
        pairs,
        history,
        since,
        ease: Csr::from_rows(vec![Vec::new(); n_items]),
        ease_pairs: Default::default(),
        ease_always_on: Vec::new(),
        emb_in,
        emb_out,
        n_orders: agg.n_orders as f32,
        n_recent: agg.n_recent as f32,
        ranker,
        discovery_ranker: None,
        neighbours,
        retrieval: Retrieval { budget: cfg.candidate_budget },
        latent_categories,
        latent_substitutes: false,
    };
    Ok((parts, Spaces { item_to_model, customer_to_model }))
}

/// Fits EASE on the Gram of `agg` (taken out of it: it is large and used only here) into
/// `parts.ease` and `parts.ease_pairs`. The setting: `given` when given (a refit carries it
/// over), else `cfg.ease_lambda` when set (plain EASE), else the best on `queries` (see
/// [`ease::choose`]; λ from the middle of the grid and no pairs when there is no query).
fn fit_ease(
    agg: &mut Aggregates,
    spaces: &Spaces,
    parts: &mut ModelParts,
    cfg: &TrainConfig,
    given: Option<EaseSetting>,
    queries: &[&MQuery],
) -> Result<Option<EaseReport>> {
    if agg.gram_items.is_empty() {
        return Ok(None);
    }
    let items: Vec<ItemIx> = agg.gram_items.iter().map(|&i| spaces.item_to_model[i as usize].expect("Gram items were bought")).collect();
    let m = items.len();
    let gram = agg.extended_gram();
    agg.gram = Default::default();
    agg.pair_gram = Default::default();
    let pairs = std::mem::take(&mut agg.gram_pairs);
    let plain = |alpha| EaseSetting { alpha, pairs: 0, pair_alpha: 0.0, tail: false };
    let (setting, trials) = match given {
        Some(s) => (s, Vec::new()),
        None if cfg.ease_lambda > 0.0 => (plain(cfg.ease_lambda / ease::diagonal_scale(&gram, m)), Vec::new()),
        None if queries.is_empty() => (plain(1.0), Vec::new()),
        None => {
            let mut pos = vec![None; parts.items.ids.len()];
            for (a, &i) in items.iter().enumerate() {
                pos[i as usize] = Some(a);
            }
            let pq: Vec<PosQuery> =
                queries.iter().map(|q| (q.basket.iter().filter_map(|&i| pos[i as usize]).collect(), pos[q.target as usize])).collect();
            let c = ease::choose(&gram, m, &pairs, &pq, cfg.ease_search_items, &[cfg.ease_pairs / 4, cfg.ease_pairs])?;
            (EaseSetting { alpha: c.alpha, pairs: c.pairs, pair_alpha: c.pair_alpha, tail: false }, c.trials)
        }
    };
    // the chosen count of the most co-bought pairs (fewer when this Gram has fewer)
    let used = setting.pairs.min(pairs.len());
    // (the fit takes the Gram and frees it once converted: one Gram-sized copy at a time)
    let gram = if used == pairs.len() {
        gram
    } else {
        let cut = gram.slice(s![..m + 1 + used, ..m + 1 + used]).to_owned();
        drop(gram);
        cut
    };
    let fitted =
        ease::fit_sparse(gram, &pairs[..used], setting.alpha, setting.pair_alpha, &items, parts.items.ids.len(), cfg.max_neighbours)?;
    parts.ease = fitted.items;
    parts.ease_pairs = fitted.pairs;
    parts.ease_always_on = fitted.always_on;
    let (tail_items, tail_trial) = fit_tail(parts, &items, setting.alpha, cfg, given.map(|s| s.tail), queries)?;
    let EaseSetting { alpha, pair_alpha, .. } = setting;
    Ok(Some(EaseReport { items: m, alpha, lambda: fitted.lambda, pairs: used, pair_alpha, trials, tail_items, tail_trial }))
}

/// Gives the items beyond the dense EASE fit (`dense`) rows from tail blocks
/// ([`ease::fit_tail`], at most `ease_tail_items`) when `given` says so, or, when it is not
/// given, when they make EASE alone clearly better on `queries`. Returns the items given rows
/// and the judgement (hit@10 without and with), if one was made.
fn fit_tail(
    parts: &mut ModelParts,
    dense: &[ItemIx],
    alpha: f64,
    cfg: &TrainConfig,
    given: Option<bool>,
    queries: &[&MQuery],
) -> Result<(usize, Option<(f64, f64)>)> {
    let n = parts.items.ids.len();
    if cfg.ease_tail_items == 0 || given == Some(false) || dense.len() >= n || (given.is_none() && queries.is_empty()) {
        return Ok((0, None));
    }
    let rows =
        ease::fit_tail(&parts.pairs, &parts.items.orders, f64::from(parts.n_orders), dense, alpha, cfg.ease_tail_items, cfg.max_neighbours);
    if rows.is_empty() {
        return Ok((0, None));
    }
    let mut merged: Vec<Vec<(u32, f32)>> = (0..n)
        .map(|i| {
            let (cols, vals) = parts.ease.row(i);
            cols.iter().copied().zip(vals.iter().copied()).collect()
        })
        .collect();
    let tail_items = rows.len();
    for (i, r) in rows {
        merged[i as usize] = r;
    }
    let with = Csr::from_rows(merged);
    let mut trial = None;
    if given.is_none() {
        let qs: Vec<(&[ItemIx], ItemIx)> = queries.iter().map(|q| (&q.basket[..], q.target)).collect();
        let old = ease::sparse_outcomes(&parts.ease, &parts.ease_always_on, &qs);
        let new = ease::sparse_outcomes(&with, &parts.ease_always_on, &qs);
        let hit = |o: &[f64]| o.iter().filter(|&&v| v >= 1.0).count() as f64 / o.len().max(1) as f64;
        trial = Some((hit(&old), hit(&new)));
        if !ranking::clearly_better(&new, &old) {
            return Ok((0, trial));
        }
    }
    parts.ease = with;
    Ok((tail_items, trial))
}

/// Where the pipeline's counts come from: the heavy pass over the training orders, in process
/// ([`LogCounts`]) or on a query engine (`xsell-engine`).
pub trait Counts {
    /// The aggregates over the oldest `n` training orders, counting the return signals before
    /// `cutoff_ts` (all of them when `None`), in the index space of [`TrainInput::log`].
    fn aggregates(&self, n: usize, cutoff_ts: Option<i64>, cfg: &AggregateConfig) -> Result<Aggregates>;
    /// The time of the training order at position `pos` (oldest first).
    fn order_ts(&self, pos: usize) -> Result<Option<i64>>;
    /// The additive counts of every training order and every return signal, tracking the
    /// higher-order pairs `cfg` selects (None: this pass does not give them).
    fn tally(&self, _cfg: &AggregateConfig) -> Result<Option<Tally>> {
        Ok(None)
    }
}

/// The in-process pass over a log held in memory.
#[derive(Debug, Clone, Copy)]
pub struct LogCounts<'a> {
    /// The log.
    pub log: &'a OrderLog,
    /// The training orders (indices into `log.orders`, oldest first).
    pub orders: &'a [usize],
}

impl Counts for LogCounts<'_> {
    fn aggregates(&self, n: usize, cutoff_ts: Option<i64>, cfg: &AggregateConfig) -> Result<Aggregates> {
        Ok(Aggregates::compute(self.log, &self.orders[..n], cutoff_ts, cfg))
    }
    fn order_ts(&self, pos: usize) -> Result<Option<i64>> {
        Ok(self.orders.get(pos).and_then(|&o| self.log.orders[o].ts))
    }
    fn tally(&self, cfg: &AggregateConfig) -> Result<Option<Tally>> {
        Ok(Some(Tally::compute(self.log, self.orders, cfg, None, Track::Strongest)))
    }
}

/// What the pipeline trains from.
pub struct TrainInput<'a> {
    /// The catalog and the customers of the whole log, and the orders held in memory.
    pub log: &'a OrderLog,
    /// Training orders, in all.
    pub n_orders: usize,
    /// The newest training orders held in memory (indices into `log.orders`, oldest first):
    /// the orders at positions `n_orders − newest.len()..`. The ranker's queries are drawn from
    /// those of them in the validation slice; every training order for an in-memory log, a
    /// bounded sample of the newest for an engine.
    pub newest: &'a [usize],
    /// Return signals at or after this time are ignored.
    pub cutoff_ts: Option<i64>,
    /// The aggregate pass.
    pub counts: &'a dyn Counts,
}

/// Trains a model on `orders` (indices into `log.orders`, oldest first); return signals at or
/// after `cutoff_ts` are ignored.
pub fn train(
    log: &OrderLog,
    orders: &[usize],
    cutoff_ts: Option<i64>,
    cfg: &ValidTrainConfig,
    progress: &mut dyn Progress,
) -> Result<Fitted> {
    let counts = LogCounts { log, orders };
    train_from(&TrainInput { log, n_orders: orders.len(), newest: orders, cutoff_ts, counts: &counts }, cfg, progress)
}

/// Trains a model on `input`: the aggregates come from `input.counts`, the ranker's queries
/// from the newest orders held in memory.
pub fn train_from(input: &TrainInput<'_>, cfg: &ValidTrainConfig, progress: &mut dyn Progress) -> Result<Fitted> {
    let TrainInput { log, n_orders, newest, cutoff_ts, counts } = *input;
    if n_orders == 0 {
        return Err(TrainError::NotEnoughData("no training order".into()));
    }
    let agg_cfg = cfg.aggregate_config();
    let mut report = TrainReport { orders: n_orders, ..Default::default() };
    let mut timer = Timer { phases: &mut report.phases, start: Instant::now() };

    let n_valid = (n_orders as f64 * cfg.validation_fraction).round() as usize;
    let n_base = n_orders - n_valid;
    let valid = &newest[newest.len().saturating_sub(n_valid)..];
    let fit_ranker_now = n_valid > 0 && n_base > 0;
    let (n_base, base_cut) = if fit_ranker_now { (n_base, counts.order_ts(n_base)?.or(cutoff_ts)) } else { (n_orders, cutoff_ts) };
    progress.start("aggregates", 1);
    let mut base_agg = counts.aggregates(n_base, base_cut, &agg_cfg)?;
    progress.finish();
    timer.lap("aggregates");
    let (mut parts, spaces) = build(log, &mut base_agg, cfg, Ranker::single(feature::COOC_MEAN), None, progress)?;
    timer.lap("embeddings");

    let queries = if fit_ranker_now { ranking::draw_queries(log, valid, &spaces, cfg) } else { Vec::new() };
    let (calib, fit) = ranking::split_calibration(&queries, cfg.calibration_share);
    progress.start("ease", 1);
    report.ease = fit_ease(&mut base_agg, &spaces, &mut parts, cfg, None, &fit)?;
    progress.finish();
    timer.lap("ease");

    let model = CrossSellModel::new(parts)?;
    let mut ranker = Ranker::single(feature::COOC_MEAN);
    let mut discovery_ranker = None;
    let mut validation = ValidationMetrics::default();
    let mut ablations = Vec::new();
    if fit_ranker_now {
        report.ranker_queries = fit.len();
        let fits = if fit.is_empty() { None } else { Some(ranking::fit_rankers(&model, &fit, cfg, false, progress)?) };
        timer.lap("ranker fit");
        // calibration and validation metrics on the held-out queries
        let judged = if calib.is_empty() { &fit } else { &calib };
        let mut contenders = Vec::new();
        if report.ease.is_some() {
            contenders.push((Kind::EaseAlone, Ranker::single(feature::EASE)));
        }
        if let Some(f) = &fits {
            contenders.extend(f.contenders());
        }
        let chosen = ranking::select(&model, &base_agg, judged, contenders, &ranking::budget_grid(model.budget()), false);
        timer.lap("calibration");
        // a discovery ranker, fitted and judged on the queries whose target was new to the
        // customer, ranked without the customer's past items; kept only when it beats the
        // general ranker there
        let novel = |q: &&MQuery| q.customer.is_some_and(|c| model.parts().history.row(c as usize).0.binary_search(&q.target).is_err());
        let (disc_fit, disc_judged): (Vec<&MQuery>, Vec<&MQuery>) =
            (fit.iter().copied().filter(novel).collect(), judged.iter().copied().filter(novel).collect());
        if cfg.discovery_ranker && disc_fit.len() >= DISCOVERY_MIN_QUERIES && disc_judged.len() >= DISCOVERY_MIN_QUERIES / 4 {
            let fits = ranking::fit_rankers(&model, &disc_fit, cfg, true, progress)?;
            let mut contenders = vec![(Kind::General, chosen.ranker.clone())];
            contenders.extend(fits.contenders());
            let d = ranking::select(&model, &base_agg, &disc_judged, contenders, &[chosen.budget], true);
            report.discovery =
                Some(DiscoveryReport { queries: disc_judged.len(), kept: d.kind.name().into(), systems: d.validation.systems });
            discovery_ranker = (d.kind != Kind::General).then_some(d.ranker);
            timer.lap("discovery ranker");
        }
        if let Some(f) = fits.filter(|_| cfg.ablation) {
            ablations = f.without_each_group(chosen.kind, progress)?;
            timer.lap("ablation rankers");
        }
        report.latent_substitutes = latent_substitute_check(&model, &chosen.ranker, judged)?;
        report.ranker = chosen.kind.name().into();
        (report.candidate_budget, report.budget_trials) = (chosen.budget, chosen.budgets);
        ranker = chosen.ranker;
        validation = chosen.validation;
    }
    let choices = Choices {
        ranker,
        discovery_ranker,
        latent_substitutes: report.latent_substitutes.as_ref().is_some_and(|r| r.applied),
        candidate_budget: report.candidate_budget,
        ease: ease_setting(report.ease.as_ref()),
    };
    // without a validation slice the base pass already covered every training order
    let (parts, all_agg, tally) = if cfg.refit && fit_ranker_now {
        // the base model and its counts are not needed past here: free them before the refit
        // builds the final ones (each is model-sized)
        drop((model, base_agg));
        progress.start("refit aggregates", 1);
        let agg_cfg = refit_aggregate_config(cfg, &choices);
        // the refit's counts come from the tally when the pass gives one, so that a model
        // updated from the stored tally is the model this refit makes
        let tally = tally_of(counts, cutoff_ts, &agg_cfg)?;
        let mut agg = match &tally {
            Some(t) => t.aggregates(&agg_cfg),
            None => counts.aggregates(n_orders, cutoff_ts, &agg_cfg)?,
        };
        progress.finish();
        timer.lap("refit aggregates");
        let (parts, ease) = refit(log, &mut agg, cfg, &choices, None, &mut timer, progress)?;
        if let Some(e) = ease {
            let (trials, tail_trial) = report.ease.take().map(|r| (r.trials, r.tail_trial)).unwrap_or_default();
            report.ease = Some(EaseReport { trials, tail_trial, ..e });
        }
        (parts, agg, tally)
    } else {
        let mut parts = model.parts().clone();
        choices.apply(&mut parts);
        let tally = tally_of(counts, cutoff_ts, &refit_aggregate_config(cfg, &choices))?;
        (parts, base_agg, tally)
    };
    report.candidate_budget = parts.retrieval.budget;
    report.items = parts.items.ids.len();
    report.customers = parts.customers.ids.len();
    report.validation = validation;
    // validates the final parts once, so a bad model fails here and not in the server
    parts.validate()?;
    Ok(Fitted { parts, report, aggregates: all_agg, ablations, tally })
}
