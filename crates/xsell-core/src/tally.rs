//! Additive counts of a log, kept with a bundle so that a retrain can fold in new orders
//! instead of rescanning all of history (`xsell train --update`).
//!
//! [`Aggregates`] are not additive: co-purchase rows are cut to the strongest neighbours, the
//! Gram covers whichever items are most bought, and the recent period is a share of all orders.
//! A [`Tally`] keeps what those are derived from, uncut, in its own id space (the catalog and
//! customers it has seen):
//!
//! - per item: orders, orders that count toward pairs, return lines, price sum and lines;
//! - per customer: orders, purchase lines, return lines; per customer × item: orders and orders
//!   since the last one containing the item;
//! - every co-purchase pair's count (upper triangle);
//! - the newest orders' items, enough of them for the recent period of any longer log;
//! - the tracked pairs of higher-order EASE (chosen at the last full retrain) with their counts
//!   against every item and every tracked pair.
//!
//! **Invariant:** `Tally::compute(A ∪ B) == Tally::compute(A).merge(Tally::compute(B))` for a
//! log `B` strictly newer than `A` (a test checks it), and [`Tally::aggregates`] equals
//! [`Aggregates::compute`] over the same orders, so a model refitted on a merged tally is the
//! model a full retrain on the union refits.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::Array2;
use rayon::prelude::*;

use crate::aggregate::{AggregateConfig, gram_items, gram_pairs, strongest};
use crate::{Aggregates, Catalog, Csr, CustomerIx, ItemIx, OrderLog};

/// Additive counts of a set of orders (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Every item seen (also those only returned), with its price sums.
    pub catalog: Catalog,
    /// Every customer seen.
    pub customers: Vec<String>,
    /// Orders counted.
    pub n_orders: u64,
    /// Time of the oldest and of the newest order counted (epoch ms), when known.
    pub span: Option<(i64, i64)>,
    /// Orders containing each item.
    pub item_orders: Vec<f32>,
    /// Orders of at most `max_order_items` items containing each item (the Gram's diagonal).
    pub item_paired_orders: Vec<f32>,
    /// Return lines per item.
    pub item_returns: Vec<f32>,
    /// Orders per customer.
    pub customer_orders: Vec<f32>,
    /// Purchase lines per customer.
    pub customer_lines: Vec<f32>,
    /// Return lines per customer.
    pub customer_returns: Vec<f32>,
    /// `history[c, i]`: orders of customer `c` containing `i`.
    pub history: Arc<Csr>,
    /// `since[c, i]`: orders customer `c` placed after their last one containing `i`.
    pub since: Arc<Csr>,
    /// `pairs[i, j]` for `i < j`: orders (of at most `max_order_items` items) containing both.
    pub pairs: Csr,
    /// The items of the newest orders, oldest first: at least the recent period's share.
    pub recent: Vec<Vec<ItemIx>>,
    /// The pairs higher-order EASE may use, `(i, j)` item indices.
    pub tracked: Vec<(ItemIx, ItemIx)>,
    /// Per tracked pair: orders containing it and each item.
    pub tracked_items: Csr,
    /// Per tracked pair: orders containing it and each tracked pair.
    pub tracked_pairs: Array2<f32>,
    /// The pair rule the counts were made with ([`AggregateConfig::max_order_items`]).
    pub max_order_items: usize,
}

/// Which pairs a tally tracks for higher-order EASE.
#[derive(Debug, Clone, Copy)]
pub enum Track<'a> {
    /// The most co-bought pairs of the Gram items, as [`Aggregates::compute`] selects them
    /// (`AggregateConfig::gram_items` and `gram_pairs`).
    Strongest,
    /// These item pairs (indices into the log's catalog): an update counts the pairs of the
    /// tally it is folded into.
    Given(&'a [(ItemIx, ItemIx)]),
}

