//! The ranker's features: what [`CrossSellModel`] computes for each candidate of a request.
//!
//! An item's feature row depends on the customer, the basket and the item only, never on the
//! other candidates, so the trainer, `xsell eval` and the server see the same rows.

use ndarray::{Array2, ArrayView1, Axis};
use rayon::prelude::*;

use crate::model::CrossSellModel;
use crate::model::{BASKET_EASE_ENTRIES, HISTORY_EASE_ITEMS};
use crate::retrieval::{Candidates, Marks, Scratch, Source, Touched, with_scratch};
use crate::{Csr, CustomerIx, ItemIx};

/// Names of the ranker's features, in column order of [`CrossSellModel::features`].
pub const FEATURES: [&str; 16] = [
    "cooc_max",     // max over basket items i of P(j | i)
    "cooc_mean",    // mean over basket items of P(j | i)
    "jaccard_max",  // max over basket items of |i ∧ j| / |i ∨ j|
    "jaccard_mean", // mean over basket items of the Jaccard index
    "ease",         // sum over basket items of the EASE weight B[i, j] (a large basket: each row's strongest)
    "ease_history", // sum over the customer's 50 most-bought past items of their order share × B[i, j]
    "emb_comp",     // mean over basket items of input(i) · output(j): "bought with"
    "emb_cos",      // max cosine(input(i), input(j)): "used in the same contexts"
    "name_basket",  // cosine of j's name (TF-IDF of its words) with the basket's names together
    "name_max",     // max over basket items of the cosine between the two names
    "popularity",   // log(1 + orders with j) / log(1 + orders)
    "pop_recent",   // the same over the newest training orders (trends, seasons)
    "hist_log",     // log(1 + orders of this customer with j)
    "hist_share",   // share of this customer's orders with j
    "hist_recency", // 1 / (1 + this customer's orders since their last one with j)
    "item_returns", // share of j's sold lines that came back
];
/// Number of ranker features.
pub const N_FEATURES: usize = FEATURES.len();

/// Column indices of [`FEATURES`].
pub mod feature {
    #![allow(missing_docs)]
    pub const COOC_MAX: usize = 0;
    pub const COOC_MEAN: usize = 1;
    pub const JACCARD_MAX: usize = 2;
    pub const JACCARD_MEAN: usize = 3;
    pub const EASE: usize = 4;
    pub const EASE_HISTORY: usize = 5;
    pub const EMB_COMP: usize = 6;
    pub const EMB_COS: usize = 7;
    pub const NAME_BASKET: usize = 8;
    pub const NAME_MAX: usize = 9;
    pub const POPULARITY: usize = 10;
    pub const POP_RECENT: usize = 11;
    pub const HIST_LOG: usize = 12;
    pub const HIST_SHARE: usize = 13;
    pub const HIST_RECENCY: usize = 14;
    pub const ITEM_RETURNS: usize = 15;
}

/// Feature groups, for ablations: a group's features are zeroed together.
pub const FEATURE_GROUPS: [(&str, &[usize]); 7] = {
    use feature::*;
    [
        ("co-occurrence", &[COOC_MAX, COOC_MEAN, JACCARD_MAX, JACCARD_MEAN]),
        ("ease", &[EASE]),
        ("embeddings", &[EMB_COMP, EMB_COS]),
        ("names", &[NAME_BASKET, NAME_MAX]),
        ("popularity", &[POPULARITY, POP_RECENT]),
        ("customer history", &[EASE_HISTORY, HIST_LOG, HIST_SHARE, HIST_RECENCY]),
        ("returns", &[ITEM_RETURNS]),
    ]
};

impl CrossSellModel {
    /// Raw (unstandardized) features of every catalog item for a customer and basket:
    /// an items × [`N_FEATURES`] matrix, columns as named in [`FEATURES`] (work proportional to
    /// the catalog: for tests and analysis, never on the serving path).
    pub fn features(&self, customer: Option<CustomerIx>, basket: &[ItemIx]) -> Array2<f32> {
        let all: Vec<ItemIx> = (0..self.n_items() as ItemIx).collect();
        self.features_of(customer, basket, &all)
    }

