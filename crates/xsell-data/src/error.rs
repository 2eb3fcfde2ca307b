//! Errors of the data crate: every one names the file (and the column where one is at fault).

use std::path::PathBuf;

/// A problem reading or writing parquet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Nothing matched the input path or pattern.
    #[error("{spec}: no parquet file found (give a .parquet file, a directory of them, or a glob such as 'logs/*.parquet')")]
    NoInput {
        /// The path or pattern given.
        spec: String,
    },
    /// The column mapping reads two canonical columns from one file column.
    #[error("{reason}")]
    BadMapping {
        /// What is wrong with the column mapping.
        reason: String,
    },
    /// A glob pattern is malformed.
    #[error("{spec}: bad glob pattern: {reason}")]
    BadPattern {
        /// The pattern.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid parquet, or a batch could not be decoded.
    #[error("{}: not a readable parquet file: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A required column is absent.
    #[error("{}: missing required column '{column}' ({hint}); columns present: {available}", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column name looked for.
        column: String,
        /// What it is for and how to rename it.
        hint: String,
        /// The columns the file has.
        available: String,
    },
    /// A column has a type that cannot be read as what it stands for.
    #[error("{}: column '{column}' has type {found}, expected {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its arrow type.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A value could not be converted.
    #[error("{}: column '{column}': {reason}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// The log had lines but no purchase survived cleaning.
    #[error("{spec}: {source}")]
    Empty {
        /// The input.
        spec: String,
        /// The core's explanation.
        #[source]
        source: xsell_core::Error,
    },
    /// A table of a bundle is malformed.
    #[error("{}: {reason}", path.display())]
    BadTable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
