//! Writing and loading bundles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use xsell_core::model::{ModelParts, PairWeights, Ranker};
use xsell_core::retrieval::{Neighbours, Retrieval};
use xsell_core::{CrossSellModel, Csr, Tally};
use xsell_data::tables;

use crate::{BundleError, Result};

/// The bundle format this build writes and reads.
pub const FORMAT_VERSION: u32 = 6;

/// The oldest bundle format this build still loads: version 2 bundles predate higher-order EASE
/// and load without pair weights, versions 2 and 3 predate EASE's intercept and load without it,
/// versions 2 to 4 predate the stored embedding neighbour lists, which are computed at load
/// (a server upgraded in place keeps serving them), versions 2 to 5 predate latent categories
/// and load without them.
pub const OLDEST_FORMAT_VERSION: u32 = 2;

const MANIFEST: &str = "manifest.json";
const TENSORS: &str = "tensors.safetensors";
const CATALOG: &str = "catalog.parquet";
const CUSTOMERS: &str = "customers.parquet";
const LATEST: &str = "latest";
/// The directory of a bundle's additive counts ([`xsell_data::tally`]), when it has them.
pub const AGGREGATES: &str = "aggregates";

/// What the model was trained on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// The input path or pattern.
    pub source: String,
    /// sha256 over the input files' bytes (in path order).
    pub sha256: String,
    /// Raw lines read.
    pub lines: u64,
    /// Purchase orders used for training.
    pub orders: u64,
}

/// The manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bundle format version.
    pub format_version: u32,
    /// Model name (the parent directory).
    pub name: String,
    /// Version (the bundle directory), set by [`save`].
    pub version: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Version of the xsell build that wrote it.
    pub xsell_version: String,
    /// Training hyperparameters, as the trainer reports them.
    pub hyperparameters: serde_json::Value,
    /// Input fingerprint.
    pub input: InputInfo,
    /// Validation metrics measured by the trainer.
    pub metrics: serde_json::Value,
    /// Ranker feature names, in column order.
    pub features: Vec<String>,
    /// Ranker weights and calibration.
    pub ranker: Ranker,
    /// The discovery ranker, when training kept one.
    #[serde(default)]
    pub discovery_ranker: Option<Ranker>,
    /// Items in the catalog.
    pub n_items: usize,
    /// Customers in the customer table.
    pub n_customers: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Training orders.
    pub n_orders: f32,
    /// Recent training orders (the trend window).
    #[serde(default)]
    pub n_recent: f32,
    /// Candidate generation settings (the defaults for bundles before format 5).
    #[serde(default)]
    pub retrieval: Retrieval,
    /// Whether substitutes are judged within latent categories.
    #[serde(default)]
    pub latent_substitutes: bool,
}