    /// Raw features of `items` (row `r` is `items[r]`; each item once) for a customer and basket.
    /// An item's row does not depend on which other items are listed.
    pub fn features_of(&self, customer: Option<CustomerIx>, basket: &[ItemIx], items: &[ItemIx]) -> Array2<f32> {
        with_scratch(|s| {
            s.rows.begin(self.n_items());
            for (r, &j) in items.iter().enumerate() {
                s.rows.set(j, r as u32);
            }
            self.fill_features(customer, basket, items, &s.rows, &mut s.held, &mut s.touched)
        })
    }

    /// The candidates the trainer and the validation rank for a query (basket items left out,
    /// and the customer's past items for a discovery query; no other filter), with `extra`
    /// added when it is not among them (a training target), and their raw features.
    pub fn candidate_features(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        extra: Option<ItemIx>,
        new_to_customer: bool,
    ) -> (Candidates, Array2<f32>) {
        with_scratch(|s| {
            let n = self.n_items();
            s.excluded.begin(n);
            for &i in basket {
                s.excluded.set(i, 0);
            }
            if new_to_customer && let Some(c) = customer {
                for &i in self.parts.history.row(c as usize).0 {
                    s.excluded.set(i, 0);
                }
            }
            let Scratch { excluded, rows, touched, held, lists } = s;
            let eligible = |j: ItemIx| !excluded.contains(j);
            let mut c = self.gather(customer, basket, &[], &[], &eligible, self.budget(), basket.len(), touched, held, rows, lists);
            if let Some(t) = extra.filter(|&t| !rows.contains(t) && (t as usize) < n) {
                rows.set(t, c.items.len() as u32);
                c.items.push(t);
                c.sources.push(0);
            }
            let x = self.features_from(customer, basket, &c.items, rows, touched);
            (c, x)
        })
    }

    /// Raw features of the candidate `items` (`rows` marks each one's row).
    pub(crate) fn fill_features(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        items: &[ItemIx],
        rows: &Marks,
        held: &mut Marks,
        touched: &mut Touched,
    ) -> Array2<f32> {
        self.touch(customer, basket, held, touched, false);
        self.features_from(customer, basket, items, rows, touched)
    }

    /// Reads the rows of the basket items and of the customer's past items once, into
    /// `touched`: the co-purchase and EASE sums the features use, and with `sources` the
    /// embedding-neighbour, look-alike and name scores the candidate sources rank by too.
    pub(crate) fn touch(&self, customer: Option<CustomerIx>, basket: &[ItemIx], held: &mut Marks, touched: &mut Touched, sources: bool) {
        let p = &self.parts;
        touched.begin(self.n_items());
        self.names.profile(basket, &mut touched.names);
        if !basket.is_empty() {
            let inv_b = 1.0 / basket.len() as f32;
            let ease_entries = BASKET_EASE_ENTRIES / basket.len();
            for &i in basket {
                let ci = p.items.orders[i as usize].max(1.0);
                let (cols, vals) = p.pairs.row(i as usize);
                for (&j, &cij) in cols.iter().zip(vals) {
                    let cond = cij / ci;
                    let jac = cij / (ci + p.items.orders[j as usize] - cij).max(1.0);
                    let (t, _) = touched.at(j, Source::Cooccurrence);
                    t.cooc_max = t.cooc_max.max(cond);
                    t.cooc_mean += cond * inv_b;
                    t.jaccard_max = t.jaccard_max.max(jac);
                    t.jaccard_mean += jac * inv_b;
                }
                let (cols, vals) = self.ease_strongest.row(i as usize);
                let n = cols.len().min(ease_entries);
                for (&j, &b) in cols[..n].iter().zip(&vals[..n]) {
                    touched.at(j, Source::Ease).0.ease += b;
                }
            }
            self.for_each_pair_weight(basket, held, |j, w| touched.at(j, Source::Ease).0.ease += w);
        }
        if let Some(c) = customer {
            let orders = p.customers.orders[c as usize].max(1.0);
            self.for_each_history_for_ease(c, |i, h| {
                let share = h / orders;
                let (ecols, evals) = p.ease.row(i as usize);
                for (&j, &b) in ecols.iter().zip(evals) {
                    touched.at(j, Source::Ease).0.ease_history += share * b;
                }
            });
        }
        if sources && !basket.is_empty() {
            let inv_b = 1.0 / basket.len() as f32;
            for &i in basket {
                let (cols, vals) = p.neighbours.comp.row(i as usize);
                for (&j, &v) in cols.iter().zip(vals) {
                    touched.at(j, Source::Embedding).0.comp += v * inv_b;
                }
                let (cols, vals) = p.neighbours.similar.row(i as usize);
                for (&j, &v) in cols.iter().zip(vals) {
                    let (t, first) = touched.at(j, Source::Similar);
                    t.similar = if first { v } else { t.similar.max(v) };
                }
            }
            let profile = std::mem::take(&mut touched.names); // its buffers move, nothing is copied
            self.names.look_alikes(&profile, |j, v| touched.at(j, Source::Names).0.names += v);
            touched.names = profile;
        }
    }

