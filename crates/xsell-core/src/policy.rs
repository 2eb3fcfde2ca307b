//! Business policy: the rules applied at serve time, after scoring, by touchpoint.
//!
//! A [`RankPolicy`] is configuration (the server's `[policies.*]` tables), never part of a
//! model bundle: changing a business rule needs no retraining. The model supplies statistics
//! (scores, calibrated probabilities, substitute evidence, return rates, prices); the policy
//! decides what of it is shown. Each rule is one step of [`CrossSellModel::apply_policy`], and
//! says what it withheld ([`Withheld`]), so a client can branch on why an answer is short.

use serde::{Deserialize, Serialize};

use crate::model::{CrossSellModel, RankQuery, RankedItem};
use crate::ranker::Ranker;
use crate::{CustomerIx, Error, ItemIx, Result};

/// Where the offer is shown; selects the [`RankPolicy`] that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Touchpoint {
    /// Not said: the plain model, no business rule beyond the return-risk suppression.
    #[default]
    Unspecified,
    /// Product detail page.
    ProductPage,
    /// Cart page.
    Cart,
    /// Checkout: few, cheap, instantly addable offers.
    Checkout,
    /// After the purchase (confirmation page, customer portal).
    PostPurchase,
    /// A follow-up or campaign e-mail.
    Email,
}

impl Touchpoint {
    /// Every touchpoint.
    pub const ALL: [Touchpoint; 6] = [
        Touchpoint::Unspecified,
        Touchpoint::ProductPage,
        Touchpoint::Cart,
        Touchpoint::Checkout,
        Touchpoint::PostPurchase,
        Touchpoint::Email,
    ];

    /// The configuration key of the touchpoint.
    pub fn key(self) -> &'static str {
        match self {
            Touchpoint::Unspecified => "unspecified",
            Touchpoint::ProductPage => "product_page",
            Touchpoint::Cart => "cart",
            Touchpoint::Checkout => "checkout",
            Touchpoint::PostPurchase => "post_purchase",
            Touchpoint::Email => "email",
        }
    }
}

/// What offers are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The calibrated probability that the customer adds the item.
    #[default]
    Probability,
    /// Probability × price (items without a price count at the catalog's median price).
    ExpectedValue,
}

/// The business rules of one touchpoint. Request fields can only tighten them: a request's
/// `min_probability` counts when higher, its `max_per_category` when set, its `k` when smaller
/// than `max_offers`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankPolicy {
    /// Most offers shown (0: the request's `k`).
    pub max_offers: usize,
    /// Offers below this calibrated probability are withheld (the answer may be empty).
    pub min_probability: f32,
    /// Offers priced above this multiple of the priciest basket item are withheld (0: no
    /// ceiling; items without a price pass).
    pub max_price_ratio: f32,
    /// What offers are ordered by.
    pub objective: Objective,
    /// At most this many offers per category — the catalog's, else the latent one the trainer
    /// found — (0: no cap).
    pub max_per_category: usize,
    /// Customers whose return rate reaches this share get no offer at all ...
    pub return_suppress_rate: f32,
    /// ... from this share, at most `return_limit_offers` offers (when that is above 0) ...
    pub return_limit_rate: f32,
    /// ... (0: no such limit) ...
    pub return_limit_offers: usize,
    /// ... once they have at least this many purchase lines (fewer say little).
    pub return_min_lines: f32,
    /// High-return items are down-weighted: an offer's value is multiplied by
    /// `1 − item_return_weight × the item's return rate` (0: off, 1: returned sales count zero).
    pub item_return_weight: f32,
    /// Maximal-marginal-relevance re-rank: each next offer's value is multiplied by
    /// `1 − diversity × its highest embedding cosine to the offers already chosen` (0: off; 1:
    /// an item used in the same contexts as a chosen one counts nothing).
    pub diversity: f32,
}

impl Default for RankPolicy {
    /// The plain model: offers as asked, habitual returners (half their lines returned) get none.
    fn default() -> Self {
        RankPolicy {
            max_offers: 0,
            min_probability: 0.0,
            max_price_ratio: 0.0,
            objective: Objective::Probability,
            max_per_category: 0,
            return_suppress_rate: 0.5,
            return_limit_rate: 0.25,
            return_limit_offers: 0,
            return_min_lines: 10.0,
            item_return_weight: 0.0,
            diversity: 0.0,
        }
    }
}