impl Manifest {
    /// A manifest for a new bundle; the shape fields, the ranker and the version are filled in
    /// from the parts by [`save`].
    pub fn new(name: &str, input: InputInfo, hyperparameters: serde_json::Value, metrics: serde_json::Value) -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            name: name.into(),
            version: String::new(),
            created_at: crate::now_rfc3339(),
            xsell_version: env!("CARGO_PKG_VERSION").into(),
            hyperparameters,
            input,
            metrics,
            features: Vec::new(),
            ranker: Ranker::single(0),
            discovery_ranker: None,
            n_items: 0,
            n_customers: 0,
            dim: 0,
            n_orders: 0.0,
            n_recent: 0.0,
            retrieval: Retrieval::default(),
            latent_substitutes: false,
        }
    }
}

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its manifest.
    pub manifest: Manifest,
    /// The model, ready to rank.
    pub model: CrossSellModel,
    /// Where it was loaded from.
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian 4-byte words of a tensor's bytes, decoded.
fn words<T>(b: &[u8], decode: fn([u8; 4]) -> T) -> Vec<T> {
    b.chunks_exact(4).map(|c| decode([c[0], c[1], c[2], c[3]])).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a bundle under `dir` (`models/<name>`) and points `latest` at it.
/// `manifest.version` is replaced by a fresh, unique version; the bundle's path is returned.
pub fn save(dir: &Path, manifest: Manifest, parts: &ModelParts) -> Result<PathBuf> {
    save_with(dir, manifest, parts, None, &mut sync)
}

/// [`save`], with the additive counts of the training orders written as parquet tables under
/// the bundle's `aggregates/` (what `xsell train --update` folds new orders into).
pub fn save_with_tally(dir: &Path, manifest: Manifest, parts: &ModelParts, tally: Option<&Tally>) -> Result<PathBuf> {
    save_with(dir, manifest, parts, tally, &mut sync)
}

/// The additive counts stored with the bundle at `path` (None: it was saved without them).
pub fn load_tally(path: &Path) -> Result<Option<Tally>> {
    let dir = path.join(AGGREGATES);
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(Some(xsell_data::tally::read_tally(&dir)?))
}

/// [`save`] with the fsync step given, so a test can see what is made durable and when.
fn save_with(
    dir: &Path,
    mut manifest: Manifest,
    parts: &ModelParts,
    tally: Option<&Tally>,
    sync: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    remove_stale_temps(dir);
    let mut version = crate::now_version();
    let mut n = 1;
    while dir.join(&version).exists() {
        n += 1;
        version = format!("{}-{n}", crate::now_version());
    }
    manifest.version = version.clone();
    manifest.format_version = FORMAT_VERSION;
    manifest.n_items = parts.items.ids.len();
    manifest.n_customers = parts.customers.ids.len();
    manifest.dim = parts.emb_in.ncols();
    manifest.n_orders = parts.n_orders;
    manifest.n_recent = parts.n_recent;
    manifest.ranker = parts.ranker.clone();
    manifest.discovery_ranker = parts.discovery_ranker.clone();
    manifest.retrieval = parts.retrieval;
    manifest.latent_substitutes = parts.latent_substitutes;
    manifest.features = xsell_core::model::FEATURES.iter().map(|s| s.to_string()).collect();

    let tmp = dir.join(format!(".tmp-{version}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut write = || -> Result<()> {
        let manifest_path = tmp.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| BundleError::Manifest { path: manifest_path.clone(), source })?;
        std::fs::write(&manifest_path, json).map_err(io(&manifest_path))?;
        write_tensors(&tmp.join(TENSORS), parts)?;
        tables::write_catalog(&tmp.join(CATALOG), &parts.items)?;
        tables::write_customers(&tmp.join(CUSTOMERS), &parts.customers, &parts.customer_lines)?;
        // durable before published: every file and the directory reach the disk before the
        // renames that make them visible, so a power loss cannot publish an empty bundle
        for f in [MANIFEST, TENSORS, CATALOG, CUSTOMERS] {
            sync(&tmp.join(f))?;
        }
        if let Some(t) = tally {
            let agg = tmp.join(AGGREGATES);
            xsell_data::tally::write_tally(&agg, t)?;
            for e in std::fs::read_dir(&agg).map_err(io(&agg))? {
                sync(&e.map_err(io(&agg))?.path())?;
            }
            sync(&agg)?;
        }
        sync(&tmp)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let final_dir = dir.join(&version);
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    sync(dir)?;
    let latest_tmp = dir.join(format!(".{LATEST}.tmp-{}", std::process::id()));
    std::fs::write(&latest_tmp, format!("{version}\n")).map_err(io(&latest_tmp))?;
    sync(&latest_tmp)?;
    std::fs::rename(&latest_tmp, dir.join(LATEST)).map_err(io(dir))?;
    sync(dir)?;
    Ok(final_dir)
}

/// fsync of a file or directory.
fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// Whether a process of this id is alive (Linux `/proc`; elsewhere every writer counts as
/// alive, so nothing of another writer is removed).
fn alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what writers that died left behind: `.tmp-<version>-<pid>` directories and
/// `.latest.tmp-<pid>` files whose pid is not a live process (never this process's own).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = if let Some(rest) = name.strip_prefix(".tmp-") {
            rest.rsplit('-').next()
        } else {
            name.strip_prefix(&format!(".{LATEST}.tmp-"))
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed what a dead writer left behind"),
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot remove a dead writer's temporary files"),
        }
    }
}