    /// Raw features of the candidate `items` (`rows` marks each one's row) from the rows
    /// [`Self::touch`] read for this customer and basket.
    pub(crate) fn features_from(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        items: &[ItemIx],
        rows: &Marks,
        touched: &Touched,
    ) -> Array2<f32> {
        use feature::*;
        let p = &self.parts;
        let m = items.len();
        let mut x = Array2::<f32>::zeros((m, N_FEATURES));
        let log_n = (1.0 + p.n_orders).ln().max(1e-6);
        let log_recent = (1.0 + p.n_recent).ln().max(1e-6);
        for (r, &j) in items.iter().enumerate() {
            let ju = j as usize;
            x[[r, POPULARITY]] = (1.0 + p.items.orders[ju]).ln() / log_n;
            x[[r, POP_RECENT]] = (1.0 + p.items.recent_orders[ju]).ln() / log_recent;
            x[[r, ITEM_RETURNS]] = p.items.return_rate[ju];
            if let Some(t) = touched.get(j) {
                x[[r, EASE_HISTORY]] = t.ease_history;
            }
        }
        if !basket.is_empty() && m > 0 {
            for (r, &j) in items.iter().enumerate() {
                if let Some(t) = touched.get(j) {
                    x[[r, COOC_MAX]] = t.cooc_max;
                    x[[r, COOC_MEAN]] = t.cooc_mean;
                    x[[r, JACCARD_MAX]] = t.jaccard_max;
                    x[[r, JACCARD_MEAN]] = t.jaccard_mean;
                    x[[r, EASE]] = t.ease;
                }
            }
            if !p.ease_always_on.is_empty() {
                for (r, &j) in items.iter().enumerate() {
                    x[[r, EASE]] += p.ease_always_on[j as usize];
                }
            }
            let (basket_sim, best) = self.names.similarities(&touched.names, items);
            x.column_mut(NAME_BASKET).assign(&ArrayView1::from(&basket_sim));
            x.column_mut(NAME_MAX).assign(&ArrayView1::from(&best));
            let mean_in = gather_rows(&p.emb_in, basket).mean_axis(Axis(0)).expect("basket is not empty");
            x.column_mut(EMB_COMP).assign(&gather_rows(&p.emb_out, items).dot(&mean_in));
            let sims = gather_rows(&self.emb_in_unit, items).dot(&gather_rows(&self.emb_in_unit, basket).t());
            for (r, row) in sims.axis_iter(Axis(0)).enumerate() {
                x[[r, EMB_COS]] = row.iter().copied().fold(f32::MIN, f32::max);
            }
        }
        if let Some(c) = customer
            && m > 0
        {
            let orders = p.customers.orders[c as usize].max(1.0);
            let (cols, vals) = p.history.row(c as usize);
            let (_, ages) = p.since.row(c as usize); // the same pairs, validated
            for ((&i, &h), &age) in cols.iter().zip(vals).zip(ages) {
                if let Some(r) = rows.get(i) {
                    let r = r as usize;
                    x[[r, HIST_LOG]] = h.ln_1p();
                    x[[r, HIST_SHARE]] = h / orders;
                    x[[r, HIST_RECENCY]] = 1.0 / (1.0 + age.max(0.0));
                }
            }
        }
        x
    }

