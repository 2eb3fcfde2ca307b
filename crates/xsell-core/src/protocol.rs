//! The offline evaluation protocol of `PROTOCOL.md`, steps 3 and 4: the global time split and
//! the drawing of one held-out target per eligible test basket.

use std::cmp::Ordering;

use rand::seq::{IndexedRandom, index::sample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{ItemIx, OrderLog, numpy_rng};

/// Protocol settings, reported with every evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    /// Share of the newest orders held out as the test period.
    pub test_fraction: f64,
    /// Seed of the query generator.
    pub seed: u64,
    /// At most this many queries (uniform sample, kept in time order).
    pub max_queries: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self { test_fraction: 0.10, seed: 42, max_queries: 20_000 }
    }
}

/// Orders of a log, split by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Indices into `OrderLog::orders` of the training period, oldest first.
    pub train: Vec<usize>,
    /// Indices of the test period, oldest first.
    pub test: Vec<usize>,
    /// Time of the first test order, when the log has time: return signals at or after it
    /// belong to the test period.
    pub cutoff_ts: Option<i64>,
}

/// One held-out query: the customer, the rest of the basket, and the item to find.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// External customer id, if known.
    pub customer_id: Option<String>,
    /// External ids of the remaining basket items.
    pub basket: Vec<String>,
    /// External id of the held-out item.
    pub target: String,
}

/// Orders sorted by (time, order id) as the protocol prescribes: ids compare as integers when
/// every id is an integer; orders without time come first.
pub fn chronological(log: &OrderLog) -> Vec<usize> {
    let numeric: Option<Vec<i128>> = log.orders.iter().map(|o| o.id.trim().parse::<i128>().ok()).collect();
    let mut idx: Vec<usize> = (0..log.orders.len()).collect();
    let by_id = |a: usize, b: usize| -> Ordering {
        match &numeric {
            Some(n) => n[a].cmp(&n[b]),
            None => log.orders[a].id.cmp(&log.orders[b].id),
        }
    };
    idx.sort_by(|&a, &b| {
        let (ta, tb) = (log.orders[a].ts, log.orders[b].ts);
        // `None < Some(_)`: orders without a time sort first.
        let t = if log.has_time { ta.cmp(&tb) } else { Ordering::Equal };
        t.then_with(|| by_id(a, b))
    });
    idx
}

/// Step 3: the newest `ceil(test_fraction × orders)` orders are the test period.
pub fn time_split(log: &OrderLog, test_fraction: f64) -> Split {
    let order = chronological(log);
    let n_test = ((test_fraction * order.len() as f64).ceil() as usize).min(order.len());
    let train = order[..order.len() - n_test].to_vec();
    let test = order[order.len() - n_test..].to_vec();
    let cutoff_ts = test.first().and_then(|&o| log.orders[o].ts);
    Split { train, test, cutoff_ts }
}

/// Step 4: one uniformly drawn target per eligible test order (≥ 2 items, all seen in
/// training), capped by a uniform sample kept in time order.
pub fn draw_queries(log: &OrderLog, split: &Split, cfg: &ProtocolConfig) -> Vec<Query> {
    let mut in_train = vec![false; log.catalog.len()];
    for &o in &split.train {
        for &i in &log.orders[o].items {
            in_train[i as usize] = true;
        }
    }
    let eligible: Vec<usize> = split
        .test
        .iter()
        .copied()
        .filter(|&o| {
            let items = &log.orders[o].items;
            items.len() >= 2 && items.iter().all(|&i| in_train[i as usize])
        })
        .collect();
    // NumPy's stream, so that a Python script drawing `basket[int(rng.random() * len(basket))]`
    // over the same baskets (items in first-seen line order) gets the very same queries.
    let mut rng = numpy_rng::default_rng(cfg.seed);
    let targets: Vec<usize> = eligible.iter().map(|&o| numpy_rng::index(&mut rng, log.orders[o].items.len())).collect();
    let mut keep: Vec<usize> = if eligible.len() > cfg.max_queries {
        sample(&mut rng, eligible.len(), cfg.max_queries).into_vec()
    } else {
        (0..eligible.len()).collect()
    };
    keep.sort_unstable();
    keep.into_iter()
        .map(|k| {
            let order = &log.orders[eligible[k]];
            let t = targets[k];
            let basket: Vec<String> =
                order.items.iter().enumerate().filter(|&(p, _)| p != t).map(|(_, &i)| log.catalog.ids[i as usize].clone()).collect();
            Query {
                customer_id: order.customer.map(|c| log.customers[c as usize].clone()),
                basket,
                target: log.catalog.ids[order.items[t] as usize].clone(),
            }
        })
        .collect()
}

/// Draws `n` (at most) queries from the given orders the way [`draw_queries`] does, as item
/// indices: used by the trainer to fit the ranker on the newest training orders.
pub fn draw_index_queries(log: &OrderLog, orders: &[usize], seed: u64, n: usize) -> Vec<(usize, ItemIx)> {
    let eligible: Vec<usize> = orders.iter().copied().filter(|&o| log.orders[o].items.len() >= 2).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let chosen: Vec<usize> = if eligible.len() > n { eligible.choose_multiple(&mut rng, n).copied().collect() } else { eligible };
    chosen
        .into_iter()
        .map(|o| {
            let items = &log.orders[o].items;
            (o, items[rng.random_range(0..items.len())])
        })
        .collect()
}
