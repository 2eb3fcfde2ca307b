//! The trainer: fits a cross-sell model from an order log.
//!
//! Pipeline ([`train`]):
//! 1. split the training orders by time: the newest `validation_fraction` fit the ranker;
//! 2. the aggregate pass ([`xsell_core::Aggregates`]) over the older orders;
//! 3. item embeddings, skip-gram with negative sampling over the co-purchase pairs, in burn
//!    ([`embed`]);
//! 4. EASE, the closed-form item-item regression on the Gram of the most-bought items, λ chosen
//!    on the validation queries ([`ease`]);
//! 5. the rankers: a linear and a hidden-layer scorer over the core's features, fitted in burn
//!    with a softmax loss on queries drawn from the validation orders ([`ranker`]); on a held-out
//!    part of them EASE alone and the two compete, simplest first, and the kept one is
//!    Platt-calibrated (`ranking`);
//! 6. latent categories for catalogs without categories: k-means (linfa) over the unit input
//!    embeddings ([`latent`]);
//! 7. refit of the aggregates, embeddings and EASE on *all* training orders, keeping the ranker.
//!
//! **Invariant:** this is the only crate that uses burn or linfa. Its output is plain
//! [`xsell_core::model::ModelParts`]; nothing downstream needs burn to load or serve a model.

pub mod config;
pub mod ease;
pub mod embed;
pub mod error;
pub mod latent;
pub mod peer;
mod pipeline;
pub mod progress;
pub mod ranker;
mod ranking;

pub use config::{TrainConfig, ValidTrainConfig};
pub use error::{Result, TrainError};
pub use peer::EasePeer;
pub use pipeline::{
    Choices, Counts, DiscoveryReport, Fitted, LatentSubstituteReport, LogCounts, PhaseTime, TrainInput, TrainReport, UpdateReport,
    ValidationMetrics, Warm, train, train_from, update,
};
pub use progress::{NoProgress, Progress};