/// What makes two tallies impossible to merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The newer orders do not all come after the older ones.
    #[error(
        "the new orders start at {newer_first} (epoch ms), not after the newest order already counted ({older_last}); an update only adds orders newer than the model's"
    )]
    NotNewer {
        /// The newest order time already counted.
        older_last: i64,
        /// The oldest new order time.
        newer_first: i64,
    },
    /// Without order times, "newer" cannot be checked.
    #[error("an update needs order times (the ts column) in both the model's orders and the new ones")]
    NoTime,
    /// The two were counted with different pair rules.
    #[error("the counts were made with max_order_items {older} and {newer}; an update keeps the model's setting")]
    PairRule {
        /// The older tally's rule.
        older: usize,
        /// The newer tally's rule.
        newer: usize,
    },
}

impl Tally {
    /// Counts `orders` (indices into `log.orders`, oldest first) and every return signal of
    /// `log`, keeping the items of the newest `keep_recent` orders (the recent period's share of
    /// `orders` when `None`).
    pub fn compute(log: &OrderLog, orders: &[usize], cfg: &AggregateConfig, keep_recent: Option<usize>, track: Track<'_>) -> Self {
        let n_items = log.catalog.len();
        let n_cust = log.customers.len();
        let mut t = Tally {
            catalog: log.catalog.clone(),
            customers: log.customers.clone(),
            n_orders: orders.len() as u64,
            item_orders: vec![0.0; n_items],
            item_paired_orders: vec![0.0; n_items],
            item_returns: vec![0.0; n_items],
            customer_orders: vec![0.0; n_cust],
            customer_lines: vec![0.0; n_cust],
            customer_returns: vec![0.0; n_cust],
            max_order_items: cfg.max_order_items,
            ..Default::default()
        };
        let times: Vec<i64> = orders.iter().filter_map(|&o| log.orders[o].ts).collect();
        t.span = (log.has_time && !times.is_empty()).then(|| (*times.iter().min().unwrap_or(&0), *times.iter().max().unwrap_or(&0)));
        let keep = keep_recent.unwrap_or_else(|| recent_len(orders.len(), cfg.recent_fraction)).min(orders.len());
        t.recent = orders[orders.len() - keep..].iter().map(|&o| log.orders[o].items.clone()).collect();
        let mut by_item: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        let mut hist: Vec<HashMap<ItemIx, (f32, f32)>> = vec![HashMap::new(); n_cust];
        for (k, &o) in orders.iter().enumerate() {
            let order = &log.orders[o];
            let paired = order.items.len() <= cfg.max_order_items;
            for &i in &order.items {
                t.item_orders[i as usize] += 1.0;
                if paired {
                    t.item_paired_orders[i as usize] += 1.0;
                    by_item[i as usize].push(k as u32);
                }
            }
            if let Some(c) = order.customer {
                let c = c as usize;
                let ordinal = t.customer_orders[c];
                t.customer_orders[c] += 1.0;
                t.customer_lines[c] += order.items.len() as f32;
                for &i in &order.items {
                    let e = hist[c].entry(i).or_default();
                    *e = (e.0 + 1.0, ordinal);
                }
            }
        }
        for r in &log.returns {
            t.item_returns[r.item as usize] += 1.0;
            if let Some(c) = r.customer {
                t.customer_returns[c as usize] += 1.0;
            }
        }
        t.history = Arc::new(Csr::from_rows(hist.iter().map(|h| h.iter().map(|(&i, &(n, _))| (i, n)).collect::<Vec<_>>())));
        t.since = Arc::new(Csr::from_rows(
            hist.iter().zip(&t.customer_orders).map(|(h, &n)| h.iter().map(|(&i, &(_, last))| (i, n - 1.0 - last)).collect()),
        ));
        let items_of = |k: u32| &log.orders[orders[k as usize]].items;
        t.pairs = Csr::from_rows(
            (0..n_items)
                .into_par_iter()
                .map_init(
                    || vec![0f32; n_items],
                    |acc, i| {
                        let mut touched = Vec::new();
                        for &k in &by_item[i] {
                            for &j in items_of(k).iter().filter(|&&j| j as usize > i) {
                                if acc[j as usize] == 0.0 {
                                    touched.push(j);
                                }
                                acc[j as usize] += 1.0;
                            }
                        }
                        touched.iter().map(|&j| (j, std::mem::take(&mut acc[j as usize]))).collect::<Vec<_>>()
                    },
                )
                .collect::<Vec<_>>(),
        );
        t.tracked = match track {
            Track::Strongest => t.strongest_pairs(cfg),
            Track::Given(p) => p.to_vec(),
        };
        (t.tracked_items, t.tracked_pairs) = count_tracked(&t.tracked, &by_item, n_items, items_of);
        t
    }

