//! Errors of the core crate: only caller mistakes, since the core does no IO.

/// A caller error detected by the core.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The order log holds no usable purchase.
    #[error(
        "the order log has no purchase lines left after cleaning (returns, negative quantities and lines without order or item are dropped)"
    )]
    EmptyLog,
    /// A request or parameter is out of its valid range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which parameter or field.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid configuration key '{key}': {reason}")]
    Config {
        /// The dotted key, e.g. `policies.checkout.min_probability`.
        key: String,
        /// What was expected.
        reason: String,
    },
    /// Arrays of a model do not agree with each other.
    #[error("inconsistent model: {0}")]
    Inconsistent(String),
}

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
