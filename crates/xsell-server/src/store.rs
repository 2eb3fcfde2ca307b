//! The served model: an atomically swapped snapshot, reloaded when `latest` changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use xsell_model::{Bundle, BundleError};

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `latest` still names the served version (or a version already refused).
    Unchanged,
    /// A new version is now served.
    Loaded(String),
    /// The new version was refused; the old one keeps serving.
    Refused {
        /// The refused version.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Holds the served bundle.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    current: RwLock<Arc<Bundle>>,
    refused: Mutex<Option<String>>,
}

impl ModelStore {
    /// Loads the latest bundle under `dir` (`models/<name>`).
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let bundle = xsell_model::load_latest(dir)?;
        Ok(ModelStore { dir: dir.to_path_buf(), current: RwLock::new(Arc::new(bundle)), refused: Mutex::new(None) })
    }

    /// The bundle serving now.
    pub fn current(&self) -> Arc<Bundle> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the bundle `latest` names if it is new; a broken one is refused with a logged
    /// reason and the old model keeps serving.
    pub fn reload(&self) -> ReloadOutcome {
        let version = match xsell_model::latest_version(&self.dir) {
            Ok(v) => v,
            Err(e) => {
                let reason = e.to_string();
                let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                if refused.as_deref() != Some("<latest>") {
                    tracing::warn!(%reason, "cannot read the latest pointer; keeping the current model");
                    *refused = Some("<latest>".into());
                }
                return ReloadOutcome::Refused { version: String::new(), reason };
            }
        };
        let serving = self.current().manifest.version.clone();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if version == serving || refused.as_deref() == Some(version.as_str()) {
            return ReloadOutcome::Unchanged;
        }
        match xsell_model::load(&self.dir.join(&version)) {
            Ok(bundle) => {
                tracing::info!(from = %serving, to = %version, items = bundle.manifest.n_items, "model reloaded");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bundle);
                *refused = None;
                ReloadOutcome::Loaded(version)
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(%version, %reason, serving = %serving, "refused a broken model bundle; the old model keeps serving");
                *refused = Some(version.clone());
                ReloadOutcome::Refused { version, reason }
            }
        }
    }
}
