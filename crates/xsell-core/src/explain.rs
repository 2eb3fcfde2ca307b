//! Explanations: why an offer is made, in terms a customer and an auditor can read.

use ndarray::ArrayView1;

use crate::features::feature;
use crate::model::CrossSellModel;
use crate::{CustomerIx, ItemIx};

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
