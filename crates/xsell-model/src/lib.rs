//! The model bundle: a versioned directory that the trainer writes and the server loads.
//!
//! ```text
//! models/<name>/
//!   latest                    # the current version's name, replaced atomically (written last)
//!   <version>/
//!     manifest.json           # format version, creation time, hyperparameters, input fingerprint,
//!                             # validation metrics, ranker weights and calibration
//!     tensors.safetensors     # emb_in, emb_out, pairs.{indptr,indices,values}, history.{…}
//!     catalog.parquet         # item_id, item_name, category, unit_price, orders, return_rate
//!     customers.parquet       # customer_id, orders, lines, return_rate
//!     aggregates/             # optional: the training orders' additive counts as parquet
//!                             # tables (xsell_data::tally), for `xsell train --update`
//! ```
//!
//! A bundle is written to a hidden temporary directory and renamed into place, so a reader never
//! sees half a bundle; `latest` is updated after the rename.
//!
//! **Invariant:** loading a bundle needs neither burn nor linfa; it checks every array against the
//! manifest and refuses a bundle that does not add up ([`BundleError`]).
#![warn(missing_docs)]

mod bundle;
mod error;
mod time;

pub use bundle::{
    AGGREGATES, Bundle, FORMAT_VERSION, InputInfo, Manifest, OLDEST_FORMAT_VERSION, check_writable, latest_version, load, load_latest,
    load_tally, remove_stale_temps, save, save_with_tally,
};
pub use error::{BundleError, Result};
pub use time::{now_rfc3339, now_version, rfc3339_of_ms};
