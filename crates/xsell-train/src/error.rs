//! Trainer errors.

/// Why training failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A hyperparameter is out of range.
    #[error("invalid hyperparameter {name}: {reason}")]
    Config {
        /// The hyperparameter.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// Too little data to train.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// The core refused the parts (a bug if it happens).
    #[error(transparent)]
    Core(#[from] xsell_core::Error),
    /// A numeric step outside burn failed (linfa's k-means).
    #[error("{0}")]
    Numeric(String),
    /// The aggregate pass failed where it runs (a query engine).
    #[error("{0}")]
    Counts(String),
    /// burn failed to hand back a tensor.
    #[error("tensor read-back failed: {0}")]
    Tensor(String),
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