    /// Calls `f(i, orders)` for the customer's past items whose EASE rows count (`ease_history`
    /// and the EASE source): the [`HISTORY_EASE_ITEMS`] bought in the most orders (ties: the
    /// lower index), by index, so a long history costs a bounded number of rows. Which ones is
    /// settled once per customer at load ([`HistoryCut`]), so a request only filters the row.
    pub(crate) fn for_each_history_for_ease(&self, c: CustomerIx, f: impl FnMut(ItemIx, f32)) {
        let (cols, vals) = self.parts.history.row(c as usize);
        self.history_cuts[c as usize].for_each(cols, vals, f);
    }

    /// Calls `f(j, w)` for every weight of every EASE pair held whole by `basket`.
    pub(crate) fn for_each_pair_weight(&self, basket: &[ItemIx], held: &mut Marks, mut f: impl FnMut(ItemIx, f32)) {
        let pw = &self.parts.ease_pairs;
        if pw.pairs.is_empty() || basket.len() < 2 {
            return;
        }
        held.begin(self.n_items());
        for &i in basket {
            held.set(i, 0);
        }
        for &a in basket {
            for &(b, q) in &self.pair_partners[a as usize] {
                if held.contains(b) {
                    let (cols, vals) = pw.weights.row(q as usize);
                    cols.iter().zip(vals).for_each(|(&j, &w)| f(j, w));
                }
            }
        }
    }
}

/// The rows `rows` of `m`, copied slice by slice (what `select` does, without its per-row
/// iterator set-up, which costs more than the copy for 32-wide rows).
fn gather_rows(m: &Array2<f32>, rows: &[ItemIx]) -> Array2<f32> {
    let Some(all) = m.as_slice() else {
        let idx: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        return m.select(Axis(0), &idx);
    };
    let d = m.ncols();
    let mut v = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        v.extend_from_slice(&all[r as usize * d..(r as usize + 1) * d]);
    }
    Array2::from_shape_vec((rows.len(), d), v).expect("rows × dim values")
}

/// Which of a customer's past items count for [`CrossSellModel::for_each_history_for_ease`]:
/// those bought in more than `count` orders, and the first `ties` (by index) bought in exactly
/// `count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HistoryCut {
    count: f32,
    ties: u32,
}

impl HistoryCut {
    /// The cut of every customer's history row (each row's [`HISTORY_EASE_ITEMS`] most bought).
    pub(crate) fn of_rows(history: &Csr) -> Vec<HistoryCut> {
        (0..history.n_rows())
            .into_par_iter()
            .map_init(Vec::new, |buf: &mut Vec<f32>, c| {
                let vals = history.row(c).1;
                if vals.len() <= HISTORY_EASE_ITEMS {
                    return HistoryCut { count: f32::NEG_INFINITY, ties: 0 };
                }
                buf.clear();
                buf.extend_from_slice(vals);
                let count = *buf.select_nth_unstable_by(HISTORY_EASE_ITEMS - 1, |a, b| b.total_cmp(a)).1;
                let above = vals.iter().filter(|&&h| h > count).count();
                HistoryCut { count, ties: (HISTORY_EASE_ITEMS - above) as u32 }
            })
            .collect()
    }

    /// Calls `f(i, h)` for the entries of a history row (`cols`, `vals`) this cut keeps, in
    /// row order.
    pub(crate) fn for_each(self, cols: &[ItemIx], vals: &[f32], mut f: impl FnMut(ItemIx, f32)) {
        let mut ties = self.ties;
        for (&i, &h) in cols.iter().zip(vals) {
            if h > self.count {
                f(i, h);
            } else if h == self.count && ties > 0 {
                ties -= 1;
                f(i, h);
            }
        }
    }
}
