//! Built-in baselines reported beside the model: popularity and item-item co-occurrence.
//! Both read only [`Aggregates`], in the index space of the log they were computed on.

use crate::{Aggregates, ItemIx};

/// A system that ranks items for a basket.
pub trait Recommender: Sync {
    /// Up to `k` items, best first, never one of `basket`.
    fn recommend(&self, customer: Option<u32>, basket: &[ItemIx], k: usize) -> Vec<ItemIx>;
}

/// The `k` best-scored items with a positive score, outside the basket.
fn best(scores: &[f32], basket: &[ItemIx], k: usize) -> Vec<ItemIx> {
    crate::top_k(scores.len(), k, |i| scores[i], |i| scores[i] > 0.0 && !basket.contains(&(i as ItemIx)))
        .into_iter()
        .map(|i| i as ItemIx)
        .collect()
}

/// Most-bought items first.
#[derive(Debug)]
pub struct Popularity<'a>(pub &'a Aggregates);

impl Recommender for Popularity<'_> {
    fn recommend(&self, _: Option<u32>, basket: &[ItemIx], k: usize) -> Vec<ItemIx> {
        best(&self.0.item_orders, basket, k)
    }
}

/// Sum over basket items `i` of P(j | i); popularity breaks ties and fills short lists.
#[derive(Debug)]
pub struct Cooccurrence<'a>(pub &'a Aggregates);

impl Recommender for Cooccurrence<'_> {
    fn recommend(&self, _: Option<u32>, basket: &[ItemIx], k: usize) -> Vec<ItemIx> {
        let a = self.0;
        let total = a.n_orders.max(1) as f32;
        // popularity as a tiny prior, so ties and empty rows fall back to best sellers
        let mut scores: Vec<f32> = a.item_orders.iter().map(|&c| 1e-6 * c / total).collect();
        for &i in basket {
            let ci = a.item_orders[i as usize].max(1.0);
            let (cols, vals) = a.pairs.row(i as usize);
            for (&j, &c) in cols.iter().zip(vals) {
                scores[j as usize] += c / ci;
            }
        }
        best(&scores, basket, k)
    }
}
