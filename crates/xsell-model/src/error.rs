//! Errors of bundle reading and writing.

use std::path::PathBuf;

/// Why a bundle could not be written or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// File system error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{}: bad manifest: {source}", path.display())]
    Manifest {
        /// The manifest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The bundle was written by an unknown format version.
    #[error("{}: format version {found} is not supported (this build reads versions {oldest} to {supported})", path.display())]
    Version {
        /// The bundle directory.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version this build reads (the one it writes).
        supported: u32,
        /// The oldest version this build reads.
        oldest: u32,
    },
    /// The bundle's ranker reads other feature columns than this build computes.
    #[error("{}: the bundle's ranker features [{found}] are not this build's [{expected}]; retrain the model with this build", path.display())]
    Features {
        /// The bundle directory.
        path: PathBuf,
        /// The bundle's feature names.
        found: String,
        /// This build's.
        expected: String,
    },
    /// The tensors file is malformed or lacks a tensor.
    #[error("{}: {reason}", path.display())]
    Tensors {
        /// The tensors file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A table could not be read or written.
    #[error(transparent)]
    Table(#[from] xsell_data::DataError),
    /// The parts do not agree with each other.
    #[error("{}: {source}", path.display())]
    Inconsistent {
        /// The bundle directory.
        path: PathBuf,
        /// What disagrees.
        #[source]
        source: xsell_core::Error,
    },
}

/// Result with [`BundleError`].
pub type Result<T, E = BundleError> = std::result::Result<T, E>;