/// Checks, before any training, that a bundle can be written under `dir` (creating it), so a
/// long training does not end in a permission error.
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(io(dir))?;
    std::fs::remove_file(&probe).map_err(io(&probe))
}

fn write_tensors(path: &Path, parts: &ModelParts) -> Result<()> {
    let bad = |reason: String| BundleError::Tensors { path: path.to_path_buf(), reason };
    let (n, d) = parts.emb_in.dim();
    let emb_in = f32_bytes(&parts.emb_in.iter().copied().collect::<Vec<_>>());
    let emb_out = f32_bytes(&parts.emb_out.iter().copied().collect::<Vec<_>>());
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        vec![("emb_in".into(), Dtype::F32, vec![n, d], emb_in), ("emb_out".into(), Dtype::F32, vec![n, d], emb_out)];
    let ep = &parts.ease_pairs;
    let pair_items: Vec<u32> = ep.pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    owned.push(("ease_pairs".into(), Dtype::U32, vec![ep.pairs.len(), 2], u32_bytes(&pair_items)));
    let always_on = &parts.ease_always_on;
    owned.push(("ease_always_on".into(), Dtype::F32, vec![always_on.len()], f32_bytes(always_on)));
    let latent = &parts.latent_categories;
    owned.push(("latent_categories".into(), Dtype::U32, vec![latent.len()], u32_bytes(latent)));
    let csrs = [
        ("pairs", &parts.pairs),
        ("history", &parts.history),
        ("since", &parts.since),
        ("ease", &parts.ease),
        ("ease_pair_weights", &ep.weights),
        ("neighbours_comp", &parts.neighbours.comp),
        ("neighbours_similar", &parts.neighbours.similar),
    ];
    for (name, csr) in csrs {
        owned.push((format!("{name}.indptr"), Dtype::U32, vec![csr.indptr.len()], u32_bytes(&csr.indptr)));
        owned.push((format!("{name}.indices"), Dtype::U32, vec![csr.indices.len()], u32_bytes(&csr.indices)));
        owned.push((format!("{name}.values"), Dtype::F32, vec![csr.values.len()], f32_bytes(&csr.values)));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| TensorView::new(*dtype, shape.clone(), data).map(|v| (name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let meta = HashMap::from([("format".to_string(), "xsell".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| bad(e.to_string()))
}

/// The version `latest` points at, under `dir` (`models/<name>`).
pub fn latest_version(dir: &Path) -> Result<String> {
    let p = dir.join(LATEST);
    let v = std::fs::read_to_string(&p).map_err(io(&p))?;
    let v = v.trim();
    if v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') {
        return Err(BundleError::Io { path: p, source: std::io::Error::new(std::io::ErrorKind::InvalidData, "does not name a version") });
    }
    Ok(v.to_owned())
}

/// Loads the bundle `latest` points at, under `dir` (`models/<name>`).
pub fn load_latest(dir: &Path) -> Result<Bundle> {
    load(&dir.join(latest_version(dir)?))
}

/// Loads and validates one bundle directory.
pub fn load(path: &Path) -> Result<Bundle> {
    let manifest_path = path.join(MANIFEST);
    let raw = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let probe: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|source| BundleError::Manifest { path: manifest_path.clone(), source })?;
    let found = probe.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
        return Err(BundleError::Version { path: path.into(), found, supported: FORMAT_VERSION, oldest: OLDEST_FORMAT_VERSION });
    }
    let manifest: Manifest = serde_json::from_value(probe).map_err(|source| BundleError::Manifest { path: manifest_path, source })?;
    // the ranker's weights are positional: a bundle whose feature columns are not this build's,
    // in this order, would be scored wrongly without any error
    let ours: Vec<&str> = xsell_core::model::FEATURES.to_vec();
    if manifest.features.iter().map(String::as_str).ne(ours.iter().copied()) {
        return Err(BundleError::Features { path: path.into(), found: manifest.features.join(", "), expected: ours.join(", ") });
    }
    // The catalog and customer tables (parquet) are decoded on a second thread while this one
    // copies the tensors: a cold load waits for the disk, and the two overlap.
    let (tables, parts) = std::thread::scope(|scope| {
        let tables = scope.spawn(|| -> Result<_> {
            let items = tables::read_catalog(&path.join(CATALOG))?;
            let (customers, customer_lines) = tables::read_customers(&path.join(CUSTOMERS))?;
            Ok((items, customers, customer_lines))
        });
        let tensors = load_tensors(path, found);
        let tables = tables.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (tables, tensors)
    });
    let (items, customers, customer_lines) = tables?;
    let parts = parts?;
    if items.ids.len() != manifest.n_items || customers.ids.len() != manifest.n_customers {
        return Err(BundleError::Inconsistent {
            path: path.into(),
            source: xsell_core::Error::Inconsistent(format!(
                "tables hold {} items and {} customers, the manifest says {} and {}",
                items.ids.len(),
                customers.ids.len(),
                manifest.n_items,
                manifest.n_customers
            )),
        });
    }
    let parts = ModelParts {
        items,
        customers,
        customer_lines,
        pairs: parts.pairs,
        history: Arc::new(parts.history),
        since: Arc::new(parts.since),
        ease: parts.ease,
        ease_pairs: parts.ease_pairs,
        ease_always_on: parts.ease_always_on,
        emb_in: parts.emb_in,
        emb_out: parts.emb_out,
        n_orders: manifest.n_orders,
        n_recent: manifest.n_recent,
        ranker: manifest.ranker.clone(),
        discovery_ranker: manifest.discovery_ranker.clone(),
        neighbours: parts.neighbours,
        retrieval: manifest.retrieval,
        latent_categories: parts.latent_categories,
        latent_substitutes: manifest.latent_substitutes,
    };
    let model = CrossSellModel::new(parts).map_err(|source| BundleError::Inconsistent { path: path.into(), source })?;
    Ok(Bundle { manifest, model, path: path.into() })
}

/// The model parts a bundle's tensors file holds.
struct Tensors {
    pairs: Csr,
    history: Csr,
    since: Csr,
    ease: Csr,
    ease_pairs: PairWeights,
    ease_always_on: Vec<f32>,
    emb_in: Array2<f32>,
    emb_out: Array2<f32>,
    neighbours: Neighbours,
    latent_categories: Vec<u32>,
}

/// Reads the tensors file of the bundle at `path` (format `found`).
fn load_tensors(path: &Path, found: u32) -> Result<Tensors> {
    let tensors_path = path.join(TENSORS);
    let file = std::fs::File::open(&tensors_path).map_err(io(&tensors_path))?;
    // Mapped, not read: each tensor is copied once, from the page cache into its table, and the
    // file's bytes never sit in the heap beside the tables (a 1M-item bundle would hold them
    // twice). SAFETY: a published bundle is never written again (a new version is a new
    // directory, `latest` switches last, see `save`), so the mapping does not change under
    // this read; it is dropped before `load` returns.
    #[allow(unsafe_code)]
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&tensors_path))?;
    // Every byte is read once, front to back in large part: ask the kernel to read the whole
    // file ahead now, in large requests, rather than a page fault's small window at a time
    // (from a cold disk this is most of a large bundle's load). Advice only: a refusal is harmless.
    #[cfg(unix)]
    let _ = bytes.advise(memmap2::Advice::WillNeed);
    let bad = |reason: String| BundleError::Tensors { path: tensors_path.clone(), reason };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let get = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, &[u8])> {
        let t = st.tensor(name).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        if t.dtype() != dtype {
            return Err(bad(format!("tensor '{name}' has dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        Ok((t.shape().to_vec(), t.data()))
    };
    let f32s = |name: &str| get(name, Dtype::F32).map(|(s, b)| (s, words(b, f32::from_le_bytes)));
    let u32s_shaped = |name: &str| get(name, Dtype::U32).map(|(s, b)| (s, words(b, u32::from_le_bytes)));
    let u32s = |name: &str| u32s_shaped(name).map(|(_, v)| v);
    let ease_pairs = || -> Result<Vec<(u32, u32)>> {
        let (shape, v) = u32s_shaped("ease_pairs")?;
        match shape[..] {
            [_, 2] => Ok(v.chunks_exact(2).map(|c| (c[0], c[1])).collect()),
            _ => Err(bad(format!("tensor 'ease_pairs' has shape {shape:?}, expected [pairs, 2]"))),
        }
    };
    let matrix = |name: &str| -> Result<Array2<f32>> {
        let (shape, v) = f32s(name)?;
        match shape[..] {
            [r, c] => Array2::from_shape_vec((r, c), v).map_err(|e| bad(format!("tensor '{name}': {e}"))),
            _ => Err(bad(format!("tensor '{name}' has shape {shape:?}, expected 2 dimensions"))),
        }
    };
    let csr = |name: &str| -> Result<Csr> {
        Ok(Csr {
            indptr: u32s(&format!("{name}.indptr"))?,
            indices: u32s(&format!("{name}.indices"))?,
            values: f32s(&format!("{name}.values"))?.1,
        })
    };
    Ok(Tensors {
        pairs: csr("pairs")?,
        history: csr("history")?,
        since: csr("since")?,
        ease: csr("ease")?,
        ease_pairs: if found >= 3 {
            PairWeights { pairs: ease_pairs()?, weights: csr("ease_pair_weights")? }
        } else {
            PairWeights::default()
        },
        ease_always_on: if found >= 4 { f32s("ease_always_on")?.1 } else { Vec::new() },
        emb_in: matrix("emb_in")?,
        emb_out: matrix("emb_out")?,
        neighbours: if found >= 5 {
            Neighbours { comp: csr("neighbours_comp")?, similar: csr("neighbours_similar")? }
        } else {
            Neighbours::default()
        },
        latent_categories: if found >= 6 { u32s("latent_categories")? } else { Vec::new() },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn dead_writers_temporaries_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // pid_max on Linux is at most 2²², so this writer cannot be alive
        let dead = d.join(".tmp-20260101T000000Z-4194305");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("manifest.json"), b"{}").unwrap();
        std::fs::write(d.join(".latest.tmp-4194306"), b"x").unwrap();
        let mine = d.join(format!(".tmp-20260101T000000Z-{}", std::process::id()));
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(d.join("keep.txt"), b"").unwrap();
        super::remove_stale_temps(d);
        assert!(!dead.exists() && !d.join(".latest.tmp-4194306").exists());
        assert!(mine.exists() && d.join("keep.txt").exists(), "a live writer's and other files stay");
    }

    #[test]
    fn every_file_and_directory_is_fsynced_before_it_is_published() {
        use std::path::{Path, PathBuf};
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/format-4");
        let b = super::load_latest(&fixture).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("m");
        let mut synced: Vec<(PathBuf, bool)> = Vec::new();
        let latest = models.join(super::LATEST);
        let mut record = |p: &Path| {
            // what `latest` names when the sync happens: a file synced before publication is
            // synced while `latest` does not name its bundle yet
            synced.push((p.to_path_buf(), latest.exists()));
            super::sync(p)
        };
        let path = super::save_with(&models, b.manifest.clone(), b.model.parts(), None, &mut record).unwrap();
        let names: Vec<String> = synced.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for f in [super::MANIFEST, super::TENSORS, super::CATALOG, super::CUSTOMERS] {
            let k = names.iter().position(|n| n == f).unwrap_or_else(|| panic!("{f} is never fsynced: {names:?}"));
            assert!(!synced[k].1, "{f} was synced after publication");
        }
        assert!(synced.iter().any(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-")), "the bundle directory");
        assert!(synced.iter().any(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with(".latest.tmp-")), "the new pointer");
        assert_eq!(synced.last().unwrap().0, models, "the models directory, after the last rename");
        assert!(super::load(&path).is_ok());
    }

    #[test]
    fn an_unwritable_models_directory_is_found_before_training() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("models");
        std::fs::write(&file, b"a file, not a directory").unwrap();
        assert!(super::check_writable(&file.join("default")).unwrap_err().to_string().contains("models"));
        super::check_writable(&dir.path().join("ok/default")).unwrap();
    }
}
