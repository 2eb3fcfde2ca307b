//! EASE alone, fitted the way the peer libraries fit it, as a baseline for `xsell eval`: the
//! closed form `B = I − P · diag(1/diag P)`, `P = (G + λI)⁻¹`, over the Gram of the most-bought
//! items that fit (`ease_items`), with no intercept, no pairs and no truncation; λ chosen from
//! [`LAMBDA_GRID`] on queries from the newest `validation_fraction` of the training orders
//! (fitted on the older ones, over the leading `ease_search_items` block), then refitted on every
//! training order.

use ndarray::{Array2, s};
use xsell_core::aggregate::AggregateConfig;
use xsell_core::baseline::Recommender;
use xsell_core::protocol::draw_index_queries;
use xsell_core::{Aggregates, ItemIx, OrderLog, top_k};

use crate::ease::{Ease, LAMBDA_GRID, PosQuery, diagonal_scale, judge, spd_inverse};
use crate::{Result, TrainConfig, TrainError};

/// Plain EASE over the most-bought items, in a log's index space.
#[derive(Debug, Clone)]
pub struct EasePeer {
    /// Covered items (log indices), most bought first.
    items: Vec<ItemIx>,
    /// Per log item: its covered position.
    pos: Vec<Option<u32>>,
    /// `b[a, c]`: the weight of covered item `a` for covered item `c`.
    b: Array2<f32>,
    /// λ as a multiple of the mean Gram diagonal, as chosen.
    pub alpha: f64,
}

/// `I − P · diag(1/diag P)` with `P = (G + λI)⁻¹`: the EASE weights (zero diagonal).
fn plain_weights(gram: &Array2<f32>, lambda: f64) -> Result<Array2<f32>> {
    let mut p = gram.mapv(f64::from);
    p.diag_mut().iter_mut().for_each(|d| *d += lambda);
    spd_inverse(&mut p)?;
    let d: Vec<f64> = p.diag().to_vec();
    Ok(Array2::from_shape_fn(p.dim(), |(r, c)| if r == c { 0.0 } else { (-p[[r, c]] / d[c]) as f32 }))
}

/// The weights as an [`Ease`] (a zero always-on row, no pair), for [`judge`].
fn as_ease(b: Array2<f32>, alpha: f64, lambda: f64) -> Ease {
    let m = b.ncols();
    let mut full = Array2::<f32>::zeros((m + 1, m));
    full.slice_mut(s![..m, ..]).assign(&b);
    Ease { alpha, lambda, pair_alpha: 0.0, pairs: Vec::new(), b: full }
}

impl EasePeer {
    /// Fits the baseline on `orders` (indices into `log.orders`, oldest first).
    pub fn fit(log: &OrderLog, orders: &[usize], cutoff_ts: Option<i64>, cfg: &TrainConfig) -> Result<Self> {
        if cfg.ease_items == 0 {
            return Err(TrainError::Config { name: "ease_items", reason: "the EASE baseline needs at least one item".into() });
        }
        let agg_cfg = AggregateConfig {
            max_neighbours: 1,
            gram_items: cfg.ease_items,
            gram_pairs: 0,
            recent_fraction: cfg.recent_fraction,
            max_order_items: cfg.max_order_items,
        };
        let n_valid = (orders.len() as f64 * cfg.validation_fraction).round() as usize;
        let (base, valid) = orders.split_at(orders.len() - n_valid);
        let mut alpha = 1.0;
        if !valid.is_empty() && !base.is_empty() {
            let agg = Aggregates::compute(log, base, valid.first().and_then(|&o| log.orders[o].ts).or(cutoff_ts), &agg_cfg);
            let ms = agg.gram_items.len().min(cfg.ease_search_items);
            let pos = positions(&agg.gram_items, log.catalog.len());
            let queries: Vec<PosQuery> = draw_index_queries(log, valid, cfg.seed, cfg.ranker_queries)
                .into_iter()
                .map(|(o, t)| {
                    let covered = |i: ItemIx| pos[i as usize].map(|a| a as usize).filter(|&a| a < ms);
                    (log.orders[o].items.iter().filter(|&&i| i != t).filter_map(|&i| covered(i)).collect(), covered(t))
                })
                .collect();
            let gram = agg.gram.slice(s![..ms, ..ms]).to_owned();
            let scale = diagonal_scale(&gram, ms);
            let mut best = f64::NEG_INFINITY;
            for &a in &LAMBDA_GRID {
                let j = judge(&as_ease(plain_weights(&gram, a * scale)?, a, a * scale), &queries);
                // ties: the larger λ
                if j.hit10 + j.mrr20 >= best {
                    (best, alpha) = (j.hit10 + j.mrr20, a);
                }
            }
        }
        let agg = Aggregates::compute(log, orders, cutoff_ts, &agg_cfg);
        let m = agg.gram_items.len();
        let b = plain_weights(&agg.gram, alpha * diagonal_scale(&agg.gram, m))?;
        Ok(EasePeer { pos: positions(&agg.gram_items, log.catalog.len()), items: agg.gram_items, b, alpha })
    }

    /// Items covered.
    pub fn n_items(&self) -> usize {
        self.items.len()
    }
}

fn positions(items: &[ItemIx], n: usize) -> Vec<Option<u32>> {
    let mut pos = vec![None; n];
    for (a, &i) in items.iter().enumerate() {
        pos[i as usize] = Some(a as u32);
    }
    pos
}

impl Recommender for EasePeer {
    /// The covered items by Σ of the basket's rows, best first (ties: the more bought).
    fn recommend(&self, _: Option<u32>, basket: &[ItemIx], k: usize) -> Vec<ItemIx> {
        let m = self.items.len();
        let held: Vec<usize> = basket.iter().filter_map(|&i| self.pos.get(i as usize).copied().flatten()).map(|a| a as usize).collect();
        let mut score = ndarray::Array1::<f32>::zeros(m);
        for &a in &held {
            score += &self.b.row(a);
        }
        top_k(m, k, |c| score[c], |c| !held.contains(&c)).into_iter().map(|c| self.items[c]).collect()
    }
}
