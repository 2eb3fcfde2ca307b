//! The trainer: fits a cross-sell model from an order log.
//!
//! Pipeline ([`train`]):
//! 1. split the training orders by time: the newest `validation_fraction` fit the ranker;
//! 2. the aggregate pass ([`xsell_core::Aggregates`]) over the older orders;
//! 3. item embeddings, skip-gram with negative sampling over the co-purchase pairs, in burn
//!    ([`embed`]);
//! 4. the ranker: a linear scorer over the core's features, fitted in burn with a sampled-softmax
//!    loss on queries drawn from the validation orders ([`ranker`]), then Platt calibration on a
//!    held-out part of them;
//! 5. refit of the aggregates and embeddings on *all* training orders, keeping the ranker.
//!
//! **Invariant:** this is the only crate that uses burn. Its output is plain
//! [`xsell_core::model::ModelParts`]; nothing downstream needs burn to load or serve a model.

pub mod config;
pub mod ease;
pub mod embed;
pub mod error;
mod pipeline;
pub mod progress;
pub mod ranker;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use pipeline::{Fitted, PhaseTime, TrainReport, ValidationMetrics, train};
pub use progress::{NoProgress, Progress};