    /// The pairs [`Track::Strongest`] tracks: the most co-bought pairs of the Gram items, as
    /// [`Aggregates::compute`] selects them from these counts.
    pub fn strongest_pairs(&self, cfg: &AggregateConfig) -> Vec<(ItemIx, ItemIx)> {
        let (items, gram) = self.gram(cfg.gram_items);
        if items.len() < 2 {
            return Vec::new();
        }
        gram_pairs(&gram, cfg.gram_pairs).into_iter().map(|(a, b)| (items[a as usize], items[b as usize])).collect()
    }

    /// The `k` most-bought items and their Gram (diagonal: orders that count toward pairs).
    fn gram(&self, k: usize) -> (Vec<ItemIx>, Array2<f32>) {
        let items = gram_items(&self.item_orders, k);
        let m = items.len();
        let mut gram = Array2::<f32>::zeros((m, m));
        for (a, &i) in items.iter().enumerate() {
            gram[[a, a]] = self.item_paired_orders[i as usize];
            for (b, &j) in items.iter().enumerate().skip(a + 1) {
                let (lo, hi) = if i < j { (i, j) } else { (j, i) };
                let v = self.pairs.get(lo as usize, hi);
                (gram[[a, b]], gram[[b, a]]) = (v, v);
            }
        }
        (items, gram)
    }

    /// The aggregates of the counted orders, in the tally's index space (its catalog and
    /// customers): exactly what [`Aggregates::compute`] gives over the same orders with no
    /// return cutoff, the higher-order pairs drawn from the tracked ones.
    pub fn aggregates(&self, cfg: &AggregateConfig) -> Aggregates {
        let n_items = self.catalog.len();
        let n_recent = recent_len(self.n_orders as usize, cfg.recent_fraction).min(self.recent.len());
        let mut item_recent_orders = vec![0f32; n_items];
        for order in &self.recent[self.recent.len() - n_recent..] {
            for &i in order {
                item_recent_orders[i as usize] += 1.0;
            }
        }
        // each item's full row: its upper row and its column (the lower half, transposed once)
        let lower = transpose(&self.pairs, n_items);
        let pairs = Csr::from_rows(
            (0..n_items)
                .into_par_iter()
                .map(|i| {
                    let ((uc, uv), (lc, lv)) = (self.pairs.row(i), lower.row(i));
                    let row = lc.iter().chain(uc).copied().zip(lv.iter().chain(uv).copied()).collect();
                    strongest(row, cfg.max_neighbours)
                })
                .collect::<Vec<_>>(),
        );
        let (gram_items, gram) = self.gram(cfg.gram_items);
        let m = gram_items.len();
        let mut pos = HashMap::new();
        for (a, &i) in gram_items.iter().enumerate() {
            pos.insert(i, a as u32);
        }
        // the tracked pairs among the Gram items, as Gram positions, most co-bought first
        // (ties by position), as `gram_pairs` orders them
        let mut chosen: Vec<(u32, u32, usize)> = self
            .tracked
            .iter()
            .enumerate()
            .filter_map(|(t, (i, j))| {
                let (a, b) = (*pos.get(i)?, *pos.get(j)?);
                let (a, b) = if a < b { (a, b) } else { (b, a) };
                (gram[[a as usize, b as usize]] >= 2.0).then_some((a, b, t))
            })
            .collect();
        let key = |&(a, b, _): &(u32, u32, usize)| a as usize * m + b as usize;
        chosen.sort_by(|x, y| gram[[y.0 as usize, y.1 as usize]].total_cmp(&gram[[x.0 as usize, x.1 as usize]]).then(key(x).cmp(&key(y))));
        chosen.truncate(if m < 2 { 0 } else { cfg.gram_pairs });
        let p = chosen.len();
        let mut pair_gram = Array2::<f32>::zeros((p, m + p));
        for (r, &(_, _, t)) in chosen.iter().enumerate() {
            for (a, &i) in gram_items.iter().enumerate() {
                pair_gram[[r, a]] = self.tracked_items.get(t, i);
            }
            for (q, &(_, _, u)) in chosen.iter().enumerate() {
                pair_gram[[r, m + q]] = self.tracked_pairs[[t, u]];
            }
        }
        Aggregates {
            n_orders: self.n_orders,
            item_orders: self.item_orders.clone(),
            n_recent: n_recent as u64,
            item_recent_orders,
            item_returns: self.item_returns.clone(),
            pairs,
            history: Arc::clone(&self.history),
            since: Arc::clone(&self.since),
            customer_orders: self.customer_orders.clone(),
            customer_lines: self.customer_lines.clone(),
            customer_returns: self.customer_returns.clone(),
            gram_items,
            gram,
            gram_pairs: chosen.iter().map(|&(a, b, _)| (a, b)).collect(),
            pair_gram,
        }
    }

