//! `xsell train`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};
use xsell_data::ColumnMap;
use xsell_train::{TrainConfig, ValidTrainConfig};

use crate::progress::Bars;

/// The sample order log the no-argument run trains on (generated when missing).
pub const SAMPLE: &str = "data/sample_orders.parquet";

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Order log: a parquet file, a directory of them (hive partitions welcome) or a glob.
    #[arg(long, default_value = SAMPLE)]
    pub orders: String,
    #[command(flatten)]
    pub common: CommonTrain,
    /// Root directory of model bundles.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Model name (a directory under --models).
    #[arg(long, default_value = "default")]
    pub name: String,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Fold --orders (orders all newer than the model's) into the latest bundle of --name and
    /// refit from the counts stored with it, without rescanning its orders. The bundle's
    /// hyperparameters and choices (rankers, EASE's λ, candidate budget) are kept; a full
    /// retrain chooses them again. Every count, EASE and the neighbour lists are refitted on the
    /// merged counts; the embeddings continue from the bundle's for a share of a fresh fit's
    /// steps (--warm; new items start fresh, known items keep their latent categories) unless
    /// --exact refits them too.
    #[arg(long, conflicts_with_all = ["config", "seed", "dim"])]
    pub update: bool,
    /// With --update: the share of a fresh fit's steps the embeddings continue for.
    #[arg(long, requires = "update", num_args = 0..=1, default_missing_value = "0.1", value_name = "SHARE", value_parser = share)]
    pub warm: Option<f64>,
    /// With --update: refit the embeddings from scratch, so that the model is the one a full
    /// retrain on the union refits with the bundle's choices (slower: the embeddings are most of
    /// an update's time).
    #[arg(long, requires = "update", conflicts_with = "warm")]
    pub exact: bool,
}

/// The share of a fresh fit's steps an update's embeddings continue for, without --warm.
pub const WARM_SHARE: f64 = 0.1;

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("'{s}' is not a share within (0, 1]")),
    }
}

/// Where the aggregate pass runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// In process: the cleaned log is held in memory.
    #[default]
    Memory,
    /// A query engine: DataFusion in process, out of core (the log is materialised once in
    /// --work-dir and counted within --memory-limit, spilling beyond it), or the same plans on
    /// a Ballista cluster; only the newest orders (the ranker's queries) are held in memory.
    Engine(xsell_engine::Cluster),
}

/// `memory`, `datafusion`, `ballista://HOST:PORT` or `ballista:standalone`.
fn engine_kind(s: &str) -> Result<EngineKind, String> {
    use xsell_engine::Cluster;
    let bad = || format!("'{s}': expected memory, datafusion, ballista://HOST:PORT (a Ballista scheduler) or ballista:standalone");
    Ok(match s {
        "memory" => EngineKind::Memory,
        "datafusion" => EngineKind::Engine(Cluster::Local),
        "ballista:standalone" => EngineKind::Engine(Cluster::BallistaStandalone),
        _ => {
            let addr = s.strip_prefix("ballista://").ok_or_else(bad)?;
            let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            EngineKind::Engine(Cluster::Ballista(format!("df://{addr}")))
        }
    })
}

