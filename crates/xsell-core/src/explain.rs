//! Explanations: why an offer is made, in terms a customer and an auditor can read.

use ndarray::ArrayView1;

use crate::features::feature;
use crate::model::CrossSellModel;
use crate::ranker::Ranker;
use crate::retrieval::Scratch;
use crate::{CustomerIx, ItemIx};

/// What raised an offer's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverSource {
    /// A basket item.
    BasketItem(ItemIx),
    /// The customer's past purchases (their history as a whole).
    History,
}

/// One driver of an offer, with its share of the score the drivers add (the shares of an
/// offer's drivers sum to at most 1: only the strongest are kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Driver {
    /// The basket item or the history.
    pub source: DriverSource,
    /// Its share of the score the offer's drivers add, in (0, 1].
    pub share: f32,
}

/// Basket items judged as drivers, at most (the first ones of the basket).
pub const MAX_DRIVER_BASKET: usize = 16;
/// Drivers kept per offer.
pub const MAX_DRIVERS: usize = 3;

/// Why an item is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Often bought together with this basket item.
    BoughtWith(ItemIx),
    /// Complements this basket item (learned embeddings).
    Complements(ItemIx),
    /// The customer bought it before.
    BoughtBefore,
    /// Popular overall (cold start).
    Popular,
}

impl CrossSellModel {
    pub(crate) fn reason(&self, customer: Option<CustomerIx>, basket: &[ItemIx], j: ItemIx, x: ArrayView1<'_, f32>) -> Reason {
        let p = &self.parts;
        let best_pair = basket
            .iter()
            .map(|&i| (i, p.pairs.get(i as usize, j) / p.items.orders[i as usize].max(1.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((i, cond)) = best_pair
            && cond > 0.0
        {
            return Reason::BoughtWith(i);
        }
        if customer.is_some() && x[feature::HIST_LOG] > 0.0 {
            return Reason::BoughtBefore;
        }
        let best_emb = basket
            .iter()
            .map(|&i| (i, p.emb_in.row(i as usize).dot(&p.emb_out.row(j as usize))))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best_emb {
            Some((i, _)) => Reason::Complements(i),
            None => Reason::Popular,
        }
    }

    /// Drivers of each of `offers` (leave one out: the score lost when a basket item, or the
    /// customer's history, is taken away), each offer's strongest [`MAX_DRIVERS`] with their
    /// share of the positive losses. Costs one feature pass over the offers per basket item
    /// (at most [`MAX_DRIVER_BASKET`]) and one for the history.
    pub(crate) fn drivers(
        &self,
        ranker: &Ranker,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        offers: &[ItemIx],
        s: &mut Scratch,
    ) -> Vec<Vec<Driver>> {
        let Scratch { rows, held, touched, .. } = s;
        rows.begin(self.n_items());
        for (r, &j) in offers.iter().enumerate() {
            rows.set(j, r as u32);
        }
        let rows = &*rows;
        let mut score =
            |c: Option<CustomerIx>, b: &[ItemIx]| ranker.scores(&self.fill_features(c, b, offers, rows, held, touched)).to_vec();
        let full = score(customer, basket);
        let mut losses: Vec<(DriverSource, Vec<f32>)> = Vec::new();
        for (k, &b) in basket.iter().enumerate().take(MAX_DRIVER_BASKET) {
            let rest: Vec<ItemIx> = basket.iter().enumerate().filter(|&(i, _)| i != k).map(|(_, &x)| x).collect();
            let without = score(customer, &rest);
            losses.push((DriverSource::BasketItem(b), full.iter().zip(&without).map(|(f, w)| f - w).collect()));
        }
        if customer.is_some() {
            let without = score(None, basket);
            losses.push((DriverSource::History, full.iter().zip(&without).map(|(f, w)| f - w).collect()));
        }
        (0..offers.len())
            .map(|r| {
                let mut d: Vec<(DriverSource, f32)> =
                    losses.iter().map(|(s, l)| (*s, l[r])).filter(|(_, l)| l.is_finite() && *l > 0.0).collect();
                let total: f32 = d.iter().map(|x| x.1).sum();
                d.sort_by(|a, b| b.1.total_cmp(&a.1));
                d.into_iter().take(MAX_DRIVERS).map(|(source, l)| Driver { source, share: l / total }).collect()
            })
            .collect()
    }

    /// A human-readable explanation of a reason.
    pub fn explain(&self, reason: Reason) -> (Option<&str>, String) {
        let name = |i: ItemIx| {
            let it = &self.parts.items;
            it.names[i as usize].clone().unwrap_or_else(|| it.ids[i as usize].clone())
        };
        match reason {
            Reason::BoughtWith(i) => (Some(self.parts.items.ids[i as usize].as_str()), format!("often bought with {}", name(i))),
            Reason::Complements(i) => (Some(self.parts.items.ids[i as usize].as_str()), format!("complements {}", name(i))),
            Reason::BoughtBefore => (None, "you bought this before".into()),
            Reason::Popular => (None, "popular with other customers".into()),
        }
    }
}