    /// The catalog and customers as a log without orders: the index space of
    /// [`Tally::aggregates`].
    pub fn as_log(&self) -> OrderLog {
        OrderLog { catalog: self.catalog.clone(), customers: self.customers.clone(), has_time: self.span.is_some(), ..Default::default() }
    }

    /// The tracked pairs as indices of `log`'s catalog (pairs with an item `log` lacks are left
    /// out: it holds no order with them), for counting `log` with [`Track::Given`].
    pub fn tracked_in(&self, log: &OrderLog) -> Vec<(ItemIx, ItemIx)> {
        let ix: HashMap<&str, ItemIx> = log.catalog.ids.iter().enumerate().map(|(k, s)| (s.as_str(), k as ItemIx)).collect();
        let id = |i: ItemIx| ix.get(self.catalog.ids[i as usize].as_str()).copied();
        self.tracked.iter().filter_map(|&(i, j)| Some((id(i)?, id(j)?))).collect()
    }

    /// Folds in the counts of strictly newer orders (`newer` counted with
    /// [`Track::Given`]`(self.tracked_in(log))` and every order kept as recent), keeping the
    /// recent orders the merged period needs.
    pub fn merge(mut self, newer: &Tally, cfg: &AggregateConfig) -> Result<Tally, MergeError> {
        if self.max_order_items != newer.max_order_items {
            return Err(MergeError::PairRule { older: self.max_order_items, newer: newer.max_order_items });
        }
        let (Some((first, older_last)), Some((new_first, new_last))) = (self.span, newer.span) else {
            return Err(MergeError::NoTime);
        };
        if new_first <= older_last {
            return Err(MergeError::NotNewer { older_last, newer_first: new_first });
        }
        self.span = Some((first, new_last));
        // the newer tally's items and customers in the merged index space (new ones appended,
        // attributes of known ones as a reader of the union would keep them)
        self.catalog.price_sums.resize(self.catalog.len(), (0.0, 0));
        let mut item_ix: HashMap<String, ItemIx> = self.catalog.ids.iter().enumerate().map(|(k, s)| (s.clone(), k as ItemIx)).collect();
        let items: Vec<ItemIx> = (0..newer.catalog.len())
            .map(|k| {
                let id = &newer.catalog.ids[k];
                let ix = *item_ix.entry(id.clone()).or_insert_with(|| {
                    self.catalog.ids.push(id.clone());
                    self.catalog.names.push(None);
                    self.catalog.categories.push(None);
                    self.catalog.prices.push(f32::NAN);
                    self.catalog.price_sums.push((0.0, 0));
                    (self.catalog.ids.len() - 1) as ItemIx
                });
                let x = ix as usize;
                if self.catalog.names[x].is_none() {
                    self.catalog.names[x] = newer.catalog.names[k].clone();
                }
                if self.catalog.categories[x].is_none() {
                    self.catalog.categories[x] = newer.catalog.categories[k].clone();
                }
                let (s, n) = newer.catalog.price_sums.get(k).copied().unwrap_or((0.0, 0));
                let e = &mut self.catalog.price_sums[x];
                (e.0, e.1) = (e.0 + s, e.1 + n);
                self.catalog.prices[x] = if e.1 > 0 { (e.0 / f64::from(e.1)) as f32 } else { f32::NAN };
                ix
            })
            .collect();
        let mut cust_ix: HashMap<String, CustomerIx> =
            self.customers.iter().enumerate().map(|(k, s)| (s.clone(), k as CustomerIx)).collect();
        let custs: Vec<CustomerIx> = newer
            .customers
            .iter()
            .map(|id| {
                *cust_ix.entry(id.clone()).or_insert_with(|| {
                    self.customers.push(id.clone());
                    (self.customers.len() - 1) as CustomerIx
                })
            })
            .collect();
        let (n_items, n_cust) = (self.catalog.len(), self.customers.len());
        for v in [&mut self.item_orders, &mut self.item_paired_orders, &mut self.item_returns] {
            v.resize(n_items, 0.0);
        }
        for v in [&mut self.customer_orders, &mut self.customer_lines, &mut self.customer_returns] {
            v.resize(n_cust, 0.0);
        }
        for (k, &i) in items.iter().enumerate() {
            let i = i as usize;
            self.item_orders[i] += newer.item_orders[k];
            self.item_paired_orders[i] += newer.item_paired_orders[k];
            self.item_returns[i] += newer.item_returns[k];
        }
        let mut history = rows_of(&self.history, n_cust);
        let mut since = rows_of(&self.since, n_cust);
        // a customer's older items: the new orders all come after their last one
        for (k, &c) in custs.iter().enumerate() {
            let c = c as usize;
            let added = newer.customer_orders[k];
            for e in &mut since[c] {
                e.1 += added;
            }
            let (cols, vals) = newer.history.row(k);
            let (_, last) = newer.since.row(k);
            for ((&j, &n), &s) in cols.iter().zip(vals).zip(last) {
                let j = items[j as usize];
                history[c].push((j, n));
                match since[c].iter_mut().find(|e| e.0 == j) {
                    Some(e) => e.1 = s,
                    None => since[c].push((j, s)),
                }
            }
            self.customer_orders[c] += added;
            self.customer_lines[c] += newer.customer_lines[k];
            self.customer_returns[c] += newer.customer_returns[k];
        }
        self.history = Arc::new(Csr::from_rows(history.into_iter().map(summed)));
        self.since = Arc::new(Csr::from_rows(since));
        let mut pairs = rows_of(&self.pairs, n_items);
        for k in 0..newer.pairs.n_rows() {
            let (cols, vals) = newer.pairs.row(k);
            for (&j, &v) in cols.iter().zip(vals) {
                let (a, b) = (items[k], items[j as usize]);
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                pairs[lo as usize].push((hi, v));
            }
        }
        self.pairs = Csr::from_rows(pairs.into_iter().map(summed));
        self.n_orders += newer.n_orders;
        self.recent.extend(newer.recent.iter().map(|o| o.iter().map(|&i| items[i as usize]).collect()));
        let keep = recent_len(self.n_orders as usize, cfg.recent_fraction).min(self.recent.len());
        self.recent.drain(..self.recent.len() - keep);
        // the newer tally tracks (a subset of) this one's pairs, in its own index space
        let slot: HashMap<(ItemIx, ItemIx), usize> = self.tracked.iter().enumerate().map(|(t, &p)| (p, t)).collect();
        let slots: Vec<Option<usize>> =
            newer.tracked.iter().map(|&(i, j)| slot.get(&(items[i as usize], items[j as usize])).copied()).collect();
        let mut tracked_items = rows_of(&self.tracked_items, self.tracked.len());
        for (u, s) in slots.iter().enumerate() {
            let Some(t) = *s else { continue };
            let (cols, vals) = newer.tracked_items.row(u);
            tracked_items[t].extend(cols.iter().zip(vals).map(|(&j, &v)| (items[j as usize], v)));
            for (w, s2) in slots.iter().enumerate() {
                if let Some(t2) = *s2 {
                    self.tracked_pairs[[t, t2]] += newer.tracked_pairs[[u, w]];
                }
            }
        }
        self.tracked_items = Csr::from_rows(tracked_items.into_iter().map(summed));
        Ok(self)
    }
}

