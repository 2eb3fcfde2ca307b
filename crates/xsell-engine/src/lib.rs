//! The aggregate pass on a query engine: DataFusion in process, out of core, or the same plans
//! on a Ballista cluster ([`Cluster`], with the `ballista` feature).
//!
//! [`Engine::open`] reads an order log (a file, a directory with hive partitions, or a glob, with
//! the same column renames and schema checks as `xsell_data::read_log`) through DataFusion and
//! materialises it once, cleaned and integer-coded, as parquet tables in a work directory
//! ([`tables`]): the catalog, the customers, the orders in protocol time order, each order's
//! distinct items, and the return lines. [`Engine::aggregates`] then computes
//! `xsell_core::Aggregates` over the oldest `n` orders with GROUP BY plans over those tables
//! ([`aggregate`]), and [`Engine::newest_orders`] loads a bounded sample of the newest orders
//! (the ranker's queries). Nothing holds the log in memory: the engine's operators work within
//! a memory pool of `memory_limit` bytes and spill sorts, aggregations and sort-merge joins to
//! the work directory (hash joins, which cannot spill in DataFusion 55, are turned off). During
//! each call the process's own resident memory is reserved in that pool (at most half of it),
//! so the limit bounds the process, not only the operators.
//!
//! What comes back to Rust is bounded by the catalog and the customers: item and customer
//! tables, the strongest `max_neighbours` co-purchases per item, the dense Gram of the
//! `gram_items` most-bought items, and customer × item history.
//!
//! **Index spaces.** Items and customers are numbered by their ids' byte order (the in-memory
//! reader numbers them in order of first appearance); orders are numbered in the protocol's
//! time order (`xsell_core::protocol::chronological`). Counts are the in-memory pass's exactly
//! (a test compares them); where the in-memory reader takes a line's first value (an order's
//! customer, an item's name or category), the engine takes the smallest.

mod aggregate;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryConsumer, MemoryReservation, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use xsell_core::{Catalog, OrderLog};

pub use datafusion;

/// What can go wrong on the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input could not be listed or has a bad schema (names file and column).
    #[error(transparent)]
    Data(#[from] xsell_data::DataError),
    /// The plan needs more memory than the limit allows, even with spilling.
    #[error(
        "the aggregate pass needs more memory than --memory-limit {limit} allows ({detail}); raise --memory-limit (or the engine's memory_limit)"
    )]
    MemoryLimit {
        /// The limit, human-readable.
        limit: String,
        /// DataFusion's account of what ran out.
        detail: String,
    },
    /// A setting is out of range.
    #[error("{setting}: {reason}")]
    BadSetting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The input holds no purchase.
    #[error("{spec}: no purchase line left after cleaning (every line lacks an order or item id, or is a return)")]
    Empty {
        /// The input.
        spec: String,
    },
    /// An id is longer than the serving limit.
    #[error("{spec}: column '{column}': an id is {len} bytes long; at most {max} are accepted (the serving limit)")]
    LongId {
        /// The input.
        spec: String,
        /// The canonical column.
        column: &'static str,
        /// The longest id's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The work directory could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Any other engine error.
    #[error("query engine ({what}): {source}")]
    Engine {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: Box<DataFusionError>,
    },
}

/// Result of engine calls.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Where the engine's plans run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cluster {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Ballista cluster, by its scheduler's URL (`df://host:port`). The input and the work
    /// directory must be on storage every executor reads and writes under the same path.
    Ballista(String),
    /// Ballista's standalone mode: a scheduler and an executor in this process.
    BallistaStandalone,
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cluster::Local => f.write_str("DataFusion in process"),
            Cluster::Ballista(url) => write!(f, "the Ballista cluster at {url}"),
            Cluster::BallistaStandalone => f.write_str("Ballista standalone (in process)"),
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bytes the engine's operators may hold before they spill (or fail, naming this limit).
    pub memory_limit: u64,
    /// Where the materialised tables and the spill files go (a fresh temporary directory
    /// inside it is used and removed); the system's temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// Partitions each plan runs in (0: the machine's cores).
    pub partitions: usize,
    /// Where the plans run.
    pub cluster: Cluster,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { memory_limit: default_memory_limit(), work_dir: None, partitions: 0, cluster: Cluster::Local }
    }
}

/// A quarter of the machine's memory (2 GiB when it cannot be read).
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).map(|kb| kb * 1024)
    });
    total.map_or(2 << 30, |t| t / 4)
}

