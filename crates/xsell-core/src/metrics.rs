//! Offline metrics of the protocol (single relevant item per query).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Per-query facts the cross-sell specific metrics need (`None` where the data lacks them).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryTags {
    /// The customer never bought the target in training.
    pub novel_target: Option<bool>,
    /// The target's category differs from every basket item's category.
    pub cross_category: Option<bool>,
    /// Of the top 10, how many share a category with a basket item (and how many were judged).
    pub same_category_top10: Option<(usize, usize)>,
}

/// Number of bins of the expected calibration error.
pub const ECE_BINS: usize = 10;

/// One bin of the reliability diagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Predictions in the bin.
    pub count: u64,
    /// Mean predicted probability.
    pub mean_predicted: f64,
    /// Observed rate of the target.
    pub observed: f64,
}

/// The metric table of one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Queries ranked.
    pub queries: usize,
    /// Share of targets in the top 5.
    #[serde(rename = "hit@5")]
    pub hit5: f64,
    /// Share of targets in the top 10.
    #[serde(rename = "hit@10")]
    pub hit10: f64,
    /// Share of targets in the top 20.
    #[serde(rename = "hit@20")]
    pub hit20: f64,
    /// Mean reciprocal rank, cut at 20.
    #[serde(rename = "mrr@20")]
    pub mrr20: f64,
    /// NDCG with one relevant item, cut at 10.
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    /// Share of training items in at least one top 10.
    #[serde(rename = "coverage@10")]
    pub coverage10: f64,
    /// hit@10 over queries whose target the customer never bought in training.
    #[serde(rename = "novel_target_hit@10", skip_serializing_if = "Option::is_none", default)]
    pub novel_hit10: Option<f64>,
    /// hit@10 over queries whose target's category is new to the basket.
    #[serde(rename = "cross_category_hit@10", skip_serializing_if = "Option::is_none", default)]
    pub cross_category_hit10: Option<f64>,
    /// Share of top-10 items that share a category with a basket item.
    #[serde(rename = "same_category_share@10", skip_serializing_if = "Option::is_none", default)]
    pub same_category_share10: Option<f64>,
    /// Expected calibration error of the top-10 probabilities, 10 equal-width bins.
    #[serde(rename = "ece@10", skip_serializing_if = "Option::is_none", default)]
    pub ece: Option<f64>,
    /// The reliability diagram behind `ece@10`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub calibration: Vec<CalibrationBin>,
}

/// Accumulates query results into [`Metrics`].
#[derive(Debug, Default)]
pub struct Evaluator {
    n: usize,
    hits: [usize; 3],
    rr: f64,
    ndcg: f64,
    covered: HashSet<String>,
    novel: (usize, usize),
    cross: (usize, usize),
    same_cat: (usize, usize),
    bins: [(u64, f64, f64); ECE_BINS],
    has_probabilities: bool,
}

impl Evaluator {
    /// A fresh accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one query: `ranked` is the system's list (basket items already removed, best
    /// first), `probabilities` its calibrated probabilities when it has them.
    pub fn add(&mut self, ranked: &[String], probabilities: Option<&[f32]>, target: &str, tags: QueryTags) {
        self.n += 1;
        let rank = ranked.iter().take(20).position(|r| r == target).map(|p| p + 1);
        if let Some(r) = rank {
            for (h, k) in self.hits.iter_mut().zip([5, 10, 20]) {
                *h += usize::from(r <= k);
            }
            self.rr += 1.0 / r as f64;
            if r <= 10 {
                self.ndcg += 1.0 / ((r + 1) as f64).log2();
            }
        }
        let hit10 = rank.is_some_and(|r| r <= 10);
        self.covered.extend(ranked.iter().take(10).cloned());
        if let Some(novel) = tags.novel_target.filter(|&n| n) {
            self.novel.0 += usize::from(novel && hit10);
            self.novel.1 += 1;
        }
        if let Some(cross) = tags.cross_category.filter(|&c| c) {
            self.cross.0 += usize::from(cross && hit10);
            self.cross.1 += 1;
        }
        if let Some((same, judged)) = tags.same_category_top10 {
            self.same_cat.0 += same;
            self.same_cat.1 += judged;
        }
        if let Some(probs) = probabilities {
            self.has_probabilities = true;
            for (item, &p) in ranked.iter().zip(probs).take(10) {
                let b = ((p as f64 * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
                let bin = &mut self.bins[b];
                bin.0 += 1;
                bin.1 += p as f64;
                bin.2 += f64::from(u8::from(item == target));
            }
        }
    }

    /// The metrics; `n_train_items` is the denominator of coverage.
    pub fn finish(&self, n_train_items: usize) -> Metrics {
        let n = self.n.max(1) as f64;
        let ratio = |(a, b): (usize, usize)| (b > 0).then(|| a as f64 / b as f64);
        let (ece, calibration) = if self.has_probabilities {
            let total: u64 = self.bins.iter().map(|b| b.0).sum();
            let bins: Vec<CalibrationBin> = self
                .bins
                .iter()
                .map(|&(c, p, y)| CalibrationBin {
                    count: c,
                    mean_predicted: if c > 0 { p / c as f64 } else { 0.0 },
                    observed: if c > 0 { y / c as f64 } else { 0.0 },
                })
                .collect();
            let ece = bins.iter().map(|b| b.count as f64 / total.max(1) as f64 * (b.mean_predicted - b.observed).abs()).sum();
            (Some(ece), bins)
        } else {
            (None, Vec::new())
        };
        Metrics {
            queries: self.n,
            hit5: self.hits[0] as f64 / n,
            hit10: self.hits[1] as f64 / n,
            hit20: self.hits[2] as f64 / n,
            mrr20: self.rr / n,
            ndcg10: self.ndcg / n,
            coverage10: self.covered.len() as f64 / n_train_items.max(1) as f64,
            novel_hit10: ratio(self.novel),
            cross_category_hit10: ratio(self.cross),
            same_category_share10: ratio(self.same_cat),
            ece,
            calibration,
        }
    }
}
