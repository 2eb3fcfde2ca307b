//! The ranker's half of training: validation queries, their examples (from the candidate sets
//! ranking will score), the fits, and the choice
//! between EASE alone, the linear and the hidden-layer ranker on held-out orders.

use ndarray::{Array3, ArrayViewMut2};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use xsell_core::baseline::{Cooccurrence, Popularity, Recommender};
use xsell_core::metrics::{Evaluator, QueryTags};
use xsell_core::model::{FEATURE_GROUPS, N_FEATURES, Ranker, feature};
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
            if order.items.len() > cfg.max_order_items {
                return None; // too big to teach anything about baskets (and items × basket to score)
            }
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

/// The contenders for the kept ranker, simplest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing to fit or judge: co-occurrence, uncalibrated.
    CoOccurrence,
    /// EASE alone.
    EaseAlone,
    /// The linear ranker.
    Linear,
    /// The ranker with a hidden layer.
    HiddenLayer,
    /// The ranker kept for every query, judged on discovery queries against the discovery
    /// rankers.
    General,
}

impl Kind {
    /// The name reported.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::CoOccurrence => "co-occurrence",
            Kind::EaseAlone => "ease alone",
            Kind::Linear => "linear ranker",
            Kind::HiddenLayer => "hidden-layer ranker",
            Kind::General => "general ranker",
        }
    }
}

/// The fitted rankers and the examples they were fitted on (kept for ablations).
pub(crate) struct Fits {
    data: RankerData,
    fit: RankerFit,
    linear: Ranker,
    /// Fitted with `cfg.ranker_hidden` hidden units, when there are some.
    hidden: Option<Ranker>,
}

/// Builds the examples of `queries` and fits a linear ranker, and one with `cfg.ranker_hidden`
/// hidden units when that is not 0. `discovery`: the candidates leave out the customer's past
/// items, as for a `new_to_customer` request.
pub(crate) fn fit_rankers(
    model: &CrossSellModel,
    queries: &[&MQuery],
    cfg: &TrainConfig,
    discovery: bool,
    progress: &mut dyn Progress,
) -> Result<Fits> {
    progress.start("ranker features", queries.len() as u64);
    // a small catalog holds fewer candidates than asked for
    let rows = (1 + cfg.ranker_hard_negatives + cfg.ranker_random_negatives).min(model.n_items().max(2)).min(model.budget() + 1);
    let mut examples = Array3::<f32>::zeros((queries.len(), rows, N_FEATURES));
    let valid: Vec<usize> = examples
        .outer_iter_mut()
        .into_par_iter()
        .zip(queries.par_iter())
        .enumerate()
        .map(|(k, (slot, q))| examples_for(model, q, cfg, discovery, cfg.seed ^ k as u64, slot))
        .collect();
    progress.finish();
    let data = RankerData::new(examples, &valid)?;
    let fit = RankerFit { epochs: cfg.ranker_epochs, seed: cfg.seed, disabled: [false; N_FEATURES], hidden: cfg.ranker_hidden };
    let hidden = if cfg.ranker_hidden > 0 { Some(fit_ranker(&data, &fit, progress)?) } else { None };
    let linear = fit_ranker(&data, &RankerFit { hidden: 0, ..fit }, progress)?;
    Ok(Fits { data, fit, linear, hidden })
}

impl Fits {
    /// The fitted rankers, simplest first.
    pub(crate) fn contenders(&self) -> Vec<(Kind, Ranker)> {
        let mut c = vec![(Kind::Linear, self.linear.clone())];
        c.extend(self.hidden.clone().map(|h| (Kind::HiddenLayer, h)));
        c
    }

