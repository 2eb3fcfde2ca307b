//! Pure core of xsell: the cleaned order log, the aggregate pass, the served cross-sell model,
//! the offline evaluation protocol and its metrics.
//!
//! This crate is *not* an IO layer: it reads no files, opens no sockets, knows nothing of arrow,
//! parquet, burn or protobuf. Everything here is deterministic for a given seed, so the trainer,
//! the server and `xsell eval` all share one implementation of ranking and of the protocol.
#![warn(missing_docs)]

pub mod aggregate;
pub mod baseline;
pub mod bundle;
pub mod csr;
pub mod error;
pub mod explain;
pub mod features;
mod ids;
pub mod log;
pub mod metrics;
pub mod model;
pub mod names;
pub mod numpy_rng;
pub mod policy;
pub mod protocol;
pub mod ranker;
pub mod retrieval;
pub mod tally;

pub use aggregate::Aggregates;
pub use csr::Csr;
pub use error::{Error, Result};
pub use log::{Catalog, LogBuilder, LogLine, Order, OrderLog, ReturnLine};
pub use model::{CrossSellModel, RankQuery, RankedItem, Ranking};
pub use policy::{Objective, Policies, RankPolicy, Suppression, Touchpoint, Withheld};
pub use tally::Tally;

/// Index of an item in a catalog (`Catalog::ids[ix]`).
pub type ItemIx = u32;
/// Index of a customer in a customer table.
pub type CustomerIx = u32;

/// The `k` indices of `0..n` with the highest `score` among those `keep` lets through, best
/// first (ties: the lower index first).
pub fn top_k(n: usize, k: usize, score: impl Fn(usize) -> f32, keep: impl Fn(usize) -> bool) -> Vec<usize> {
    let order = |a: &usize, b: &usize| score(*b).total_cmp(&score(*a)).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..n).filter(|&i| keep(i)).collect();
    if idx.len() > k {
        if k > 0 {
            idx.select_nth_unstable_by(k - 1, order);
        }
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

#[cfg(test)]
mod tests;
