//! `xsell bench-serve`: what a backend service sees. Real gRPC over loopback from N concurrent
//! callers for a fixed time, replaying real queries, with the transport's floor (the health check
//! on the same server and connections) measured in the same run.
//!
//! Scenarios: `latency` (floor and `Rank` at each caller count, beside the in-process ranking
//! time of the same queries), `isolation` (health and small `Rank`s while two maximal `RankBatch`
//! calls run), `overload` (many heavy callers with a deadline: answered, shed, late, and the
//! server's peak RSS).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use xsell_core::RankQuery;
use xsell_proto::v1::cross_sell_client::CrossSellClient;
use xsell_proto::v1::{RankBatchRequest, RankRequest};

use crate::client::{authed, channel};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Floor and Rank at each caller count.
    Latency,
    /// Health and small Ranks while two maximal RankBatch calls run.
    Isolation,
    /// Many heavy callers with a deadline.
    Overload,
    /// All three.
    All,
}

#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// A running server (host:port or URL); without it one is started on --models/--name.
    #[arg(long)]
    server: Option<String>,
    /// Root directory of model bundles (queries are made from, and a server started on, --name).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Model name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Replay the protocol's queries of this order log (default: queries generated from the bundle).
    #[arg(long)]
    orders: Option<String>,
    /// Column renames for --orders: `--column order_id=InvoiceNo` (repeatable).
    #[arg(long = "column", value_name = "CANONICAL=NAME")]
    columns: Vec<String>,
    /// Concurrent callers per point (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    callers: Vec<usize>,
    /// Seconds per point.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Offers per Rank.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Scenario.
    #[arg(long, value_enum, default_value = "latency")]
    scenario: Scenario,
    /// Callers of the overload scenario.
    #[arg(long, default_value_t = 200)]
    heavy_callers: usize,
    /// Basket size of the overload scenario's requests.
    #[arg(long, default_value_t = 500)]
    heavy_basket: usize,
    /// Deadline of the overload scenario's requests, ms.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Back-off of an overload caller after a shed call (RESOURCE_EXHAUSTED), ms.
    #[arg(long, default_value_t = 20)]
    backoff_ms: u64,
    /// Serving configuration (TOML) for the server started here; its limits size the maximal batch.
    #[arg(long)]
    serve_config: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The running server's metrics address (its `metrics_addr`, host:port), to report the
    /// server's side of each `Rank` point; a server started here exposes one by itself.
    #[arg(long)]
    server_metrics: Option<String>,
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
struct Point {
    phase: String,
    callers: usize,
    calls: u64,
    ok: u64,
    seconds: f64,
    qps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: BTreeMap<String, u64>,
}

