//! Prometheus metrics (OpenMetrics text) at `http://<metrics_addr>/metrics`.
//!
//! Calls by RPC and gRPC code, call latency histograms, calls in flight, ranking jobs running,
//! shed and abandoned work, the served model's version and age, and reload outcomes.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `Rank`, `RankBatch`, `RankStream` (one per message) or `ModelInfo`.
    pub rpc: &'static str,
    /// The gRPC code's name, e.g. `Ok`, `InvalidArgument`.
    pub code: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    /// The RPC.
    pub rpc: &'static str,
}

/// Labels of the ranking pools' histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// `interactive` or `bulk`.
    pub lane: &'static str,
}

/// Labels of the model-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The served version.
    pub version: String,
}

/// Labels of reload outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `loaded` or `refused`.
    pub outcome: &'static str,
}

type HistogramFamily = Family<RpcLabel, Histogram, fn() -> Histogram>;
type LaneHistogramFamily = Family<LaneLabel, Histogram, fn() -> Histogram>;

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Finished calls by RPC and code.
    pub calls: Family<CallLabels, Counter>,
    /// Call latency in seconds, as the server sees it (decode to encode).
    pub latency: HistogramFamily,
    /// Calls being handled now.
    pub calls_in_flight: Gauge,
    /// Ranking jobs running on the pool now.
    pub jobs_running: Gauge,
    /// Seconds a ranking job waited between its admission and its start (the hand-off to the
    /// pool and the queue ahead of it), by lane.
    pub job_wait: LaneHistogramFamily,
    /// Seconds a ranking job ran on its pool thread, by lane.
    pub job_run: LaneHistogramFamily,
    /// Calls shed because `max_in_flight` calls were already admitted.
    pub shed: Counter,
    /// Ranking work dropped or cut short because its deadline passed or its client went away.
    pub abandoned: Counter,
    /// Requests ranked (a batch counts each of its requests).
    pub ranked: Counter,
    /// Exposure records written to the exposure log.
    pub exposures_written: Counter,
    /// Exposure records dropped (queue full, or the disk refused them).
    pub exposures_dropped: Counter,
    /// 1 for the served version.
    pub model: Family<ModelLabel, Gauge>,
    model_age: Gauge<f64, AtomicU64>,
    model_time: Mutex<Option<SystemTime>>,
    /// Reload attempts that loaded a bundle or refused one.
    pub reloads: Family<OutcomeLabel, Counter>,
    started: Instant,
    uptime: Gauge<f64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~13 s
    Histogram::new(exponential_buckets(50e-6, 2.0, 19))
}

fn job_histogram() -> Histogram {
    // 5 µs … ~10 s: a job's wait and run are often a few microseconds
    Histogram::new(exponential_buckets(5e-6, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("xsell");
        let calls = Family::<CallLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let calls_in_flight = Gauge::default();
        let jobs_running = Gauge::default();
        let job_wait: LaneHistogramFamily = Family::new_with_constructor(job_histogram);
        let job_run: LaneHistogramFamily = Family::new_with_constructor(job_histogram);
        let shed = Counter::default();
        let abandoned = Counter::default();
        let ranked = Counter::default();
        let model = Family::<ModelLabel, Gauge>::default();
        let (exposures_written, exposures_dropped) = (Counter::default(), Counter::default());
        registry.register("exposures_written", "Exposure records written to the exposure log", exposures_written.clone());
        registry.register(
            "exposures_dropped",
            "Exposure records dropped: the writer's queue was full or the disk refused them",
            exposures_dropped.clone(),
        );
        let model_age = Gauge::<f64, AtomicU64>::default();
        let reloads = Family::<OutcomeLabel, Counter>::default();
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register("calls", "Finished gRPC calls by RPC and code", calls.clone());
        registry.register("call_duration_seconds", "gRPC call latency as the server sees it", latency.clone());
        registry.register("calls_in_flight", "gRPC calls being handled", calls_in_flight.clone());
        registry.register("rank_jobs_running", "Ranking jobs running on the compute pool", jobs_running.clone());
        registry.register(
            "rank_job_wait_seconds",
            "Time a ranking job waited from admission to its start on a pool thread, by lane",
            job_wait.clone(),
        );
        registry.register("rank_job_run_seconds", "Time a ranking job ran on a pool thread, by lane", job_run.clone());
        registry.register("shed", "Calls refused with RESOURCE_EXHAUSTED because the pool was full", shed.clone());
        registry.register("abandoned", "Ranking work dropped because its deadline passed or its client left", abandoned.clone());
        registry.register("ranked_requests", "Ranking requests answered (each request of a batch counts)", ranked.clone());
        registry.register("model_info", "1 for the served model version", model.clone());
        registry.register("model_age_seconds", "Age of the served bundle (since its manifest was written)", model_age.clone());
        registry.register("reloads", "Hot-reload attempts by outcome", reloads.clone());
        registry.register("uptime_seconds", "Seconds since the server started", uptime.clone());
        Metrics {
            registry,
            calls,
            latency,
            calls_in_flight,
            jobs_running,
            job_wait,
            job_run,
            shed,
            abandoned,
            ranked,
            exposures_written,
            exposures_dropped,
            model,
            model_age,
            model_time: Mutex::new(None),
            reloads,
            started: Instant::now(),
            uptime,
        }
    }

    /// Records a finished call.
    pub fn record(&self, rpc: &'static str, code: tonic::Code, started: Instant) {
        self.calls.get_or_create(&CallLabels { rpc, code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&RpcLabel { rpc }).observe(started.elapsed().as_secs_f64());
    }

    /// The served model changed.
    pub fn set_model(&self, version: &str, written: Option<SystemTime>) {
        self.model.clear();
        self.model.get_or_create(&ModelLabel { version: version.to_owned() }).set(1);
        *self.model_time.lock().unwrap_or_else(|e| e.into_inner()) = written;
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        if let Some(t) = *self.model_time.lock().unwrap_or_else(|e| e.into_inner()) {
            self.model_age.set(SystemTime::now().duration_since(t).map(|d| d.as_secs_f64()).unwrap_or(0.0));
        }
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out = "# metrics could not be encoded\n".into();
        }
        out
    }
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