impl RankPolicy {
    /// Checks the ranges; `key` names the policy in the error (e.g. `policies.checkout`).
    pub fn validate(&self, key: &str) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::Config { key: format!("{key}.{field}"), reason });
        let share = |v: f32| (0.0..=1.0).contains(&v);
        if !share(self.min_probability) {
            return bad("min_probability", format!("must be within [0, 1], got {}", self.min_probability));
        }
        if !(self.max_price_ratio.is_finite() && self.max_price_ratio >= 0.0) {
            return bad("max_price_ratio", format!("must be 0 (no ceiling) or positive, got {}", self.max_price_ratio));
        }
        for (field, v) in [("return_suppress_rate", self.return_suppress_rate), ("return_limit_rate", self.return_limit_rate)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("must be a share ≥ 0 (above 1: never), got {v}"));
            }
        }
        if !(self.return_min_lines.is_finite() && self.return_min_lines >= 0.0) {
            return bad("return_min_lines", format!("must be ≥ 0, got {}", self.return_min_lines));
        }
        if !share(self.diversity) {
            return bad("diversity", format!("must be within [0, 1], got {}", self.diversity));
        }
        if !share(self.item_return_weight) {
            return bad("item_return_weight", format!("must be within [0, 1], got {}", self.item_return_weight));
        }
        Ok(())
    }

    /// What the policy does for a customer with this return rate over this many purchase lines.
    pub fn customer_rule(&self, return_rate: f32, lines: f32) -> CustomerRule {
        if lines < self.return_min_lines {
            CustomerRule::Offer
        } else if return_rate >= self.return_suppress_rate {
            CustomerRule::Suppress
        } else if self.return_limit_offers > 0 && return_rate >= self.return_limit_rate {
            CustomerRule::Limit(self.return_limit_offers)
        } else {
            CustomerRule::Offer
        }
    }
}

/// The return-risk decision for one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerRule {
    /// Offers as usual.
    Offer,
    /// At most this many offers.
    Limit(usize),
    /// No offer.
    Suppress,
}

/// One [`RankPolicy`] per [`Touchpoint`]: the server's `[policies.<touchpoint>]` tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// Requests that name no touchpoint (and the offline evaluation).
    pub unspecified: RankPolicy,
    /// Product detail page.
    pub product_page: RankPolicy,
    /// Cart page.
    pub cart: RankPolicy,
    /// Checkout.
    pub checkout: RankPolicy,
    /// After the purchase.
    pub post_purchase: RankPolicy,
    /// E-mail.
    pub email: RankPolicy,
}

impl Default for Policies {
    /// Few offers where attention is short, cheap ones at checkout, one per category, fewer for
    /// customers who return a quarter of what they buy, high-return items down-weighted; the
    /// plain model when no touchpoint is named.
    fn default() -> Self {
        let shop = RankPolicy { max_per_category: 1, return_limit_offers: 1, item_return_weight: 1.0, ..RankPolicy::default() };
        Policies {
            unspecified: RankPolicy::default(),
            product_page: RankPolicy { max_offers: 6, ..shop },
            cart: RankPolicy { max_offers: 4, ..shop },
            checkout: RankPolicy { max_offers: 3, max_price_ratio: 1.0, ..shop },
            post_purchase: RankPolicy { max_offers: 5, ..shop },
            email: RankPolicy { max_offers: 8, max_per_category: 2, objective: Objective::ExpectedValue, diversity: 0.3, ..shop },
        }
    }
}

impl Policies {
    /// The policy of a touchpoint.
    pub fn get(&self, t: Touchpoint) -> &RankPolicy {
        match t {
            Touchpoint::Unspecified => &self.unspecified,
            Touchpoint::ProductPage => &self.product_page,
            Touchpoint::Cart => &self.cart,
            Touchpoint::Checkout => &self.checkout,
            Touchpoint::PostPurchase => &self.post_purchase,
            Touchpoint::Email => &self.email,
        }
    }

    /// Checks every policy, naming the one refused.
    pub fn validate(&self) -> Result<()> {
        Touchpoint::ALL.iter().try_for_each(|&t| self.get(t).validate(&format!("policies.{}", t.key())))
    }
}

/// Why every offer of a ranking was withheld on purpose. A code the client can branch on; it
/// never carries the customer's personal figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    /// The customer habitually returns goods (their return rate passed the policy's threshold).
    ReturnRisk,
    /// No candidate reached the minimum probability.
    BelowMinProbability,
    /// The policy's rules (substitutes, price ceiling, category caps) or the request's filters
    /// left no candidate.
    NoEligibleItem,
}

