//! The heavy pass over the log: per-item, per-pair and per-customer counts.
//!
//! **Boundary:** this is the only step that scans every order. Its output, [`Aggregates`], is
//! bounded by the catalog and customer counts (pairs are truncated to the strongest
//! `max_neighbours` per item), and everything downstream (embeddings, ranker fitting, serving)
//! reads only it plus a bounded sample of recent orders. Each table is a plain GROUP BY, so the
//! pass can move to a query engine (DataFusion in-process, a cluster engine for larger logs):
//! `item_orders` = `COUNT(DISTINCT order)` per item, `pairs` = self-join on order, and so on.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::{Csr, CustomerIx, ItemIx, OrderLog};

/// Settings of the aggregate pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregateConfig {
    /// Keep at most this many co-purchased items per item (strongest first).
    pub max_neighbours: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self { max_neighbours: 200 }
    }
}

/// Counts over a set of orders, in the index space of the log they came from.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    /// Orders counted.
    pub n_orders: u64,
    /// Orders containing each item.
    pub item_orders: Vec<f32>,
    /// Return lines per item.
    pub item_returns: Vec<f32>,
    /// `pairs[i, j]` = orders containing both `i` and `j` (strongest `max_neighbours` per row).
    pub pairs: Csr,
    /// `history[c, i]` = orders of customer `c` containing `i`.
    pub history: Csr,
    /// Orders per customer.
    pub customer_orders: Vec<f32>,
    /// Purchase lines per customer (distinct items per order, summed).
    pub customer_lines: Vec<f32>,
    /// Return lines per customer.
    pub customer_returns: Vec<f32>,
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
        let mut hist: Vec<HashMap<ItemIx, f32>> = vec![HashMap::new(); n_cust];
        for (k, &o) in orders.iter().enumerate() {
            let order = &log.orders[o];
            for &i in &order.items {
                item_orders[i as usize] += 1.0;
                by_item[i as usize].push(k as u32);
            }
            if let Some(c) = order.customer {
                let c = c as usize;
                customer_orders[c] += 1.0;
                customer_lines[c] += order.items.len() as f32;
                for &i in &order.items {
                    *hist[c].entry(i).or_default() += 1.0;
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
        let max_nb = cfg.max_neighbours;
        let rows: Vec<Vec<(u32, f32)>> = (0..n_items)
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
                    let mut row: Vec<(u32, f32)> = touched.iter().map(|&j| (j, acc[j as usize])).collect();
                    for &j in &touched {
                        acc[j as usize] = 0.0;
                    }
                    if row.len() > max_nb {
                        row.select_nth_unstable_by(max_nb, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                        row.truncate(max_nb);
                    }
                    row
                },
            )
            .collect();
        let history = Csr::from_rows(hist.into_iter().map(|h| h.into_iter().collect::<Vec<_>>()));
        Aggregates {
            n_orders: orders.len() as u64,
            item_orders,
            item_returns,
            pairs: Csr::from_rows(rows),
            history,
            customer_orders,
            customer_lines,
            customer_returns,
        }
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
