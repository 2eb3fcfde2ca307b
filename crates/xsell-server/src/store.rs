//! The served model: an atomically swapped snapshot, reloaded when `latest` names another
//! version.
//!
//! Reloads are keyed on the directory name `latest` holds (not on the manifest's own version
//! field, which a copied bundle may not match), so each version is loaded once. A refused
//! version is remembered with a fingerprint of its files (sizes and modification times) and
//! tried again only when that fingerprint changes, e.g. when the writer finishes repairing it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use xsell_model::{Bundle, BundleError};

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `latest` still names the served version (or a refused version whose files did not change).
    Unchanged,
    /// A new version is now served.
    Loaded(String),
    /// The new version was refused; the old one (if any) keeps serving.
    Refused {
        /// The refused version (empty when `latest` itself could not be read).
        version: String,
        /// Why.
        reason: String,
    },
}

/// The served bundle and when its files were written.
#[derive(Debug)]
pub struct Served {
    /// The bundle.
    pub bundle: Bundle,
    /// The directory name `latest` named when it was loaded.
    pub key: String,
    /// When its manifest was written (for the model-age metric).
    pub written: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Refused {
    key: String,
    fingerprint: Vec<(u64, Option<SystemTime>)>,
}

/// Holds the served bundle, if one is loaded yet.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    current: RwLock<Option<Arc<Served>>>,
    refused: Mutex<Option<Refused>>,
}

impl ModelStore {
    /// Loads the latest bundle under `dir` (`models/<name>`).
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let store = ModelStore::empty(dir);
        let key = xsell_model::latest_version(dir)?;
        let served = load(dir, &key)?;
        *store.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(served));
        Ok(store)
    }

    /// A store with no model yet; [`ModelStore::reload`] loads one when `latest` appears.
    pub fn empty(dir: &Path) -> Self {
        ModelStore { dir: dir.to_path_buf(), current: RwLock::new(None), refused: Mutex::new(None) }
    }

    /// `models/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model serving now, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the bundle `latest` names if it is not the one served; a broken one is refused with a
    /// logged reason and the old model keeps serving.
    pub fn reload(&self) -> ReloadOutcome {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let key = match xsell_model::latest_version(&self.dir) {
            Ok(v) => v,
            Err(e) => {
                let reason = e.to_string();
                if refused.as_ref().is_none_or(|r| !r.key.is_empty()) {
                    tracing::warn!(%reason, "cannot read the latest pointer; keeping the current model");
                    *refused = Some(Refused::default());
                }
                return ReloadOutcome::Refused { version: String::new(), reason };
            }
        };
        let serving = self.current();
        if serving.as_ref().is_some_and(|s| s.key == key) {
            *refused = None;
            return ReloadOutcome::Unchanged;
        }
        let print = fingerprint(&self.dir.join(&key));
        if refused.as_ref().is_some_and(|r| r.key == key && r.fingerprint == print) {
            return ReloadOutcome::Unchanged;
        }
        let from = serving.as_ref().map(|s| s.bundle.manifest.version.clone()).unwrap_or_default();
        match load(&self.dir, &key) {
            Ok(served) => {
                tracing::info!(from = %from, to = %key, items = served.bundle.manifest.n_items, "model loaded");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(served));
                *refused = None;
                ReloadOutcome::Loaded(key)
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(version = %key, %reason, serving = %from, "refused a broken model bundle; the old model keeps serving");
                *refused = Some(Refused { key: key.clone(), fingerprint: print });
                ReloadOutcome::Refused { version: key, reason }
            }
        }
    }
}

fn load(dir: &Path, key: &str) -> Result<Served, BundleError> {
    let path = dir.join(key);
    let bundle = xsell_model::load(&path)?;
    let written = std::fs::metadata(path.join("manifest.json")).and_then(|m| m.modified()).ok();
    Ok(Served { bundle, key: key.to_owned(), written })
}

/// Sizes and modification times of a bundle directory's files, in name order.
fn fingerprint(path: &Path) -> Vec<(u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(path).into_iter().flatten().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.iter().filter_map(|e| e.metadata().ok()).map(|m| (m.len(), m.modified().ok())).collect()
}
