//! Pure core of xsell: the cleaned order log, the aggregate pass, the served cross-sell model,
//! the offline evaluation protocol and its metrics.
//!
//! This crate is *not* an IO layer: it reads no files, opens no sockets, knows nothing of arrow,
//! parquet, burn or protobuf. Everything here is deterministic for a given seed, so the trainer,
//! the server and `xsell eval` all share one implementation of ranking and of the protocol.
#![warn(missing_docs)]

pub mod aggregate;
pub mod baseline;
pub mod csr;
pub mod error;
pub mod log;
pub mod metrics;
pub mod model;
pub mod names;
pub mod protocol;

pub use aggregate::Aggregates;
pub use csr::Csr;
pub use error::{Error, Result};
pub use log::{Catalog, LogBuilder, LogLine, Order, OrderLog, ReturnLine};
pub use model::{CrossSellModel, RankQuery, RankedItem, Ranking, Touchpoint};

/// Index of an item in a catalog (`Catalog::ids[ix]`).
pub type ItemIx = u32;
/// Index of a customer in a customer table.
pub type CustomerIx = u32;

#[cfg(test)]
mod tests;