fn point(phase: &str, callers: usize, h: &Histogram<u64>, errors: BTreeMap<String, u64>, secs: f64) -> Point {
    let ms = |q: f64| if h.is_empty() { f64::NAN } else { h.value_at_quantile(q) as f64 / 1e6 };
    let calls = h.len() + errors.values().sum::<u64>();
    Point {
        phase: phase.into(),
        callers,
        calls,
        ok: h.len(),
        seconds: secs,
        qps: calls as f64 / secs,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        max_ms: if h.is_empty() { f64::NAN } else { h.max() as f64 / 1e6 },
        errors,
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs … 10 min in nanoseconds, 3 significant figures
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Runs `callers` loops of `call` until `dur` passes (or `stop` is set); latencies of successful
/// calls go to the histogram, failures are counted by gRPC code.
async fn drive<F, Fut>(phase: &str, callers: usize, dur: Duration, stop: Option<Arc<AtomicBool>>, call: F) -> Point
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let call = call.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut n = 0usize;
                while Instant::now() < end && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    let t = Instant::now();
                    match call(c, n).await {
                        Ok(()) => {
                            let _ = h.record((t.elapsed().as_nanos() as u64).max(1_000));
                        }
                        Err(s) => *errors.entry(format!("{:?}", s.code())).or_default() += 1,
                    }
                    n += 1;
                }
                (h, errors)
            })
        })
        .collect();
    let mut h = histogram();
    let mut errors = BTreeMap::new();
    for t in tasks {
        if let Ok((th, te)) = t.await {
            let _ = h.add(&th);
            for (k, v) in te {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    point(phase, callers, &h, errors, start.elapsed().as_secs_f64())
}

/// A server process started for the benchmark; killed when dropped.
struct ChildServer {
    child: std::process::Child,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildServer {
    fn peak_rss_mib(&self) -> Option<f64> {
        crate::bench::peak_rss_mib_of(&self.child.id().to_string())
    }
}

/// A free loopback address (the port is released for the server to take).
fn free_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
}

/// Starts `xsell serve` on the bundle: returns it, its gRPC address and its metrics address.
fn start_server(a: &BenchServeArgs) -> anyhow::Result<(ChildServer, String, String)> {
    let (addr, metrics) = (free_addr()?, free_addr()?);
    let mut cmd = std::process::Command::new(std::env::current_exe().context("finding the xsell binary")?);
    cmd.arg("serve").arg("--models").arg(&a.models).args(["--name", &a.name, "--addr", &addr, "--metrics-addr", &metrics]);
    if let Some(c) = &a.serve_config {
        cmd.arg("--config").arg(c);
    }
    cmd.env("XSELL_LOG", "warn").stdin(std::process::Stdio::null());
    let child = cmd.spawn().context("starting `xsell serve`")?;
    Ok((ChildServer { child }, addr, metrics))
}

/// The server's own account of its `Rank` calls, from its metrics: sums (seconds) and counts of
/// the call latency and of the interactive lane's job wait and run.
#[derive(Debug, Clone, Copy, Default)]
struct ServerSide {
    call: (f64, f64),
    wait: (f64, f64),
    run: (f64, f64),
}

impl ServerSide {
    /// Reads the server's metrics at `addr` (None when they cannot be read).
    fn scrape(addr: &str) -> Option<ServerSide> {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(addr).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(tcp, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).ok()?;
        let value =
            |name: &str| -> f64 { text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0) };
        let pair = |family: &str, label: &str| (value(&format!("{family}_sum{{{label}}} ")), value(&format!("{family}_count{{{label}}} ")));
        Some(ServerSide {
            call: pair("xsell_call_duration_seconds", r#"rpc="Rank""#),
            wait: pair("xsell_rank_job_wait_seconds", r#"lane="interactive""#),
            run: pair("xsell_rank_job_run_seconds", r#"lane="interactive""#),
        })
    }

    /// Mean milliseconds per call between two readings: (handler, job wait, job run).
    fn means_since(&self, before: &ServerSide) -> (f64, f64, f64) {
        let mean = |a: (f64, f64), b: (f64, f64)| if a.1 > b.1 { (a.0 - b.0) / (a.1 - b.1) * 1e3 } else { f64::NAN };
        (mean(self.call, before.call), mean(self.wait, before.wait), mean(self.run, before.run))
    }
}

async fn wait_serving(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(ch) = channel(addr).await {
            let r = HealthClient::new(ch).check(authed(HealthCheckRequest { service: xsell_server::SERVICE.into() })).await;
            if r.is_ok_and(|r| r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server at {addr} did not report SERVING within 120 s")
}

fn request(q: &RankQuery, k: u32) -> RankRequest {
    RankRequest { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k, ..Default::default() }
}

fn callers(c: usize) -> String {
    if c == 1 { "1 caller".into() } else { format!("{c} callers") }
}

fn ms(d: f64) -> String {
    if d.is_nan() { "–".into() } else { format!("{d:.3}") }
}

fn print(points: &[Point]) {
    outln!(
        "{:<32} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}  errors",
        "phase",
        "callers",
        "calls",
        "ok",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for p in points {
        let errors = if p.errors.is_empty() { "-".into() } else { format!("{:?}", p.errors) };
        outln!(
            "{:<32} {:>7} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>9} {:>9}  {errors}",
            p.phase,
            p.callers,
            p.calls,
            p.ok,
            p.qps,
            ms(p.p50_ms),
            ms(p.p90_ms),
            ms(p.p99_ms),
            ms(p.max_ms)
        );
    }
}

pub fn run(a: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.seconds.is_finite() && a.seconds > 0.0, "--seconds must be a positive number");
    anyhow::ensure!(a.callers.iter().all(|&c| (1..=10_000).contains(&c)), "--callers must be within 1..=10000");
    anyhow::ensure!((1..=1000).contains(&a.k), "--k must be within 1..=1000");
    anyhow::ensure!((1..=10_000).contains(&a.heavy_callers), "--heavy-callers must be within 1..=10000");
    let bundle = xsell_model::load_latest(&a.models.join(&a.name))?;
    let model = &bundle.model;
    let (queries, source) = match &a.orders {
        Some(orders) => {
            let columns = xsell_data::ColumnMap::parse_pairs(&a.columns).map_err(anyhow::Error::msg)?;
            let (log, _) = crate::train::read_input(orders, &columns)?;
            let cfg = xsell_core::protocol::ProtocolConfig::default();
            let split = xsell_core::protocol::time_split(&log, cfg.test_fraction);
            let qs: Vec<RankQuery> = xsell_core::protocol::draw_queries(&log, &split, &cfg)
                .iter()
                .map(|q| RankQuery { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k: a.k as usize, ..Default::default() })
                .collect();
            (qs, format!("the protocol's queries of {orders}"))
        }
        None => (crate::bench::generated_queries(model, 2000, a.k as usize), "queries generated from the bundle".into()),
    };
    anyhow::ensure!(!queries.is_empty(), "no queries to replay");
    let limits = match &a.serve_config {
        Some(c) => xsell_server::ServeConfig::load(Some(c), serde_json::Map::new())?.limits,
        None => xsell_server::ServeConfig::default().limits,
    };

    // in process, one thread, the same queries: what gRPC adds is measured against this
    let mut inproc = histogram();
    let t = Instant::now();
    for q in queries.iter().take(2000) {
        let s = Instant::now();
        std::hint::black_box(model.rank(q)?);
        let _ = inproc.record((s.elapsed().as_nanos() as u64).max(1_000));
    }
    let mut points = vec![point("in-process Rank", 1, &inproc, BTreeMap::new(), t.elapsed().as_secs_f64())];

    let child = match &a.server {
        Some(_) => None,
        None => Some(start_server(&a)?),
    };
    let addr = a.server.clone().unwrap_or_else(|| child.as_ref().map(|c| c.1.clone()).unwrap_or_default());
    let metrics_addr = a.server_metrics.clone().or_else(|| child.as_ref().map(|c| c.2.clone()));
    let metrics_shown = metrics_addr.clone();
    let server_side = move || {
        let at = metrics_addr.clone();
        async move {
            match at {
                Some(at) => tokio::task::spawn_blocking(move || ServerSide::scrape(&at)).await.ok().flatten(),
                None => None,
            }
        }
    };
    let mut server_lines = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dur = Duration::from_secs_f64(a.seconds);
    outln!(
        "bench-serve: model {} ({} items), server {addr}{}, {source} ({}), k = {}, {} s per point",
        bundle.manifest.version,
        model.n_items(),
        if child.is_some() { " (started here)" } else { "" },
        queries.len(),
        a.k,
        a.seconds
    );
    let mut extra = serde_json::Map::new();
    rt.block_on(async {
        wait_serving(&addr).await?;
        let requests: Arc<Vec<RankRequest>> = Arc::new(queries.iter().map(|q| request(q, a.k)).collect());
        let max_conn = 64;
        let conns =
            a.callers.iter().copied().max().unwrap_or(1).clamp(1, max_conn).max(if a.scenario == Scenario::Latency { 1 } else { 16 });
        let mut chans = Vec::with_capacity(conns);
        for _ in 0..conns {
            chans.push(channel(&addr).await?);
        }
        let chans = Arc::new(chans);
        let health = |chans: Arc<Vec<Channel>>| {
            move |c: usize, _n: usize| {
                let ch = chans[c % chans.len()].clone();
                async move {
                    HealthClient::new(ch).check(authed(HealthCheckRequest { service: xsell_server::SERVICE.into() })).await.map(|_| ())
                }
            }
        };
        let rank = |chans: Arc<Vec<Channel>>, reqs: Arc<Vec<RankRequest>>| {
            move |c: usize, n: usize| {
                let ch = chans[c % chans.len()].clone();
                let req = reqs[(c * 7919 + n) % reqs.len()].clone();
                async move { CrossSellClient::new(ch).rank(authed(req)).await.map(|_| ()) }
            }
        };
        if matches!(a.scenario, Scenario::Latency | Scenario::All) {
            // warm the connections and the server's caches
            let _ = drive("warm-up", 1, Duration::from_millis(500), None, rank(chans.clone(), requests.clone())).await;
            for &c in &a.callers {
                let floor = drive("health (floor)", c, dur, None, health(chans.clone())).await;
                let before = server_side().await;
                let r = drive("Rank", c, dur, None, rank(chans.clone(), requests.clone())).await;
                if let (Some(before), Some(after)) = (before, server_side().await) {
                    // where a call's time goes, as the server saw it
                    let (handler, wait, run) = after.means_since(&before);
                    extra.insert(format!("server_side_{c}"), json!({ "handler_ms": handler, "job_wait_ms": wait, "job_run_ms": run }));
                    server_lines.push(format!(
                        "Rank at {}, server side (means): handler {} ms = job wait {} + job run {} + the rest {} ms; the client saw {} ms",
                        callers(c),
                        ms(handler),
                        ms(wait),
                        ms(run),
                        ms(handler - wait - run),
                        ms(c as f64 / r.qps * 1e3)
                    ));
                } else if let Some(at) = &metrics_shown {
                    server_lines.push(format!("Rank at {}: the server's metrics at {at} could not be read", callers(c)));
                }
                extra.insert(format!("rank_over_floor_qps_{c}"), json!(r.qps / floor.qps));
                points.push(floor);
                points.push(r);
            }
        }
        if matches!(a.scenario, Scenario::Isolation | Scenario::All) {
            // the largest batch the limits accept, of the largest baskets
            let n = model.n_items();
            let ids = &model.parts().items.ids;
            let mut basket_len = xsell_core::model::limits::MAX_BASKET.min(n);
            while basket_len > 1 && model.request_work(basket_len, 0) > limits.max_request_work {
                basket_len /= 2;
            }
            let work = model.request_work(basket_len, 0).max(1);
            let count =
                (limits.max_batch_work / work).min(limits.max_batch as u64).min(limits.max_batch_offers as u64 / u64::from(a.k)).max(1)
                    as usize;
            let batch: Vec<RankRequest> = (0..count)
                .map(|r| RankRequest {
                    basket: (0..basket_len).map(|j| ids[(r * 31 + j) % n].clone()).collect(),
                    k: a.k,
                    ..Default::default()
                })
                .collect();
            extra.insert("maximal_batch".into(), json!({ "requests": count, "basket": basket_len, "work_units": work * count as u64 }));
            let idle = drive("small Rank, idle", 1, dur, None, rank(chans.clone(), requests.clone())).await;
            let stop = Arc::new(AtomicBool::new(false));
            let batch = Arc::new(RankBatchRequest { requests: batch });
            let heavy = {
                let (chans, batch) = (chans.clone(), batch.clone());
                move |c: usize, _n: usize| {
                    let ch = chans[(c + 2) % chans.len()].clone();
                    let b = (*batch).clone();
                    async move { CrossSellClient::new(ch).max_decoding_message_size(256 << 20).rank_batch(authed(b)).await.map(|_| ()) }
                }
            };
            let heavy_task = tokio::spawn(drive("maximal RankBatch", 2, dur * 100, Some(stop.clone()), heavy));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (h, r) = tokio::join!(
                drive("health, under 2 batches", 1, dur, None, health(Arc::new(vec![chans[0].clone()]))),
                drive("small Rank, under 2 batches", 1, dur, None, rank(Arc::new(vec![chans[1 % chans.len()].clone()]), requests.clone())),
            );
            stop.store(true, Ordering::Relaxed);
            let heavy = heavy_task.await.context("the batch callers failed")?;
            extra.insert("small_rank_p99_ratio".into(), json!(r.p99_ms / idle.p99_ms));
            points.extend([idle, h, r, heavy]);
        }
        if matches!(a.scenario, Scenario::Overload | Scenario::All) {
            let n = model.n_items();
            let ids = &model.parts().items.ids;
            let len = a.heavy_basket.min(n).max(1);
            let reqs: Arc<Vec<RankRequest>> = Arc::new(
                (0..64)
                    .map(|r| RankRequest {
                        basket: (0..len).map(|j| ids[(r * 97 + j) % n].clone()).collect(),
                        k: a.k,
                        ..Default::default()
                    })
                    .collect(),
            );
            let deadline = Duration::from_millis(a.deadline_ms);
            let backoff = Duration::from_millis(a.backoff_ms);
            let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let call = {
                let (chans, late) = (chans.clone(), late.clone());
                move |c: usize, n: usize| {
                    let ch = chans[c % chans.len()].clone();
                    let mut req = authed(reqs[(c + n) % reqs.len()].clone());
                    req.set_timeout(deadline);
                    let late = late.clone();
                    async move {
                        let t = Instant::now();
                        let r = CrossSellClient::new(ch).rank(req).await.map(|_| ());
                        // answered (or shed) later than the deadline plus 100 ms of transport slack
                        if t.elapsed() > deadline + Duration::from_millis(100) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        // a shed call backs off before its caller's next one, as the message asks
                        if r.as_ref().is_err_and(|s| s.code() == tonic::Code::ResourceExhausted) {
                            tokio::time::sleep(backoff).await;
                        }
                        r
                    }
                }
            };
            let p = drive(&format!("heavy Rank ({len} items, {} ms)", a.deadline_ms), a.heavy_callers, dur, None, call).await;
            extra.insert("overload_late_answers".into(), json!(late.load(Ordering::Relaxed)));
            points.push(p);
        }
        anyhow::Ok(())
    })?;
    if let Some(rss) = child.as_ref().and_then(|c| c.0.peak_rss_mib()) {
        extra.insert("server_peak_rss_mib".into(), json!(rss));
    }
    print(&points);
    for line in &server_lines {
        outln!("{line}");
    }
    for (k, v) in &extra {
        outln!("{k}: {v}");
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "model_version": bundle.manifest.version,
            "items": model.n_items(),
            "server": addr,
            "queries": source,
            "k": a.k,
            "seconds_per_point": a.seconds,
            "points": points,
            "summary": extra,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        outln!("json: {}", path.display());
    }
    Ok(())
}