    /// Per feature group, a ranker of the family of `kept` (the linear one unless the
    /// hidden-layer ranker was kept) fitted without it (uncalibrated).
    pub(crate) fn without_each_group(&self, kept: Kind, progress: &mut dyn Progress) -> Result<Vec<(String, Ranker)>> {
        let hidden = if kept == Kind::HiddenLayer { self.fit.hidden } else { 0 };
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

/// The ranker kept by [`select`], calibrated, with the validation table and the candidate
/// budget chosen for it.
pub(crate) struct Chosen {
    pub(crate) kind: Kind,
    pub(crate) ranker: Ranker,
    pub(crate) validation: ValidationMetrics,
    pub(crate) budget: usize,
    /// (budget, hit@10, mrr@20) of the kept ranker at each budget tried.
    pub(crate) budgets: Vec<(usize, f64, f64)>,
}

/// Candidate budgets [`select`] tries by default: a tenth, three tenths and all of the configured one.
pub(crate) fn budget_grid(max: usize) -> Vec<usize> {
    let mut g: Vec<usize> = [max / 10, max * 3 / 10, max].into_iter().filter(|&b| b > 0).collect();
    g.dedup();
    g
}

/// Judges `contenders` (simplest first) on `queries` and keeps the simplest one that no richer
/// one beats by more than one standard error of the paired per-query difference (so a small
/// validation slice cannot hand the model to noise); then, for it, the smallest candidate budget
/// of `grid` (ascending, at most the model's) that no larger one beats the same way (fewer
/// candidates: faster, and fewer distractors); then Platt-calibrates it on its top 10s. Each
/// query's candidates and features are computed once, at the model's (largest) budget: a
/// smaller budget's candidates are the first ones gathered. `discovery`: ranked as
/// `new_to_customer` requests are.
pub(crate) fn select(
    model: &CrossSellModel,
    agg: &Aggregates,
    queries: &[&MQuery],
    contenders: Vec<(Kind, Ranker)>,
    grid: &[usize],
    discovery: bool,
) -> Chosen {
    let top_budget = grid.len() - 1;
    // per query, per contender, per budget: the top 20 and their scores
    let tops: Vec<Vec<Vec<Top>>> = queries
        .par_iter()
        .map(|q| {
            // the candidates ranking scores, best first as `CrossSellModel::rank` orders them
            let (c, x) = model.candidate_features(q.customer, &q.basket, None, discovery);
            contenders
                .iter()
                .map(|(_, r)| {
                    let s = r.scores(&x);
                    let mut rows: Vec<usize> = (0..c.items.len()).collect();
                    rows.sort_unstable_by(|&a, &b| s[b].total_cmp(&s[a]).then(c.items[a].cmp(&c.items[b])));
                    grid.iter()
                        .map(|&b| {
                            let top: Vec<usize> = rows.iter().copied().filter(|&r| r < b).take(20).collect();
                            (top.iter().map(|&r| c.items[r]).collect(), top.iter().map(|&r| s[r]).collect())
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut kept: Option<(usize, Kind, Ranker, Judged)> = None;
    let mut systems = Vec::new();
    for (c, (kind, r)) in contenders.into_iter().enumerate() {
        let (judged, hit, mrr) = judge(queries, tops.iter().map(|t| &t[c][top_budget]), model.n_items());
        systems.push((kind.name().to_string(), hit, mrr));
        if kept.as_ref().is_none_or(|(_, _, _, k)| clearly_better(&judged.outcome, &k.outcome)) {
            kept = Some((c, kind, r, judged));
        }
    }
    systems.extend(baselines(agg, queries, model.n_items()));
    let validation = ValidationMetrics { queries: queries.len(), systems };
    let Some((c, kind, mut ranker, _)) = kept else {
        return Chosen {
            kind: Kind::CoOccurrence,
            ranker: Ranker::single(feature::COOC_MEAN),
            validation,
            budget: model.budget(),
            budgets: Vec::new(),
        };
    };
    let mut budgets = Vec::new();
    let mut best: Option<(usize, Judged)> = None;
    for (g, &b) in grid.iter().enumerate() {
        let (judged, hit, mrr) = judge(queries, tops.iter().map(|t| &t[c][g]), model.n_items());
        budgets.push((b, hit, mrr));
        if best.as_ref().is_none_or(|(_, k)| clearly_better(&judged.outcome, &k.outcome)) {
            best = Some((b, judged));
        }
    }
    let (budget, judged) = best.expect("the grid is not empty");
    (ranker.calib_a, ranker.calib_b) = fit_platt(&judged.scores, &judged.labels);
    Chosen { kind, ranker, validation, budget, budgets }
}

/// One query's top 20 items and their scores.
type Top = (Vec<ItemIx>, Vec<f32>);

/// A ranker on held-out queries.
struct Judged {
    /// Top-10 scores and whether each was the target (Platt's input).
    scores: Vec<f32>,
    labels: Vec<bool>,
    /// Per query: hit@10 + reciprocal rank within the top 20.
    outcome: Vec<f64>,
}

/// A query's outcome from the target's 0-based position in a top 20: hit@10 + reciprocal rank.
pub(crate) fn outcome(position: Option<usize>) -> f64 {
    position.filter(|&r| r < 20).map_or(0.0, |r| f64::from(u8::from(r < 10)) + 1.0 / (r + 1) as f64)
}

/// True when `new` beats `old` on the same queries by more than one standard error of the
/// per-query difference.
pub(crate) fn clearly_better(new: &[f64], old: &[f64]) -> bool {
    let n = new.len().min(old.len());
    if n < 2 {
        return false;
    }
    let d: Vec<f64> = new.iter().zip(old).map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    mean > (var / n as f64).sqrt()
}

/// Target row first, then negatives from the query's candidate set, the one ranking will score
/// when serving: its first `ranker_hard_negatives` candidates (the order the sources took turns
/// in, so each source's favourites), then `ranker_random_negatives` drawn from the rest; written
/// into `out` (fewer rows in a small catalog); returns the rows written.
fn examples_for(
    model: &CrossSellModel,
    q: &MQuery,
    cfg: &TrainConfig,
    discovery: bool,
    seed: u64,
    mut out: ArrayViewMut2<'_, f32>,
) -> usize {
    let (c, x) = model.candidate_features(q.customer, &q.basket, Some(q.target), discovery);
    let Some(t) = c.items.iter().position(|&j| j == q.target) else { return 0 };
    let others: Vec<usize> = (0..c.items.len()).filter(|&r| r != t).collect();
    let hard = cfg.ranker_hard_negatives.min(others.len());
    let mut rows = vec![t];
    rows.extend(&others[..hard]);
    let rest = &others[hard..];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let take = cfg.ranker_random_negatives.min(rest.len());
    rows.extend(sample(&mut rng, rest.len(), take).into_iter().map(|k| rest[k]));
    rows.truncate(out.nrows());
    // small candidate sets leave rows over: zeros, masked out by the fit
    out.fill(0.0);
    for (mut dst, &r) in out.outer_iter_mut().zip(&rows) {
        dst.assign(&x.row(r));
    }
    rows.len()
}

/// A contender's top 20s on `queries`: its top-10 scores and labels (Platt's input), per-query
/// outcomes, hit@10 and mrr@20.
fn judge<'a>(queries: &[&MQuery], tops: impl Iterator<Item = &'a Top>, n_items: usize) -> (Judged, f64, f64) {
    let (mut scores, mut labels, mut outcome) = (Vec::new(), Vec::new(), Vec::new());
    let mut ev = Evaluator::new();
    for (q, (order, s)) in queries.iter().zip(tops) {
        for (&j, &sc) in order.iter().zip(s).take(10) {
            scores.push(sc);
            labels.push(j == q.target);
        }
        outcome.push(self::outcome(order.iter().position(|&j| j == q.target)));
        let ranked: Vec<String> = order.iter().map(|j| j.to_string()).collect();
        ev.add(&ranked, None, &q.target.to_string(), QueryTags::default());
    }
    let (_, hit, mrr) = summary("", &ev, n_items);
    (Judged { scores, labels, outcome }, hit, mrr)
}

/// hit@10 / mrr@20 of the built-in baselines on `queries` (in log space).
fn baselines(agg: &Aggregates, queries: &[&MQuery], n_items: usize) -> Vec<(String, f64, f64)> {
    let systems: [(&str, &dyn Recommender); 2] = [("cooccurrence", &Cooccurrence(agg)), ("popularity", &Popularity(agg))];
    systems
        .into_iter()
        .map(|(name, rec)| {
            let mut ev = Evaluator::new();
            for q in queries {
                let ranked: Vec<String> = rec.recommend(None, &q.log_basket, 20).into_iter().map(|i| i.to_string()).collect();
                ev.add(&ranked, None, &q.log_target.to_string(), QueryTags::default());
            }
            summary(name, &ev, n_items)
        })
        .collect()
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