impl Suppression {
    /// A short text for people, without personal figures.
    pub fn describe(self) -> &'static str {
        match self {
            Suppression::ReturnRisk => "offers withheld: this customer's return risk is above the policy's threshold",
            Suppression::BelowMinProbability => "offers withheld: no item reached the minimum probability",
            Suppression::NoEligibleItem => "offers withheld: no item passed the request's filters and the policy's rules",
        }
    }
}

/// A rule that withheld some offers, with how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// Substitutes (or same-kind versions) of basket items.
    Substitutes(u32),
    /// Over the per-category cap.
    CategoryCap(u32),
    /// Candidates below the minimum probability, passed over while the offers were filled.
    BelowMinProbability(u32),
    /// Offers the request asked for beyond the touchpoint's offer budget.
    OfferBudget(u32),
    /// Offers the request asked for beyond the customer's return-risk limit.
    ReturnLimit(u32),
}

/// The effective rules of one request: the touchpoint's policy tightened by the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub offers: usize,
    pub min_probability: f32,
    pub max_per_category: usize,
    pub objective: Objective,
    pub item_return_weight: f32,
    pub allow_substitutes: bool,
    pub diversity: f32,
}

/// Scored candidates: the ranker, the items and their scores (same order).
pub(crate) struct Scored<'a> {
    pub ranker: &'a Ranker,
    pub items: &'a [ItemIx],
    pub scores: &'a [f32],
}

impl Effective {
    /// Combines a request with its policy and the customer's return rule; notes in `withheld`
    /// what the offer budget and the return limit take from the request's `k`.
    pub(crate) fn of(q: &RankQuery, policy: &RankPolicy, rule: CustomerRule, withheld: &mut Vec<Withheld>) -> Self {
        let mut offers = q.k;
        if policy.max_offers > 0 && policy.max_offers < offers {
            withheld.push(Withheld::OfferBudget((offers - policy.max_offers) as u32));
            offers = policy.max_offers;
        }
        if let CustomerRule::Limit(n) = rule
            && n < offers
        {
            withheld.push(Withheld::ReturnLimit((offers - n) as u32));
            offers = n;
        }
        Effective {
            offers,
            min_probability: q.min_probability.max(policy.min_probability),
            max_per_category: if q.max_per_category > 0 { q.max_per_category } else { policy.max_per_category },
            objective: q.objective.unwrap_or(policy.objective),
            item_return_weight: policy.item_return_weight,
            allow_substitutes: q.allow_substitutes,
            diversity: policy.diversity,
        }
    }
}

/// With diversity, the re-rank picks among this many times the offer budget of the best
/// eligible candidates.
const DIVERSITY_POOL: usize = 4;

impl CrossSellModel {
    /// The return-risk rule for a (known) customer.
    pub(crate) fn customer_rule(&self, policy: &RankPolicy, customer: Option<CustomerIx>) -> CustomerRule {
        match customer {
            Some(c) => policy.customer_rule(self.parts.customers.return_rate[c as usize], self.parts.customer_lines[c as usize]),
            None => CustomerRule::Offer,
        }
    }

    /// The price ceiling of a basket under a policy (`NaN`: none).
    pub(crate) fn price_ceiling(&self, policy: &RankPolicy, basket: &[ItemIx]) -> f32 {
        if policy.max_price_ratio <= 0.0 {
            return f32::NAN;
        }
        let prices = &self.parts.items.prices;
        let top = basket.iter().map(|&i| prices[i as usize]).filter(|v| v.is_finite()).fold(f32::NAN, f32::max);
        top * policy.max_price_ratio
    }

    /// An offer's value under the objective, down-weighted by the item's return rate.
    fn offer_value(&self, e: &Effective, item: ItemIx, probability: f32) -> f32 {
        let it = &self.parts.items;
        let value = match e.objective {
            Objective::Probability => probability,
            Objective::ExpectedValue => {
                let price = it.prices[item as usize];
                probability * if price.is_finite() && price > 0.0 { price } else { self.median_price }
            }
        };
        value * (1.0 - e.item_return_weight * it.return_rate[item as usize]).max(0.0)
    }