/// Parses a size such as `1GB`, `512MiB`, `750M` or `1073741824` (bytes).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("'{text}' is not a size (e.g. 1GB, 512MiB, 1073741824)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        other => return Err(format!("'{text}': unknown unit '{other}' (use B, KB, MB, GB or TB)")),
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("'{text}' must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Formats bytes for messages.
pub fn format_size(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 { format!("{:.2} GiB", mib / 1024.0) } else { format!("{mib:.0} MiB") }
}

/// Totals of the materialised log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Raw lines read.
    pub lines: u64,
    /// Lines dropped for lacking an order or item id.
    pub dropped: u64,
    /// Purchase orders.
    pub orders: u64,
    /// Return lines.
    pub returns: u64,
    /// Whether any line has a time.
    pub has_time: bool,
}

/// The pool's name for the memory the process holds outside the engine during a pass.
const OUTSIDE_THE_ENGINE: &str = "held by the trainer outside the engine";

/// An order log opened on DataFusion: the materialised tables, the catalog and the customers.
pub struct Engine {
    runtime: tokio::runtime::Runtime,
    ctx: SessionContext,
    work: tempfile::TempDir,
    limit: u64,
    /// Whether the operators run in this process (and share its memory with the trainer).
    in_process: bool,
    /// Items of the log (index = position in id order).
    pub catalog: Catalog,
    /// Customers of the log (index = position in id order).
    pub customers: Vec<String>,
    /// Totals.
    pub counts: LogCounts,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("work", &self.work.path()).field("limit", &self.limit).field("counts", &self.counts).finish()
    }
}