/// The engine flags of `train` and `bench`.
#[derive(Debug, Args, Default, Clone)]
pub struct EngineArgs {
    /// Where the aggregate pass runs: memory (in process), datafusion (in process, out of
    /// core), ballista://HOST:PORT (a Ballista cluster's scheduler; the input and --work-dir on
    /// storage every executor reads) or ballista:standalone (Ballista in process). Ballista
    /// needs a build with `--features ballista`.
    #[arg(long, value_parser = engine_kind, default_value = "memory")]
    pub engine: EngineKind,
    /// Memory the process may hold during the engine's passes (e.g. 1GB, 512MiB): what the
    /// trainer already holds counts against it (up to half), the engine's operators get the rest
    /// and spill to --work-dir beyond it. Default: a quarter of the machine's memory.
    #[arg(long, value_parser = xsell_engine::parse_size)]
    pub memory_limit: Option<u64>,
    /// Where the engine writes its tables and spill files (a temporary directory inside it,
    /// removed afterwards). Default: the system's temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

impl EngineArgs {
    /// Opens `spec` on DataFusion with these settings.
    pub fn open(&self, spec: &str, columns: &ColumnMap) -> anyhow::Result<xsell_engine::Engine> {
        let cfg = xsell_engine::EngineConfig {
            memory_limit: self.memory_limit.unwrap_or_else(xsell_engine::default_memory_limit),
            work_dir: self.work_dir.clone(),
            partitions: 0,
            cluster: match &self.engine {
                EngineKind::Engine(c) => c.clone(),
                EngineKind::Memory => xsell_engine::Cluster::Local,
            },
        };
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("materialising the log on {} (memory limit {})", cfg.cluster, xsell_engine::format_size(cfg.memory_limit)));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let engine = xsell_engine::Engine::open(spec, columns, &cfg);
        bar.finish_and_clear();
        Ok(engine?)
    }
}

/// The aggregate pass on the engine, for the trainer.
pub struct EngineCounts<'a>(pub &'a xsell_engine::Engine);

impl xsell_train::Counts for EngineCounts<'_> {
    fn aggregates(
        &self,
        n: usize,
        cutoff_ts: Option<i64>,
        cfg: &xsell_core::aggregate::AggregateConfig,
    ) -> xsell_train::Result<xsell_core::Aggregates> {
        self.0.aggregates(n, cutoff_ts, cfg).map_err(|e| xsell_train::TrainError::Counts(e.to_string()))
    }
    fn order_ts(&self, pos: usize) -> xsell_train::Result<Option<i64>> {
        self.0.order_ts(pos).map_err(|e| xsell_train::TrainError::Counts(e.to_string()))
    }
    fn tally(&self, cfg: &xsell_core::aggregate::AggregateConfig) -> xsell_train::Result<Option<xsell_core::Tally>> {
        self.0.tally(cfg).map(Some).map_err(|e| xsell_train::TrainError::Counts(e.to_string()))
    }
}

/// The newest orders the engine path holds in memory, per ranker query wanted: the ranker's
/// queries are drawn from them (a bounded sample of the validation slice).
const HELD_ORDERS_PER_QUERY: usize = 20;

/// Input and hyperparameter flags shared by `train`, `eval` and `bench`.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonTrain {
    /// Read a canonical column from another name: `--column order_id=InvoiceNo` (repeatable).
    #[arg(long = "column", value_name = "CANONICAL=NAME")]
    pub columns: Vec<String>,
    /// Hyperparameters as JSON (any subset of the keys; the rest keep their defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Random seed (overrides --config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Embedding dimension (overrides --config).
    #[arg(long)]
    pub dim: Option<usize>,
}

impl CommonTrain {
    /// The checked hyperparameters: `--config`, then the flags that override it.
    pub fn train_config(&self) -> anyhow::Result<ValidTrainConfig> {
        Ok(self.hyperparameters()?.check()?)
    }

