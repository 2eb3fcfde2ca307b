//! Bundles: a few items that complement the basket *and* each other, never two substitutes,
//! with the probability that the customer adds them all and the bundle's expected value.

use crate::error::{Error, Result};
use crate::model::{CrossSellModel, RankQuery, Ranking};
use crate::policy::Policies;

/// Most items in a bundle.
pub const MAX_BUNDLE: usize = 5;

/// Offers ranked at each step of [`CrossSellModel::bundle_with`].
const STEP_K: usize = 10;

/// A bundle offer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BundleOffer {
    /// The items, in the order chosen; each one's probability is conditional on the basket and
    /// the items before it. `suppressed` when no item could be offered.
    pub ranking: Ranking,
    /// That the customer adds every item: the product of the conditional probabilities.
    pub probability: f32,
    /// Sum of the items' prices (an item without one counts at the catalog's median price).
    pub price: f32,
    /// `price × (1 − discount)`.
    pub discounted_price: f32,
    /// `probability × discounted_price`.
    pub expected_value: f32,
}

impl CrossSellModel {
    /// Builds a bundle of up to `size` items for the request `q` under `policies` (its
    /// touchpoint's rules apply at every step): the best offer, then the best offer for the
    /// basket with it, and so on, skipping an item that is a substitute of one already chosen
    /// (judged on the model's evidence, within latent categories too). `discount` (in [0, 1))
    /// is the bundle discount that enters the expected value.
    pub fn bundle_with(&self, q: &RankQuery, size: usize, discount: f32, policies: &Policies) -> Result<BundleOffer> {
        if !(1..=MAX_BUNDLE).contains(&size) {
            return Err(Error::Invalid { what: "size", reason: format!("must be between 1 and {MAX_BUNDLE}, got {size}") });
        }
        if !(discount.is_finite() && (0.0..1.0).contains(&discount)) {
            return Err(Error::Invalid { what: "discount", reason: format!("must be a share within [0, 1), got {discount}") });
        }
        let mut basket = q.basket.clone();
        let mut out = BundleOffer::default();
        for step in 0..size {
            let r = self.rank_with(&RankQuery { basket: basket.clone(), k: STEP_K, explain: false, ..q.clone() }, policies)?;
            if step == 0 {
                (out.ranking.customer_known, out.ranking.unknown_items) = (r.customer_known, r.unknown_items);
                out.ranking.withheld = r.withheld;
                if r.items.is_empty() {
                    out.ranking.suppressed = r.suppressed;
                    return Ok(out);
                }
            }
            let chosen = &out.ranking.items;
            let next = r.items.into_iter().find(|o| {
                chosen
                    .iter()
                    .all(|c| c.item != o.item && !self.judged_substitute(c.item, o.item) && !self.judged_substitute(o.item, c.item))
            });
            let Some(next) = next else { break };
            basket.push(self.parts.items.ids[next.item as usize].clone());
            out.ranking.items.push(next);
        }
        let prices = &self.parts.items.prices;
        let price_of = |j: u32| Some(prices[j as usize]).filter(|p| p.is_finite() && *p > 0.0).unwrap_or(self.median_price);
        out.probability = out.ranking.items.iter().map(|o| o.probability).product();
        out.price = out.ranking.items.iter().map(|o| price_of(o.item)).sum();
        out.discounted_price = out.price * (1.0 - discount);
        out.expected_value = out.probability * out.discounted_price;
        Ok(out)
    }
}
