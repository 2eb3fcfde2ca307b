//! The offline business measures of `xsell eval` (`../shared/DOMAIN.md`, "How success is
//! measured"): attachment rate, order-value uplift, substitute leak rate, same-kind share, and
//! the effect of the return-aware rules.
//!
//! Attachment is simulated per test order: the customer has put the order's first item in
//! the basket (the "primary" item); an offer attaches when the order holds it. Every system
//! ranks the same primary-item queries.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;
use xsell_core::policy::{Policies, RankPolicy};
use xsell_core::protocol::Query;
use xsell_core::{CrossSellModel, OrderLog, RankQuery, Touchpoint};

/// Offer counts the attachment rate is read at (a checkout-sized and a page-sized list).
pub const ATTACH_K: [usize; 2] = [3, 10];

/// The primary-item queries of the protocol's queries: the first basket item alone, and the
/// rest of the order (the other basket items and the target) as what may attach.
pub struct AttachQueries {
    /// The queries to rank (target: the held-out item, unused by the measures).
    pub queries: Vec<Query>,
    /// Per query, the order's other items.
    pub rest: Vec<HashSet<String>>,
}

impl AttachQueries {
    pub fn of(queries: &[Query]) -> Self {
        let (queries, rest) = queries
            .iter()
            .map(|q| {
                let rest = q.basket[1..].iter().cloned().chain([q.target.clone()]).collect();
                (Query { customer_id: q.customer_id.clone(), basket: vec![q.basket[0].clone()], target: q.target.clone() }, rest)
            })
            .unzip();
        AttachQueries { queries, rest }
    }
}

/// What judges offers: the trained model's substitute evidence and kinds, and catalog prices.
pub struct Judge<'a> {
    pub model: Option<&'a CrossSellModel>,
    pub prices: HashMap<&'a str, f32>,
}

impl<'a> Judge<'a> {
    pub fn new(log: &'a OrderLog, model: Option<&'a CrossSellModel>) -> Self {
        let prices = log.catalog.ids.iter().zip(&log.catalog.prices).map(|(id, &p)| (id.as_str(), p)).collect();
        Judge { model, prices }
    }

    fn price(&self, id: &str) -> f64 {
        self.prices.get(id).map(|&p| f64::from(p)).filter(|p| p.is_finite() && *p > 0.0).unwrap_or(0.0)
    }
}

/// The business measures of one system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Business {
    /// Per [`ATTACH_K`]: share of orders with at least one of the top k offers in them.
    pub attachment: Vec<(usize, f64)>,
    /// Mean value of the attached top-3 offers (price of each offer the order holds): the
    /// realized order-value uplift.
    pub realized_uplift3: f64,
    /// Mean Σ probability × price over the top-3 offers (systems with probabilities).
    pub expected_uplift3: Option<f64>,
    /// Share of protocol queries whose top 10 holds a substitute of a basket item.
    pub substitute_leak10: Option<f64>,
    /// Share of top-10 offers that are substitutes of a basket item.
    pub substitute_offers10: Option<f64>,
    /// Share of top-10 offers of a basket item's kind (category, else latent category).
    pub same_kind10: Option<f64>,
}