    /// Picks `n` of `pool` (rows, best value first) by maximal marginal relevance: value ×
    /// (1 − `diversity` × the highest cosine of the item's input embedding to those chosen).
    fn diversify(&self, pool: &[usize], items: &[ItemIx], values: &[f32], n: usize, diversity: f32) -> Vec<usize> {
        let unit = &self.emb_in_unit;
        let mut left: Vec<usize> = pool.to_vec();
        let mut nearest = vec![0f32; left.len()]; // highest cosine to a chosen item, per left row
        let mut out = Vec::with_capacity(n.min(left.len()));
        while out.len() < n && !left.is_empty() {
            let gain = |k: usize| values[left[k]] * (1.0 - diversity * nearest[k].max(0.0));
            let best = (0..left.len()).max_by(|&a, &b| gain(a).total_cmp(&gain(b)).then(b.cmp(&a))).expect("not empty");
            let row = left.swap_remove(best);
            nearest.swap_remove(best);
            let chosen = unit.row(items[row] as usize);
            for (k, &r) in left.iter().enumerate() {
                nearest[k] = nearest[k].max(unit.row(items[r] as usize).dot(&chosen));
            }
            out.push(row);
        }
        out
    }

    /// The policy's rules over scored candidates: order by the objective, then walk down,
    /// withholding items below the minimum probability, substitutes of basket items and items
    /// over the category cap, until the offer budget is met. `make` builds an offer from a
    /// candidate's row.
    pub(crate) fn apply_policy(
        &self,
        e: &Effective,
        scored: &Scored<'_>,
        basket: &[ItemIx],
        withheld: &mut Vec<Withheld>,
        mut make: impl FnMut(usize, f32, f32) -> RankedItem,
    ) -> Vec<RankedItem> {
        let Scored { ranker, items, scores } = *scored;
        let probabilities: Vec<f32> = scores.iter().map(|&s| ranker.probability(s)).collect();
        let values: Vec<f32> = items.iter().zip(&probabilities).map(|(&j, &p)| self.offer_value(e, j, p)).collect();
        let mut order: Vec<usize> = (0..items.len()).collect();
        let by_value =
            |&a: &usize, &b: &usize| values[b].total_cmp(&values[a]).then(scores[b].total_cmp(&scores[a])).then(items[a].cmp(&items[b]));
        let (mut below, mut substitutes, mut capped) = (0u32, 0u32, 0u32);
        let mut per_category: Vec<(u32, usize)> = Vec::new();
        // with diversity, the walk fills a pool the re-rank then picks from
        let pool = if e.diversity > 0.0 { e.offers.saturating_mul(DIVERSITY_POOL) } else { e.offers };
        let mut kept: Vec<usize> = Vec::with_capacity(pool);
        walk_sorted(&mut order, pool.saturating_mul(4).max(32), by_value, |row| {
            if kept.len() == pool {
                return false;
            }
            let (j, probability) = (items[row], probabilities[row]);
            if probability < e.min_probability {
                below += 1;
                return true;
            }
            if !e.allow_substitutes && basket.iter().any(|&i| self.is_substitute(i, j)) {
                substitutes += 1;
                return true;
            }
            if e.max_per_category > 0
                && let Some(c) = self.group_of(j)
            {
                match per_category.iter_mut().find(|(g, _)| *g == c) {
                    Some((_, seen)) if *seen >= e.max_per_category => {
                        capped += 1;
                        return true;
                    }
                    Some((_, seen)) => *seen += 1,
                    None => per_category.push((c, 1)),
                }
            }
            kept.push(row);
            true
        });
        if e.diversity > 0.0 {
            kept = self.diversify(&kept, items, &values, e.offers, e.diversity);
        }
        let out: Vec<RankedItem> = kept.into_iter().map(|row| make(row, scores[row], probabilities[row])).collect();
        for (n, w) in [
            (substitutes, Withheld::Substitutes as fn(u32) -> Withheld),
            (capped, Withheld::CategoryCap),
            (below, Withheld::BelowMinProbability),
        ] {
            if n > 0 {
                withheld.push(w(n));
            }
        }
        out
    }
}

/// Calls `visit` with the elements of `order` in the order `cmp` sorts them (a strict total
/// order) until it returns false, sorting only as far as the walk goes: chunks of `chunk`, each
/// the smallest of the rest, picked by a selection. A walk that stops early (the offers are
/// found among the first few candidates) costs a selection, not a sort of every candidate.
pub(crate) fn walk_sorted(
    order: &mut [usize],
    chunk: usize,
    cmp: impl Fn(&usize, &usize) -> std::cmp::Ordering,
    mut visit: impl FnMut(usize) -> bool,
) {
    let mut start = 0;
    while start < order.len() {
        let end = (start + chunk.max(1)).min(order.len());
        if end < order.len() {
            order[start..].select_nth_unstable_by(end - start - 1, &cmp);
        }
        let part = &mut order[start..end];
        part.sort_unstable_by(&cmp);
        for &row in part.iter() {
            if !visit(row) {
                return;
            }
        }
        start = end;
    }
}