    /// `--config` and the overriding flags, not checked yet.
    pub fn hyperparameters(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                TrainConfig::parse_json(&text).with_context(|| format!("{}: not a valid hyperparameter file", p.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(d) = self.dim {
            cfg.dim = d;
        }
        Ok(cfg)
    }

    pub fn column_map(&self) -> anyhow::Result<ColumnMap> {
        ColumnMap::parse_pairs(&self.columns).map_err(anyhow::Error::msg)
    }
}

/// Reads a log with a spinner and returns it with the input's sha256.
pub fn read_input(spec: &str, columns: &ColumnMap) -> anyhow::Result<(xsell_core::OrderLog, String)> {
    let sha = input_sha(spec)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("reading order lines");
    let log = xsell_data::read_log_with(spec, columns, &mut |n| bar.set_message(format!("read {n} order lines")))?;
    bar.finish_and_clear();
    tracing::info!(
        lines = log.lines_read,
        orders = log.orders.len(),
        items = log.catalog.len(),
        customers = log.customers.len(),
        returns = log.returns.len(),
        "order log read"
    );
    Ok((log, sha))
}

/// The sha256 of the input's files, in listing order (the sample log is generated first when
/// it is the input and missing).
pub fn input_sha(spec: &str) -> anyhow::Result<String> {
    if spec == SAMPLE && !Path::new(SAMPLE).exists() {
        let (lines, _) = xsell_data::generate::generate(&Default::default());
        xsell_data::write_lines(Path::new(SAMPLE), &lines)?;
        tracing::info!(path = SAMPLE, lines = lines.len(), "generated the sample order log");
    }
    let files = xsell_data::list_inputs(spec)?;
    let mut hasher = Sha256::new();
    for f in &files {
        let mut file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("reading {}", f.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

pub fn manifest(
    name: &str,
    source: &str,
    sha: &str,
    log: &xsell_core::OrderLog,
    cfg: &TrainConfig,
    fitted: &xsell_train::Fitted,
) -> xsell_model::Manifest {
    xsell_model::Manifest::new(
        name,
        xsell_model::InputInfo { source: source.into(), sha256: sha.into(), lines: log.lines_read, orders: fitted.report.orders as u64 },
        serde_json::to_value(cfg).unwrap_or_default(),
        serde_json::to_value(&fitted.report).unwrap_or_default(),
    )
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    if a.update {
        return update(a);
    }
    let start = Instant::now();
    let cfg = a.common.train_config()?;
    let dir = a.models.join(&a.name);
    xsell_model::check_writable(&dir).with_context(|| format!("the bundle cannot be written under {}", dir.display()))?;
    let columns = a.common.column_map()?;
    let (log, sha, fitted, read_secs) = match &a.engine.engine {
        EngineKind::Memory => {
            let (log, sha) = read_input(&a.orders, &columns)?;
            let read_secs = start.elapsed().as_secs_f64();
            let orders = xsell_core::protocol::chronological(&log);
            let fitted = xsell_train::train(&log, &orders, None, &cfg, &mut Bars::default())?;
            (log, sha, fitted, read_secs)
        }
        EngineKind::Engine(_) => {
            let sha = input_sha(&a.orders)?;
            let engine = a.engine.open(&a.orders, &columns)?;
            let n = engine.n_orders();
            let n_valid = (n as f64 * cfg.validation_fraction).round() as usize;
            let (log, _) = engine.newest_orders(n - n_valid, cfg.ranker_queries.saturating_mul(HELD_ORDERS_PER_QUERY))?;
            let read_secs = start.elapsed().as_secs_f64();
            outln!(
                "engine: {} lines ({} orders) materialised in {read_secs:.1}s within a {} memory limit; peak RSS so far {:.0} MiB",
                engine.counts.lines,
                n,
                xsell_engine::format_size(a.engine.memory_limit.unwrap_or_else(xsell_engine::default_memory_limit)),
                crate::bench::peak_rss_mib_of("self").unwrap_or(f64::NAN)
            );
            let newest: Vec<usize> = (0..log.orders.len()).collect();
            let input =
                xsell_train::TrainInput { log: &log, n_orders: n, newest: &newest, cutoff_ts: None, counts: &EngineCounts(&engine) };
            let fitted = xsell_train::train_from(&input, &cfg, &mut Bars::default())?;
            outln!(
                "engine: work directory {} at the end; peak RSS after the aggregate passes and fitting {:.0} MiB",
                xsell_engine::format_size(engine.work_bytes()),
                crate::bench::peak_rss_mib_of("self").unwrap_or(f64::NAN)
            );
            (log, sha, fitted, read_secs)
        }
    };
    let path =
        xsell_model::save_with_tally(&dir, manifest(&a.name, &a.orders, &sha, &log, &cfg, &fitted), &fitted.parts, fitted.tally.as_ref())
            .with_context(|| format!("writing the bundle under {}", dir.display()))?;
    print_summary(&fitted.report, read_secs, start.elapsed().as_secs_f64());
    outln!("model bundle: {}", path.display());
    Ok(())
}

/// `xsell train --update`: the latest bundle's stored counts, plus the counts of the new
/// orders, refitted with the bundle's settings.
fn update(a: TrainArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    anyhow::ensure!(matches!(a.engine.engine, EngineKind::Memory), "--update counts the new orders in process; leave out --engine");
    let dir = a.models.join(&a.name);
    let version = xsell_model::latest_version(&dir).with_context(|| format!("no bundle to update under {}", dir.display()))?;
    let path = dir.join(&version);
    let bundle = xsell_model::load(&path).with_context(|| format!("loading the bundle to update, {}", path.display()))?;
    let tally = xsell_model::load_tally(&path)
        .with_context(|| format!("reading the counts stored with {}", path.display()))?
        .with_context(|| {
            format!(
                "{}: the bundle has no stored counts ({}/), so it cannot be updated: it was saved by `xsell eval` (a training period \
                 whose return signals are cut off) or by an older build; train it once without --update",
                path.display(),
                xsell_model::AGGREGATES
            )
        })?;
    let hyper = TrainConfig::parse_json(&bundle.manifest.hyperparameters.to_string()).context("the bundle's hyperparameters")?;
    let cfg = hyper.clone().check().context("the bundle's hyperparameters")?;
    let report: xsell_train::TrainReport =
        serde_json::from_value(bundle.manifest.metrics.clone()).context("the bundle's training report (manifest.json, metrics)")?;
    let choices = xsell_train::Choices::of_bundle(bundle.model.parts(), &report);
    let (log, sha) = read_input(&a.orders, &a.common.column_map()?)?;
    let read_secs = start.elapsed().as_secs_f64();
    let orders = xsell_core::protocol::chronological(&log);
    let tracked = tally.tracked_in(&log);
    let newer =
        xsell_core::Tally::compute(&log, &orders, &cfg.aggregate_config(), Some(orders.len()), xsell_core::tally::Track::Given(&tracked));
    if let (Some((_, last)), Some((first, _))) = (tally.span, newer.span) {
        anyhow::ensure!(
            first > last,
            "{}: the new orders start at {}, not after the newest order {version} counted ({}); --update only adds newer orders \
             (retrain without --update to change the history)",
            a.orders,
            xsell_model::rfc3339_of_ms(first),
            xsell_model::rfc3339_of_ms(last)
        );
    }
    let before = tally.n_orders;
    let warm_share = (!a.exact).then(|| a.warm.unwrap_or(WARM_SHARE));
    let warm = warm_share.map(|steps_share| xsell_train::Warm { parts: bundle.model.parts(), steps_share });
    let mut fitted = xsell_train::update(tally, &newer, &choices, &report, &cfg, warm, &mut Bars::default())?;
    drop(bundle);
    fitted.report.updated_from =
        Some(xsell_train::UpdateReport { version: version.clone(), new_orders: orders.len(), new_lines: log.lines_read, warm: warm_share });
    let source = format!("{} (update of {version})", a.orders);
    let saved =
        xsell_model::save_with_tally(&dir, manifest(&a.name, &source, &sha, &log, &hyper, &fitted), &fitted.parts, fitted.tally.as_ref())
            .with_context(|| format!("writing the bundle under {}", dir.display()))?;
    let embeddings = match warm_share {
        Some(share) => format!("embeddings continued for {:.0} % of a fresh fit's steps", share * 100.0),
        None => "every part refitted (--exact)".into(),
    };
    outln!("updated {version}: {before} orders + {} new = {} orders; {embeddings}", orders.len(), fitted.report.orders);
    print_summary(&fitted.report, read_secs, start.elapsed().as_secs_f64());
    outln!("model bundle: {}", saved.display());
    Ok(())
}

pub fn print_summary(r: &xsell_train::TrainReport, read_secs: f64, total_secs: f64) {
    outln!("trained on {} orders: {} items, {} customers", r.orders, r.items, r.customers);
    out!("phases: read {read_secs:.1}s");
    for p in &r.phases {
        out!(", {} {:.1}s", p.phase, p.seconds);
    }
    outln!(" (total {total_secs:.1}s)");
    if r.validation.queries > 0 {
        outln!("validation on {} held-out queries (newest training orders); kept: {}", r.validation.queries, r.ranker);
        outln!("  {:<14} {:>8} {:>8}", "system", "hit@10", "mrr@20");
        for (name, hit, mrr) in &r.validation.systems {
            outln!("  {name:<14} {hit:>8.4} {mrr:>8.4}");
        }
        if let Some(d) = &r.discovery {
            outln!("discovery ranker, on {} held-out novel-target queries without the customer's past items; kept: {}", d.queries, d.kept);
            for (name, hit, mrr) in d.systems.iter().filter(|(n, _, _)| !matches!(n.as_str(), "cooccurrence" | "popularity")) {
                outln!("  {name:<14} {hit:>8.4} {mrr:>8.4}");
            }
        }
        if let Some(l) = &r.latent_substitutes {
            outln!(
                "latent categories: {}; substitutes within them {} (of {} held-out queries, {:.4} of targets and {:.4} of top-10 offers are judged substitutes of the basket)",
                l.categories,
                if l.applied { "withheld" } else { "kept: customers add them as often as they are offered" },
                l.queries,
                l.targets_judged_substitutes,
                l.offers_judged_substitutes
            );
        }
        for (b, hit, mrr) in &r.budget_trials {
            let kept = if *b == r.candidate_budget { " (kept)" } else { "" };
            outln!("  candidate budget {b:>6}: hit@10 {hit:.4}, mrr@20 {mrr:.4}{kept}");
        }
    }
    if let Some(e) = &r.ease {
        out!("EASE over the {} most-bought items, λ = {:.1} ({:.3} × mean item orders)", e.items, e.lambda, e.alpha);
        match e.pairs {
            0 => outln!(""),
            n => outln!(", and their {n} most co-bought pairs (pair λ {:.3} × mean item orders)", e.pair_alpha),
        }
        if let Some((without, with)) = e.tail_trial {
            let verdict = if e.tail_items > 0 { format!("kept: {} more items have EASE rows", e.tail_items) } else { "not kept".into() };
            outln!(
                "  tail blocks (items beyond the dense fit, blocks of co-bought items): EASE alone hit@10 {without:.4} -> {with:.4}, {verdict}"
            );
        }
        for t in &e.trials {
            let pairs = if t.pairs == 0 { String::new() } else { format!(", {} pairs at {} × mean", t.pairs, t.pair_alpha) };
            outln!(
                "  λ = {:>5} × mean{pairs}: hit@10 {:.4}, mrr@20 {:.4} (validation, EASE alone on {} items)",
                t.alpha,
                t.hit10,
                t.mrr20,
                t.items
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineKind, engine_kind};
    use xsell_engine::Cluster;

    #[test]
    fn engines_are_named_as_the_help_says() {
        assert_eq!(engine_kind("memory"), Ok(EngineKind::Memory));
        assert_eq!(engine_kind("datafusion"), Ok(EngineKind::Engine(Cluster::Local)));
        assert_eq!(engine_kind("ballista:standalone"), Ok(EngineKind::Engine(Cluster::BallistaStandalone)));
        assert_eq!(engine_kind("ballista://sched.local:50050"), Ok(EngineKind::Engine(Cluster::Ballista("df://sched.local:50050".into()))));
        for bad in ["ballista://", "ballista://host", "ballista://:50050", "ballista://host:port", "spark://x:1", ""] {
            assert!(engine_kind(bad).unwrap_err().contains("ballista://HOST:PORT"), "{bad}");
        }
    }
}