impl Business {
    /// `lists`: the system's ranked ids on the protocol queries; `attach`: on the
    /// primary-item queries, with probabilities when it has them.
    pub fn of(
        queries: &[Query],
        lists: &[(Vec<String>, Option<Vec<f32>>)],
        aq: &AttachQueries,
        attach: &[(Vec<String>, Option<Vec<f32>>)],
        judge: &Judge<'_>,
    ) -> Self {
        let n = aq.queries.len().max(1) as f64;
        let mut b = Business {
            attachment: ATTACH_K
                .iter()
                .map(|&k| {
                    let attached = attach.iter().zip(&aq.rest).filter(|((l, _), rest)| l.iter().take(k).any(|i| rest.contains(i))).count();
                    (k, attached as f64 / n)
                })
                .collect(),
            realized_uplift3: attach
                .iter()
                .zip(&aq.rest)
                .map(|((l, _), rest)| l.iter().take(3).filter(|i| rest.contains(*i)).map(|i| judge.price(i)).sum::<f64>())
                .sum::<f64>()
                / n,
            ..Default::default()
        };
        if attach.iter().all(|(_, p)| p.is_some()) && !attach.is_empty() {
            let ev = attach
                .iter()
                .map(|(l, p)| {
                    l.iter().zip(p.as_deref().unwrap_or_default()).take(3).map(|(i, &p)| f64::from(p) * judge.price(i)).sum::<f64>()
                })
                .sum::<f64>();
            b.expected_uplift3 = Some(ev / n);
        }
        let Some(m) = judge.model else { return b };
        let (mut leaky, mut offers, mut substitutes, mut same, mut judged) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for (q, (l, _)) in queries.iter().zip(lists) {
            let basket: Vec<_> = q.basket.iter().filter_map(|i| m.item(i)).collect();
            let kinds: HashSet<u32> = basket.iter().filter_map(|&i| m.group_of(i)).collect();
            let mut leaked = false;
            for j in l.iter().filter(|i| !q.basket.contains(i)).take(10).filter_map(|i| m.item(i)) {
                offers += 1;
                if basket.iter().any(|&i| m.judged_substitute(i, j)) {
                    substitutes += 1;
                    leaked = true;
                }
                if let Some(k) = m.group_of(j) {
                    judged += 1;
                    same += usize::from(kinds.contains(&k));
                }
            }
            leaky += usize::from(leaked);
        }
        b.substitute_leak10 = Some(leaky as f64 / queries.len().max(1) as f64);
        b.substitute_offers10 = Some(substitutes as f64 / offers.max(1) as f64);
        b.same_kind10 = (judged > 0).then(|| same as f64 / judged as f64);
        b
    }
}

pub fn print(systems: &[(String, Business)], latent: bool) {
    let Some((_, first)) = systems.first() else { return };
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    outln!(
        "\nbusiness measures (attachment: the order's first item as the basket, the rest of the order may attach; kinds: {}):",
        if latent { "latent categories" } else { "catalog categories" }
    );
    let heads: Vec<String> = first.attachment.iter().map(|(k, _)| format!("attach@{k}")).collect();
    outln!(
        "{:<24} {:>9} {:>9} {:>11} {:>11} {:>9} {:>10} {:>9}",
        "system",
        heads.first().map(String::as_str).unwrap_or(""),
        heads.get(1).map(String::as_str).unwrap_or(""),
        "value@3",
        "exp.value@3",
        "leak@10",
        "subst.off",
        "samekind"
    );
    for (name, b) in systems {
        let a = |i: usize| b.attachment.get(i).map(|(_, v)| format!("{v:.4}")).unwrap_or_default();
        outln!(
            "{:<24} {:>9} {:>9} {:>11.3} {:>11} {:>9} {:>10} {:>9}",
            name,
            a(0),
            a(1),
            b.realized_uplift3,
            opt(b.expected_uplift3),
            opt(b.substitute_leak10),
            opt(b.substitute_offers10),
            opt(b.same_kind10)
        );
    }
}

