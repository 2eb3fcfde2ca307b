//! The heavy pass over the log: per-item, per-pair and per-customer counts.
//!
//! **Boundary:** this is the only step that scans every order. Its output, [`Aggregates`], is
//! bounded by the catalog and customer counts (pairs are truncated to the strongest
//! `max_neighbours` per item), and everything downstream (embeddings, ranker fitting, serving)
//! reads only it plus a bounded sample of recent orders. Each table is a plain GROUP BY, so the
//! pass can move to a query engine (DataFusion in-process, a cluster engine for larger logs):
//! `item_orders` = `COUNT(DISTINCT order)` per item, `pairs` = self-join on order, and so on.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{Array2, Axis, s};
use rayon::prelude::*;

use crate::{Csr, CustomerIx, ItemIx, OrderLog};

/// Settings of the aggregate pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregateConfig {
    /// Keep at most this many co-purchased items per item (strongest first).
    pub max_neighbours: usize,
    /// Build the full Gram matrix of this many most-bought items (0: none).
    pub gram_items: usize,
    /// Also count this many most co-bought pairs of Gram items as extra Gram columns, for
    /// higher-order EASE (0: none).
    pub gram_pairs: usize,
    /// The newest share of the orders counted again as the recent period (trends).
    pub recent_fraction: f64,
    /// Orders with more distinct items than this count toward item, customer and return
    /// statistics but not toward pair statistics (co-purchase pairs, the Gram, pair Gram rows):
    /// one order of k items holds k(k−1)/2 pairs, so a single huge order would dominate both the
    /// counts and the cost. To EASE such an order is an empty basket.
    pub max_order_items: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self { max_neighbours: 200, gram_items: 0, gram_pairs: 0, recent_fraction: 0.1, max_order_items: 1000 }
    }
}

/// Counts over a set of orders, in the index space of the log they came from.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    /// Orders counted.
    pub n_orders: u64,
    /// Orders containing each item.
    pub item_orders: Vec<f32>,
    /// Orders of the recent period (the newest `recent_fraction` of the orders).
    pub n_recent: u64,
    /// Orders of the recent period containing each item.
    pub item_recent_orders: Vec<f32>,
    /// Return lines per item.
    pub item_returns: Vec<f32>,
    /// `pairs[i, j]` = orders containing both `i` and `j` (strongest `max_neighbours` per row).
    pub pairs: Csr,
    /// `history[c, i]` = orders of customer `c` containing `i` (shared with the [`crate::Tally`]
    /// it was derived from: customers × items is the largest table).
    pub history: Arc<Csr>,
    /// `since[c, i]` = orders customer `c` placed after their last one containing `i` (0: `i` is
    /// in their latest order); the same sparsity as `history`.
    pub since: Arc<Csr>,
    /// Orders per customer.
    pub customer_orders: Vec<f32>,
    /// Purchase lines per customer (distinct items per order, summed).
    pub customer_lines: Vec<f32>,
    /// Return lines per customer.
    pub customer_returns: Vec<f32>,
    /// The most-bought items (at most `gram_items`, most bought first; ties by index).
    pub gram_items: Vec<ItemIx>,
    /// `gram[a, b]` = orders containing both `gram_items[a]` and `gram_items[b]` (the diagonal:
    /// orders containing the item). Untruncated, unlike `pairs`; the trainer takes it out once
    /// EASE is fit (it is the largest table).
    pub gram: Array2<f32>,
    /// The most co-bought pairs of Gram items, as Gram positions `(a, b)` with `a < b`, most
    /// co-bought first (at most `gram_pairs`; only pairs bought together at least twice).
    pub gram_pairs: Vec<(u32, u32)>,
    /// The Gram rows of those pairs: `pair_gram[p, a]` = orders containing pair `p` and Gram
    /// item `a`; `pair_gram[p, m + q]` = orders containing pairs `p` and `q` (`m` Gram items).
    pub pair_gram: Array2<f32>,
}