impl Engine {
    /// Opens `spec` with `columns`, materialising its cleaned tables.
    pub fn open(spec: &str, columns: &xsell_data::ColumnMap, cfg: &EngineConfig) -> Result<Self> {
        columns.check().map_err(|reason| xsell_data::DataError::BadMapping { reason })?;
        if cfg.memory_limit < 16 << 20 {
            return Err(EngineError::BadSetting {
                setting: "memory limit (--memory-limit)",
                reason: format!("{} is too small; give at least 16 MiB", format_size(cfg.memory_limit)),
            });
        }
        let files = xsell_data::list_inputs(spec)?;
        // DataFusion decodes each file's embedded arrow schema: damaged ones are refused by name
        // first, as they would panic there
        let plans = files
            .iter()
            .map(|f| xsell_data::check_embedded_arrow_schema(f).and_then(|()| xsell_data::FilePlan::new(f, columns)))
            .collect::<xsell_data::Result<Vec<_>>>()?;
        let base = cfg.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let io = |source| EngineError::Io { path: base.clone(), source };
        std::fs::create_dir_all(&base).map_err(io)?;
        let work = tempfile::Builder::new().prefix("xsell-engine-").tempdir_in(&base).map_err(io)?;
        let partitions = if cfg.partitions > 0 { cfg.partitions } else { std::thread::available_parallelism().map_or(2, |n| n.get()) };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(partitions)
            .thread_name("xsell-engine")
            .enable_all()
            .build()
            .map_err(|source| EngineError::Io { path: work.path().into(), source })?;
        let pool = TrackConsumersPool::new(FairSpillPool::new(cfg.memory_limit as usize), std::num::NonZeroUsize::new(3).expect("3 > 0"));
        let spill = work.path().join("spill");
        std::fs::create_dir_all(&spill).map_err(|source| EngineError::Io { path: spill.clone(), source })?;
        let env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill])))
            .build_arc()
            .map_err(|e| engine("runtime", e))?;
        let config = session_config(&cfg.cluster, partitions)
            .with_target_partitions(partitions)
            .with_batch_size(8192)
            // hash joins cannot spill in DataFusion 55; sort-merge joins can
            .set_bool("datafusion.optimizer.prefer_hash_join", false)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true);
        let state = SessionStateBuilder::new().with_config(config).with_runtime_env(env).with_default_features().build();
        let ctx = runtime.block_on(context(&cfg.cluster, state))?;
        let mut engine = Engine {
            runtime,
            ctx,
            work,
            limit: cfg.memory_limit,
            in_process: !matches!(cfg.cluster, Cluster::Ballista(_)),
            catalog: Catalog::default(),
            customers: Vec::new(),
            counts: LogCounts::default(),
        };
        engine.block(tables::materialise(&engine.ctx, engine.work.path(), &plans), "reading the log")?;
        engine.counts = engine.block(tables::counts(&engine.ctx), "counting")?;
        if engine.counts.orders == 0 {
            return Err(EngineError::Empty { spec: spec.into() });
        }
        let (catalog, customers) = engine.block(tables::catalog(&engine.ctx), "reading the catalog")?;
        let max = xsell_core::model::limits::MAX_ID_LEN;
        let long_order = engine.block(tables::longest_order_id(&engine.ctx), "checking ids")?;
        for (column, len) in [
            ("item_id", catalog.ids.iter().map(String::len).max().unwrap_or(0)),
            ("customer_id", customers.iter().map(String::len).max().unwrap_or(0)),
            ("order_id", long_order),
        ] {
            if len > max {
                return Err(EngineError::LongId { spec: spec.into(), column, len, max });
            }
        }
        (engine.catalog, engine.customers) = (catalog, customers);
        tracing::info!(
            files = files.len(),
            lines = engine.counts.lines,
            orders = engine.counts.orders,
            items = engine.catalog.len(),
            customers = engine.customers.len(),
            returns = engine.counts.returns,
            "order log materialised by the engine"
        );
        Ok(engine)
    }

    /// Orders (purchase orders), in time order.
    pub fn n_orders(&self) -> usize {
        self.counts.orders as usize
    }

    /// The aggregates over the oldest `n` orders; return lines count when before `cutoff_ts`
    /// (all of them when `None`), as `Aggregates::compute` counts them.
    pub fn aggregates(
        &self,
        n: usize,
        cutoff_ts: Option<i64>,
        cfg: &xsell_core::aggregate::AggregateConfig,
    ) -> Result<xsell_core::Aggregates> {
        let shape = aggregate::Shape { items: self.catalog.len(), customers: self.customers.len() };
        self.block(aggregate::compute(&self.ctx, self.work.path(), shape, n.min(self.n_orders()), cutoff_ts, cfg), "the aggregate pass")
    }

    /// The additive counts of every order and every return line (`xsell_core::Tally`, kept
    /// with a bundle for `xsell train --update`), tracking the higher-order pairs `cfg` selects:
    /// what `Tally::compute` counts over the same log, in this engine's index space. Its
    /// uncut pair counts come back to memory (one entry per distinct co-purchased pair).
    pub fn tally(&self, cfg: &xsell_core::aggregate::AggregateConfig) -> Result<xsell_core::Tally> {
        let space = (&self.catalog, self.customers.as_slice());
        self.block(aggregate::tally(&self.ctx, self.work.path(), space, self.n_orders(), self.counts.has_time, cfg), "counting the tally")
    }

    /// The orders at positions `from..` of the time order (at most `max` of the newest), as an
    /// `OrderLog` sharing this engine's catalog and customers; `log.orders[k]` is the order at
    /// position `from.max(n − max) + k`. Returns also that first position.
    pub fn newest_orders(&self, from: usize, max: usize) -> Result<(OrderLog, usize)> {
        let first = from.max(self.n_orders().saturating_sub(max));
        let orders = self.block(tables::orders_from(&self.ctx, first), "reading the newest orders")?;
        let log = OrderLog {
            catalog: self.catalog.clone(),
            customers: self.customers.clone(),
            orders,
            returns: Vec::new(),
            lines_read: self.counts.lines,
            lines_dropped: self.counts.dropped,
            has_time: self.counts.has_time,
        };
        Ok((log, first))
    }

    /// The time of the order at position `pos` of the time order.
    pub fn order_ts(&self, pos: usize) -> Result<Option<i64>> {
        self.block(tables::order_ts(&self.ctx, pos), "reading an order's time")
    }

    /// Bytes the engine's spill files and tables take now.
    pub fn work_bytes(&self) -> u64 {
        dir_size(self.work.path())
    }

    fn block<T>(&self, f: impl std::future::Future<Output = datafusion::error::Result<T>>, what: &'static str) -> Result<T> {
        let held = self.hold_resident_memory();
        let out = self.runtime.block_on(f).map_err(|e| self.error(what, e));
        drop(held);
        xsell_data::release_freed_memory();
        out
    }

    /// Reserves in the engine's pool what this process already holds outside it (its resident
    /// memory less the pool's reservations: the trainer's tables, the runtimes, the code), so
    /// that `--memory-limit` bounds the process during a pass and not only the operators; at most
    /// half the limit, so the operators always get the other half. None when the operators run
    /// elsewhere (a Ballista cluster) or the resident size is unknown.
    fn hold_resident_memory(&self) -> Option<MemoryReservation> {
        if !self.in_process {
            return None;
        }
        let pool = &self.ctx.runtime_env().memory_pool;
        let resident = (xsell_data::resident_mib()? * 1048576.0) as usize;
        let held = resident.saturating_sub(pool.reserved()).min(self.limit as usize / 2);
        let reservation = MemoryConsumer::new(OUTSIDE_THE_ENGINE).register(pool);
        reservation.grow(held);
        Some(reservation)
    }

    fn error(&self, what: &'static str, e: DataFusionError) -> EngineError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(detail) => self.memory_limit(detail),
            // a cluster's executors report it as text inside the failed job's error
            root => match root.to_string().split_once("Resources exhausted") {
                Some((_, detail)) => self.memory_limit(detail),
                None => engine(what, e),
            },
        }
    }

    fn memory_limit(&self, detail: &str) -> EngineError {
        let detail: String = detail.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(400).collect();
        EngineError::MemoryLimit { limit: format_size(self.limit), detail }
    }
}