/// The transpose of `csr` (`n` columns), rows sorted by column.
fn transpose(csr: &Csr, n: usize) -> Csr {
    let mut indptr = vec![0u32; n + 1];
    for &c in &csr.indices {
        indptr[c as usize + 1] += 1;
    }
    for k in 0..n {
        indptr[k + 1] += indptr[k];
    }
    let mut next = indptr.clone();
    let (mut indices, mut values) = (vec![0u32; csr.indices.len()], vec![0f32; csr.values.len()]);
    for r in 0..csr.n_rows() {
        let (cols, vals) = csr.row(r);
        for (&c, &v) in cols.iter().zip(vals) {
            let at = next[c as usize] as usize;
            (indices[at], values[at]) = (r as u32, v);
            next[c as usize] += 1;
        }
    }
    Csr { indptr, indices, values }
}

/// Orders in the recent period of `n` orders.
fn recent_len(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).min(n)
}

/// The rows of `csr` as vectors, padded to `n` rows.
fn rows_of(csr: &Csr, n: usize) -> Vec<Vec<(u32, f32)>> {
    (0..n)
        .map(|r| {
            let (cols, vals) = csr.row(r);
            cols.iter().copied().zip(vals.iter().copied()).collect()
        })
        .collect()
}

/// A row with repeated columns summed.
fn summed(mut row: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    row.sort_unstable_by_key(|e| e.0);
    row.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 += next.1;
        }
        same
    });
    row
}