impl Aggregates {
    /// Counts over `orders` (indices into `log.orders`) and the return signals before
    /// `cutoff_ts` (all of them when `None`).
    pub fn compute(log: &OrderLog, orders: &[usize], cutoff_ts: Option<i64>, cfg: &AggregateConfig) -> Self {
        let n_items = log.catalog.len();
        let n_cust = log.customers.len();
        let mut item_orders = vec![0f32; n_items];
        let mut by_item: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        let mut customer_orders = vec![0f32; n_cust];
        let mut customer_lines = vec![0f32; n_cust];
        let mut hist: Vec<HashMap<ItemIx, (f32, f32)>> = vec![HashMap::new(); n_cust];
        let n_recent = ((orders.len() as f64 * cfg.recent_fraction).ceil() as usize).min(orders.len());
        let recent_from = orders.len() - n_recent;
        let mut item_recent_orders = vec![0f32; n_items];
        for (k, &o) in orders.iter().enumerate() {
            let order = &log.orders[o];
            let paired = order.items.len() <= cfg.max_order_items;
            for &i in &order.items {
                item_orders[i as usize] += 1.0;
                if k >= recent_from {
                    item_recent_orders[i as usize] += 1.0;
                }
                if paired {
                    by_item[i as usize].push(k as u32);
                }
            }
            if let Some(c) = order.customer {
                let c = c as usize;
                let ordinal = customer_orders[c];
                customer_orders[c] += 1.0;
                customer_lines[c] += order.items.len() as f32;
                for &i in &order.items {
                    let e = hist[c].entry(i).or_default();
                    *e = (e.0 + 1.0, ordinal);
                }
            }
        }
        let mut item_returns = vec![0f32; n_items];
        let mut customer_returns = vec![0f32; n_cust];
        for r in log.returns.iter().filter(|r| match (cutoff_ts, r.ts) {
            (Some(cut), Some(ts)) => ts < cut,
            (Some(_), None) => false,
            (None, _) => true,
        }) {
            item_returns[r.item as usize] += 1.0;
            if let Some(c) = r.customer {
                customer_returns[c as usize] += 1.0;
            }
        }
        let gram_items = gram_items(&item_orders, cfg.gram_items);
        let mut gram_pos = vec![u32::MAX; n_items];
        for (a, &i) in gram_items.iter().enumerate() {
            gram_pos[i as usize] = a as u32;
        }
        let m = gram_items.len();
        let mut gram = Array2::<f32>::zeros((m, m));
        let max_nb = cfg.max_neighbours;
        let pair_rows: Vec<Vec<(u32, f32)>> = (0..n_items)
            .into_par_iter()
            .map_init(
                || vec![0f32; n_items],
                |acc, i| {
                    let mut touched: Vec<u32> = Vec::new();
                    for &k in &by_item[i] {
                        for &j in &log.orders[orders[k as usize]].items {
                            if j as usize != i {
                                if acc[j as usize] == 0.0 {
                                    touched.push(j);
                                }
                                acc[j as usize] += 1.0;
                            }
                        }
                    }
                    let row: Vec<(u32, f32)> = touched.iter().map(|&j| (j, acc[j as usize])).collect();
                    for &j in &touched {
                        acc[j as usize] = 0.0;
                    }
                    strongest(row, max_nb)
                },
            )
            .collect();
        // each Gram row straight into place
        gram.axis_iter_mut(Axis(0)).into_par_iter().zip(gram_items.par_iter()).for_each(|(mut d, &i)| {
            for &k in &by_item[i as usize] {
                count_gram_items(&mut d, &log.orders[orders[k as usize]].items, &gram_pos);
            }
        });
        let (gram_pairs, pair_gram) = pair_counts(log, orders, &by_item, &gram_items, &gram_pos, &gram, cfg.gram_pairs);
        let history = Csr::from_rows(hist.iter().map(|h| h.iter().map(|(&i, &(n, _))| (i, n)).collect::<Vec<_>>()));
        let since =
            Csr::from_rows(hist.iter().zip(&customer_orders).map(|(h, &n)| h.iter().map(|(&i, &(_, last))| (i, n - 1.0 - last)).collect()));
        Aggregates {
            n_orders: orders.len() as u64,
            item_orders,
            n_recent: n_recent as u64,
            item_recent_orders,
            item_returns,
            pairs: Csr::from_rows(pair_rows),
            history: Arc::new(history),
            since: Arc::new(since),
            customer_orders,
            customer_lines,
            customer_returns,
            gram_items,
            gram,
            gram_pairs,
            pair_gram,
        }
    }

    /// The Gram of EASE's inputs, `(m + 1 + P)` square: the items, then the always-on input
    /// (a column of ones: its row is each input's order count, and the order count on its
    /// diagonal), then the selected pairs.
    pub fn extended_gram(&self) -> Array2<f32> {
        let m = self.gram.nrows();
        let n = m + 1 + self.pair_gram.nrows();
        let mut g = Array2::<f32>::zeros((n, n));
        g.slice_mut(s![..m, ..m]).assign(&self.gram);
        g.slice_mut(s![m + 1.., ..m]).assign(&self.pair_gram.slice(s![.., ..m]));
        g.slice_mut(s![..m, m + 1..]).assign(&self.pair_gram.slice(s![.., ..m]).t());
        g.slice_mut(s![m + 1.., m + 1..]).assign(&self.pair_gram.slice(s![.., m..]));
        for k in (0..n).filter(|&k| k != m) {
            (g[[m, k]], g[[k, m]]) = (g[[k, k]], g[[k, k]]);
        }
        g[[m, m]] = self.n_orders as f32;
        g
    }