/// The session's base settings: Ballista's own for a Ballista session.
fn session_config(cluster: &Cluster, _partitions: usize) -> SessionConfig {
    match cluster {
        Cluster::Local => SessionConfig::new(),
        #[cfg(feature = "ballista")]
        _ => {
            use ballista::prelude::SessionConfigExt;
            SessionConfig::new_with_ballista().with_ballista_standalone_parallelism(_partitions)
        }
        #[cfg(not(feature = "ballista"))]
        _ => SessionConfig::new(),
    }
}

/// The session on `cluster` (for Ballista, the scheduler connected to or started; in standalone
/// mode the executor shares `state`'s memory pool and spill directory).
async fn context(cluster: &Cluster, state: datafusion::execution::SessionState) -> Result<SessionContext> {
    match cluster {
        Cluster::Local => Ok(SessionContext::new_with_state(state)),
        #[cfg(feature = "ballista")]
        Cluster::Ballista(url) => {
            use ballista::prelude::SessionContextExt;
            SessionContext::remote_with_state(url, state).await.map_err(|e| engine("connecting to the Ballista scheduler", e))
        }
        #[cfg(feature = "ballista")]
        Cluster::BallistaStandalone => {
            use ballista::prelude::SessionContextExt;
            SessionContext::standalone_with_state(state).await.map_err(|e| engine("starting Ballista standalone", e))
        }
        #[cfg(not(feature = "ballista"))]
        other => Err(EngineError::BadSetting {
            setting: "engine (--engine)",
            reason: format!("{other} needs a build with Ballista: cargo build --release --features ballista"),
        }),
    }
}

fn engine(what: &'static str, e: DataFusionError) -> EngineError {
    EngineError::Engine { what, source: Box::new(e) }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `sql`, writes its result as parquet files under a fresh `work/name-N/` and registers them
/// as the table `name` (with the plan's schema, so an empty result is an empty table). Each
/// write gets its own directory: a cluster's scheduler may keep the file listing of a path it
/// has seen.
pub(crate) async fn write_table(ctx: &SessionContext, work: &Path, name: &str, sql: &str) -> datafusion::error::Result<String> {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let start = std::time::Instant::now();
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work.join(format!("{name}-{n}")).to_string_lossy().into_owned() + "/";
    let df = ctx.sql(sql).await?;
    let schema = df.schema().as_arrow().clone();
    df.write_parquet(&dir, datafusion::dataframe::DataFrameWriteOptions::new(), None).await?;
    ctx.register_parquet(name, &dir, datafusion::prelude::ParquetReadOptions::default().schema(&schema)).await?;
    tracing::debug!(table = name, seconds = start.elapsed().as_secs_f64(), "engine table written");
    xsell_data::release_freed_memory();
    Ok(dir)
}

/// Runs `sql` and folds every result batch into `fold`, one batch at a time.
pub(crate) async fn for_each_batch(
    ctx: &SessionContext,
    sql: &str,
    mut fold: impl FnMut(&RecordBatch) -> datafusion::error::Result<()>,
) -> datafusion::error::Result<()> {
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        fold(&batch?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