/// Per tracked pair, the orders holding it (the two items' order lists intersected) counted
/// against every item and every tracked pair.
fn count_tracked<'a>(
    tracked: &[(ItemIx, ItemIx)],
    by_item: &[Vec<u32>],
    n_items: usize,
    items_of: impl Fn(u32) -> &'a Vec<ItemIx> + Sync,
) -> (Csr, Array2<f32>) {
    let holding: Vec<Vec<u32>> =
        tracked.par_iter().map(|&(i, j)| crate::aggregate::intersect(&by_item[i as usize], &by_item[j as usize])).collect();
    let mut of_order: HashMap<u32, Vec<u32>> = HashMap::new();
    for (t, ks) in holding.iter().enumerate() {
        for &k in ks {
            of_order.entry(k).or_default().push(t as u32);
        }
    }
    let p = tracked.len();
    let mut tracked_pairs = Array2::<f32>::zeros((p, p));
    let rows: Vec<Vec<(u32, f32)>> = holding
        .par_iter()
        .map_init(
            || vec![0f32; n_items],
            |acc, ks| {
                let mut touched = Vec::new();
                for &k in ks {
                    for &j in items_of(k) {
                        if acc[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        acc[j as usize] += 1.0;
                    }
                }
                touched.iter().map(|&j| (j, std::mem::take(&mut acc[j as usize]))).collect()
            },
        )
        .collect();
    for (t, ks) in holding.iter().enumerate() {
        for k in ks {
            for &u in &of_order[k] {
                tracked_pairs[[t, u as usize]] += 1.0;
            }
        }
    }
    (Csr::from_rows(rows), tracked_pairs)
}