    /// Returned lines per sold line of an item (capped at 1).
    pub fn item_return_rate(&self, i: ItemIx) -> f32 {
        (self.item_returns[i as usize] / self.item_orders[i as usize].max(1.0)).min(1.0)
    }

    /// Returned lines per purchase line of a customer (capped at 1).
    pub fn customer_return_rate(&self, c: CustomerIx) -> f32 {
        (self.customer_returns[c as usize] / self.customer_lines[c as usize].max(1.0)).min(1.0)
    }
}

/// The `k` strongest entries of a co-purchase row (ties by index), in no particular order.
pub fn strongest(mut row: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    if row.len() > k {
        row.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        row.truncate(k);
    }
    row
}

/// The Gram's items: the `k` most-bought items (bought at least once; ties by index), most
/// bought first.
pub fn gram_items(item_orders: &[f32], k: usize) -> Vec<ItemIx> {
    let mut items: Vec<ItemIx> = (0..item_orders.len() as ItemIx).filter(|&i| item_orders[i as usize] > 0.0).collect();
    items.sort_by(|&a, &b| item_orders[b as usize].total_cmp(&item_orders[a as usize]).then(a.cmp(&b)));
    items.truncate(k);
    items
}

/// The `max_pairs` most co-bought pairs of Gram items, as Gram positions `(a, b)` with `a < b`
/// (bought together at least twice; ties by position), most co-bought first.
pub fn gram_pairs(gram: &Array2<f32>, max_pairs: usize) -> Vec<(u32, u32)> {
    let m = gram.nrows();
    // pair (a, b) is entry a·m + b of the Gram, so ties go to the lower positions
    crate::top_k(m * m, max_pairs, |e| gram[[e / m, e % m]], |e| e / m < e % m && gram[[e / m, e % m]] >= 2.0)
        .into_iter()
        .map(|e| ((e / m) as u32, (e % m) as u32))
        .collect()
}

/// Adds one order's Gram items (`gram_pos` of each item, `u32::MAX` when not covered) to a
/// Gram row.
fn count_gram_items(row: &mut ndarray::ArrayViewMut1<'_, f32>, items: &[ItemIx], gram_pos: &[u32]) {
    for &j in items {
        let a = gram_pos[j as usize];
        if a != u32::MAX {
            row[a as usize] += 1.0;
        }
    }
}

/// Selects the `max_pairs` most co-bought pairs of Gram items (bought together at least twice;
/// ties by position) and counts their Gram rows: per pair, the orders containing it and each
/// Gram item, and each selected pair. A three- and four-way self-join on order, bounded by
/// `max_pairs × (m + max_pairs)`.
fn pair_counts(
    log: &OrderLog,
    orders: &[usize],
    by_item: &[Vec<u32>],
    gram_items: &[ItemIx],
    gram_pos: &[u32],
    gram: &Array2<f32>,
    max_pairs: usize,
) -> (Vec<(u32, u32)>, Array2<f32>) {
    let m = gram_items.len();
    if max_pairs == 0 || m < 2 {
        return (Vec::new(), Array2::zeros((0, m)));
    }
    let pairs = gram_pairs(gram, max_pairs);
    let n_pairs = pairs.len();
    // orders (positions in `orders`) holding each pair: the two items' order lists (ascending,
    // an order's items are distinct) intersected
    let pair_orders: Vec<Vec<u32>> = pairs
        .par_iter()
        .map(|&(a, b)| intersect(&by_item[gram_items[a as usize] as usize], &by_item[gram_items[b as usize] as usize]))
        .collect();
    let mut order_pairs: HashMap<u32, Vec<u32>> = HashMap::new();
    for (p, ks) in pair_orders.iter().enumerate() {
        for &k in ks {
            order_pairs.entry(k).or_default().push(p as u32);
        }
    }
    let mut pair_gram = Array2::<f32>::zeros((n_pairs, m + n_pairs));
    pair_gram.axis_iter_mut(Axis(0)).into_par_iter().zip(pair_orders.par_iter()).for_each(|(mut row, ks)| {
        for &k in ks {
            count_gram_items(&mut row, &log.orders[orders[k as usize]].items, gram_pos);
            for &q in &order_pairs[&k] {
                row[m + q as usize] += 1.0;
            }
        }
    });
    (pairs, pair_gram)
}

/// The common entries of two ascending lists.
pub(crate) fn intersect(x: &[u32], y: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut both) = (0, 0, Vec::new());
    while i < x.len() && j < y.len() {
        match x[i].cmp(&y[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both.push(x[i]);
                i += 1;
                j += 1;
            }
        }
    }
    both
}