/// The effect of the return-aware rules: the cart touchpoint's policy against the same policy
/// without return rules, over the protocol queries.
#[derive(Debug, Clone, Serialize)]
pub struct ReturnEffect {
    pub queries: usize,
    /// Per variant ("blind", "return-aware").
    pub variants: Vec<ReturnVariant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReturnVariant {
    pub name: &'static str,
    /// Queries answered with no offer at all.
    pub suppressed: f64,
    /// Offers shown per query.
    pub offers_per_query: f64,
    /// Share of queries whose target was among the offers shown.
    pub hit: f64,
    /// Mean training return rate of the items offered.
    pub offered_item_return_rate: f64,
    /// Share of offers shown to customers who returned half their lines or more.
    pub offers_to_returners: f64,
    /// Of the hits, the share the customer returned later in the test period.
    pub hits_returned: f64,
    /// Mean Σ probability × price × (1 − item return rate) of the offers shown: the value
    /// expected to be kept.
    pub expected_kept_value: f64,
}

impl ReturnEffect {
    pub fn of(model: &CrossSellModel, log: &OrderLog, queries: &[Query], cutoff_ts: Option<i64>) -> anyhow::Result<Self> {
        let aware = Policies::default();
        let blind_cart = RankPolicy { return_suppress_rate: 2.0, return_limit_offers: 0, item_return_weight: 0.0, ..aware.cart };
        let blind = Policies { cart: blind_cart, ..aware.clone() };
        let cust: HashMap<&str, u32> = log.customers.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let returned: HashSet<(u32, u32)> = log
            .returns
            .iter()
            .filter(|r| cutoff_ts.is_none_or(|c| r.ts.is_some_and(|t| t >= c)))
            .filter_map(|r| Some((r.customer?, r.item)))
            .collect();
        let item_ix: HashMap<&str, u32> = log.catalog.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let p = model.parts();
        let price = |j: u32| {
            let v = p.items.prices[j as usize];
            if v.is_finite() && v > 0.0 { f64::from(v) } else { 0.0 }
        };
        // habitual returners: the customers the default policy gives no offer
        let plain = RankPolicy::default();
        let returner = |c: Option<&str>| {
            c.and_then(|c| model.customer(c)).is_some_and(|c| {
                let (rate, lines) = (p.customers.return_rate[c as usize], p.customer_lines[c as usize]);
                plain.customer_rule(rate, lines) == xsell_core::policy::CustomerRule::Suppress
            })
        };
        let mut variants = Vec::new();
        for (name, policies) in [("blind", &blind), ("return-aware", &aware)] {
            let per: Vec<(bool, usize, bool, f64, usize, bool, f64)> = queries
                .par_iter()
                .map(|q| {
                    let rq = RankQuery {
                        customer_id: q.customer_id.clone(),
                        basket: q.basket.clone(),
                        k: 20,
                        touchpoint: Touchpoint::Cart,
                        ..Default::default()
                    };
                    let r = model.rank_with(&rq, policies)?;
                    let target = model.item(&q.target);
                    let hit = target.is_some_and(|t| r.items.iter().any(|o| o.item == t));
                    let rr: f64 = r.items.iter().map(|o| f64::from(p.items.return_rate[o.item as usize])).sum();
                    let kept: f64 = r
                        .items
                        .iter()
                        .map(|o| f64::from(o.probability) * price(o.item) * (1.0 - f64::from(p.items.return_rate[o.item as usize])))
                        .sum();
                    let to_returner = if returner(q.customer_id.as_deref()) { r.items.len() } else { 0 };
                    let hit_returned = hit
                        && q.customer_id
                            .as_deref()
                            .and_then(|c| cust.get(c))
                            .zip(item_ix.get(q.target.as_str()))
                            .is_some_and(|(&c, &i)| returned.contains(&(c, i)));
                    Ok((r.suppressed.is_some() && r.items.is_empty(), r.items.len(), hit, rr, to_returner, hit_returned, kept))
                })
                .collect::<anyhow::Result<_>>()?;
            let n = queries.len().max(1) as f64;
            let offers: usize = per.iter().map(|t| t.1).sum();
            let hits = per.iter().filter(|t| t.2).count();
            variants.push(ReturnVariant {
                name,
                suppressed: per.iter().filter(|t| t.0).count() as f64 / n,
                offers_per_query: offers as f64 / n,
                hit: hits as f64 / n,
                offered_item_return_rate: per.iter().map(|t| t.3).sum::<f64>() / offers.max(1) as f64,
                offers_to_returners: per.iter().map(|t| t.4).sum::<usize>() as f64 / offers.max(1) as f64,
                hits_returned: per.iter().filter(|t| t.5).count() as f64 / hits.max(1) as f64,
                expected_kept_value: per.iter().map(|t| t.6).sum::<f64>() / n,
            });
        }
        Ok(ReturnEffect { queries: queries.len(), variants })
    }

    pub fn print(&self) {
        outln!("\nreturn-aware rules (cart policy, {} queries; blind = the same policy without return rules):", self.queries);
        outln!(
            "{:<14} {:>10} {:>8} {:>8} {:>12} {:>13} {:>13} {:>11}",
            "policy",
            "suppressed",
            "offers",
            "hit",
            "item ret.",
            "to returners",
            "hits returned",
            "kept value"
        );
        for v in &self.variants {
            outln!(
                "{:<14} {:>10.4} {:>8.3} {:>8.4} {:>12.4} {:>13.4} {:>13.4} {:>11.3}",
                v.name,
                v.suppressed,
                v.offers_per_query,
                v.hit,
                v.offered_item_return_rate,
                v.offers_to_returners,
                v.hits_returned,
                v.expected_kept_value
            );
        }
    }
}
