//! `xsell bench`: ranking latency of a bundle, and training wall time and peak memory.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xsell_core::RankQuery;

use crate::progress::Bars;
use crate::train::{CommonTrain, read_input};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Also time reading and training on this order log (and report peak memory).
    #[arg(long)]
    orders: Option<String>,
    #[command(flatten)]
    common: CommonTrain,
    /// Root directory of model bundles (latency is measured on the latest bundle of --name).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Model name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Ranking requests to time.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Time these queries (JSON lines as `xsell eval --queries-out` writes them: the protocol's
    /// baskets) instead of generated ones; each is ranked with k = 10.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Rank with this candidate budget instead of the bundle's.
    #[arg(long)]
    budget: Option<usize>,
    /// Time only the aggregate pass over --orders, in process and on DataFusion, in the same
    /// run (lines/s), instead of training.
    #[arg(long, requires = "orders")]
    aggregate_pass: bool,
    #[command(flatten)]
    engine: crate::train::EngineArgs,
}

/// The queries of a JSON-lines file (`xsell eval --queries-out`) as ranking requests.
fn read_queries(path: &std::path::Path, k: usize) -> anyhow::Result<Vec<RankQuery>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let q: xsell_core::protocol::Query =
                serde_json::from_str(l).with_context(|| format!("{}: line {}: not a query", path.display(), n + 1))?;
            Ok(RankQuery { customer_id: q.customer_id, basket: q.basket, k, ..Default::default() })
        })
        .collect()
}

/// Ranking queries made from a bundle (seeded): a random item with up to three of its
/// co-purchase neighbours, half of them for a random known customer.
pub fn generated_queries(model: &xsell_core::CrossSellModel, n: usize, k: usize) -> Vec<RankQuery> {
    let parts = model.parts();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n_items = model.n_items();
    let n_customers = parts.customers.ids.len();
    (0..n)
        .map(|_| {
            let i = rng.random_range(0..n_items);
            let mut basket = vec![parts.items.ids[i].clone()];
            let (cols, _) = parts.pairs.row(i);
            for &j in cols.iter().take(rng.random_range(0..4)) {
                basket.push(parts.items.ids[j as usize].clone());
            }
            let customer_id =
                (n_customers > 0 && rng.random_bool(0.5)).then(|| parts.customers.ids[rng.random_range(0..n_customers)].clone());
            RankQuery { customer_id, basket, k, ..Default::default() }
        })
        .collect()
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    peak_rss_mib_of("self")
}

/// Peak resident memory of a process (`self` or a pid) in MiB (Linux `VmHWM`).
pub fn peak_rss_mib_of(pid: &str) -> Option<f64> {
    xsell_data::process_status_mib(pid, "VmHWM")
}

/// The aggregate pass over every order of `spec` (the trainer's settings), in process and on
/// DataFusion: wall time and lines per second of each, reading included.
fn aggregate_pass(a: &BenchArgs, spec: &str) -> anyhow::Result<()> {
    let cfg = a.common.train_config()?;
    let columns = a.common.column_map()?;
    let agg_cfg = cfg.aggregate_config();
    let start = Instant::now();
    let engine = a.engine.open(spec, &columns)?;
    let open = start.elapsed().as_secs_f64();
    let agg = engine.aggregates(engine.n_orders(), None, &agg_cfg)?;
    let engine_secs = start.elapsed().as_secs_f64();
    let lines = engine.counts.lines as f64;
    let work = engine.work_bytes();
    drop((engine, agg));
    outln!(
        "bench aggregate pass, datafusion: {lines} lines in {engine_secs:.2}s (materialise {open:.2}s, count {:.2}s): {:.0} lines/s; work dir {}; memory limit {}",
        engine_secs - open,
        lines / engine_secs,
        xsell_engine::format_size(work),
        xsell_engine::format_size(a.engine.memory_limit.unwrap_or_else(xsell_engine::default_memory_limit)),
    );
    let start = Instant::now();
    let (log, _) = read_input(spec, &columns)?;
    let read = start.elapsed().as_secs_f64();
    let chrono = xsell_core::protocol::chronological(&log);
    std::hint::black_box(xsell_core::Aggregates::compute(&log, &chrono, None, &agg_cfg));
    let mem_secs = start.elapsed().as_secs_f64();
    outln!(
        "bench aggregate pass, in process: {lines} lines in {mem_secs:.2}s (read {read:.2}s, count {:.2}s): {:.0} lines/s",
        mem_secs - read,
        lines / mem_secs
    );
    outln!(
        "bench aggregate pass: datafusion / in process throughput = {:.2}; peak RSS {:.0} MiB",
        mem_secs / engine_secs,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let model_dir = a.models.join(&a.name);
    if let (true, Some(orders)) = (a.aggregate_pass, &a.orders) {
        return aggregate_pass(&a, orders);
    }
    if let Some(orders) = &a.orders {
        let cfg = a.common.train_config()?;
        let start = Instant::now();
        let (log, _) = read_input(orders, &a.common.column_map()?)?;
        let read = start.elapsed().as_secs_f64();
        let chrono = xsell_core::protocol::chronological(&log);
        let fitted = xsell_train::train(&log, &chrono, None, &cfg, &mut Bars::default())?;
        let total = start.elapsed().as_secs_f64();
        crate::train::print_summary(&fitted.report, read, total);
        outln!(
            "bench train: {} lines, wall {total:.2}s (read {read:.2}s), peak RSS {:.0} MiB",
            log.lines_read,
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
    if a.orders.is_some() && xsell_model::latest_version(&model_dir).is_err() {
        // only training was asked for: no bundle to time is not an error after it
        outln!("no bundle under {}: ranking latency not measured (`xsell train --name {}` makes one)", model_dir.display(), a.name);
        return Ok(());
    }
    let t = Instant::now();
    let mut bundle = xsell_model::load_latest(&model_dir)?;
    let load = t.elapsed().as_secs_f64();
    if let Some(b) = a.budget {
        bundle.model.set_budget(b)?;
    }
    let model = &bundle.model;
    let n_items = model.n_items();
    let mut queries = match &a.queries {
        Some(p) => read_queries(p, 10)?,
        None => generated_queries(model, a.requests.max(1), 10),
    };
    queries.truncate(a.requests.max(1));
    anyhow::ensure!(!queries.is_empty(), "no query to time");
    let mut lat: Vec<f64> = Vec::with_capacity(queries.len());
    let start = Instant::now();
    for q in &queries {
        let t = Instant::now();
        std::hint::black_box(model.rank(q)?);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    outln!(
        "bench rank: model {} ({} items, dim {}, budget {}, loaded in {load:.2}s), {} {} requests on one thread: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, {:.0} req/s",
        bundle.manifest.version,
        n_items,
        bundle.manifest.dim,
        model.budget(),
        if a.queries.is_some() { "protocol" } else { "generated" },
        lat.len(),
        pct(0.50),
        pct(0.95),
        pct(0.99),
        lat.len() as f64 / wall
    );
    outln!("bench peak RSS: {:.0} MiB", peak_rss_mib().unwrap_or(f64::NAN));
    Ok(())
}
