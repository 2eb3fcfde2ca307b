//! The gRPC server: `xsell.v1.CrossSell` over tonic, plus the standard health and reflection
//! (v1 and v1alpha) services, Prometheus metrics, hot reload of model bundles and graceful
//! shutdown.
//!
//! **Invariant:** this is the only crate that converts between protobuf messages and core types
//! ([`convert`]). It never needs burn: models come from `xsell-model` bundles.
//!
//! **Invariant:** ranking never runs on the async I/O threads: it runs on the bounded
//! [`compute`] pool, behind admission control, so health checks and cheap calls stay responsive
//! while heavy calls run, and overload is shed instead of queued without bound.
//!
//! The served model is an immutable `Arc` snapshot ([`ModelStore`]); a reload builds the new
//! snapshot off to the side and swaps the pointer, so a request always sees one whole model.

pub mod auth;
pub mod compute;
pub mod config;
pub mod convert;
pub mod exposure;
pub mod metrics;
mod service;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{ConfigError, LogFormat, ServeConfig};
pub use metrics::Metrics;
pub use service::{CrossSellService, MAX_REQUEST_ID};
pub use store::{ModelStore, ReloadOutcome, Served};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use xsell_proto::v1::cross_sell_server::CrossSellServer;

/// The health service name of the ranking API.
pub const SERVICE: &str = "xsell.v1.CrossSell";

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No loadable model at start.
    #[error("no model to serve: {0}")]
    Model(#[from] xsell_model::BundleError),
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Transport failure.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Socket error.
    #[error("{addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file a configuration key names (TLS, exposure log) could not be read or written.
    #[error("configuration key '{key}': {path}: {source}")]
    Tls {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The ranking pool could not start.
    #[error("starting the ranking pool: {0}")]
    Pool(std::io::Error),
}

/// A server with its sockets bound and its model loaded, not yet serving.
#[derive(Debug)]
pub struct Bound {
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    store: Arc<ModelStore>,
    metrics: Arc<Metrics>,
}

impl Bound {
    /// The gRPC address (the real port of `127.0.0.1:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.addr)
    }

    /// The metrics address, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The model store.
    pub fn store(&self) -> Arc<ModelStore> {
        self.store.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Loads the model and binds the listeners (so callers can learn the ports of `127.0.0.1:0`).
/// With `wait_for_model`, a missing or broken bundle is logged and the server starts without one.
pub async fn bind(cfg: &ServeConfig) -> Result<Bound, ServeError> {
    cfg.validate()?;
    let dir = cfg.model_dir();
    let store = match ModelStore::open(&dir) {
        Ok(s) => s,
        Err(e) if cfg.wait_for_model => {
            tracing::warn!(reason = %e, "no model to serve yet; health reports NOT_SERVING until a bundle loads");
            ModelStore::empty(&dir)
        }
        Err(e) => return Err(e.into()),
    };
    let listener = listen(cfg.addr).await?;
    let metrics_listener = match cfg.metrics() {
        Some(a) => Some(listen(a).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    if let Some(s) = store.current() {
        metrics.set_model(&s.bundle.manifest.version, s.written);
    }
    Ok(Bound { cfg: cfg.clone(), listener, metrics_listener, store: Arc::new(store), metrics })
}

fn tls(cfg: &config::Tls) -> Result<tonic::transport::ServerTlsConfig, ServeError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |key: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|source| ServeError::Tls { key, path: p.display().to_string(), source })
    };
    let mut t = ServerTlsConfig::new().identity(Identity::from_pem(read("tls.cert", &cfg.cert)?, read("tls.key", &cfg.key)?));
    if let Some(ca) = &cfg.client_ca {
        t = t.client_ca_root(Certificate::from_pem(read("tls.client_ca", ca)?));
    }
    Ok(t)
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE, status).await;
}

/// Serves until `shutdown` completes, then drains: health goes NOT_SERVING at once, in-flight
/// calls get `shutdown_grace_secs` to finish, then open streams are closed with UNAVAILABLE, and
/// connections still open a moment later are dropped.
pub async fn serve_on(bound: Bound, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let Bound { cfg, listener, metrics_listener, store, metrics } = bound;
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, if store.current().is_some() { ServingStatus::Serving } else { ServingStatus::NotServing }).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(xsell_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("the embedded descriptor sets are valid");

    let (drain_tx, drain_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    let compute = compute::Compute::new(
        cfg.threads(),
        cfg.bulk_threads(),
        cfg.max_in_flight,
        (Duration::from_micros(cfg.compute_linger_us), Duration::from_micros(cfg.compute_slice_us)),
        metrics.clone(),
    )
    .map_err(ServeError::Pool)?;
    let exposures = exposure::ExposureLog::start(&cfg.exposures, metrics.clone()).map_err(|source| ServeError::Tls {
        key: "exposures.dir",
        path: cfg.exposures.dir.clone(),
        source,
    })?;
    if exposures.is_some() {
        tracing::info!(dir = %cfg.exposures.dir, "exposure log on");
    }
    let answers = service::Answers { policies: cfg.policies.clone(), exposures };
    let service =
        CrossSellService::new(store.clone(), compute, metrics.clone(), cfg.limits.clone(), answers, cfg.http2.stream_read_ahead, close_rx);
    let auth = auth::Auth::new(&cfg.tokens()?);
    if auth.enabled() {
        tracing::info!("bearer-token authentication on (health checks exempt)");
    }
    let check = move |req| auth.check(req);
    let bytes = cfg.limits.max_message_bytes;
    let api = InterceptedService::new(
        CrossSellServer::new(service).max_decoding_message_size(bytes).max_encoding_message_size(bytes),
        check.clone(),
    );

    let reload_interval = ServeConfig::secs(cfg.reload_secs);
    let reloader = (!reload_interval.is_zero()).then(|| {
        let (store, metrics, reporter) = (store.clone(), metrics.clone(), reporter.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = store.clone();
                // loading reads files and validates arrays: keep it off the async workers
                match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(ReloadOutcome::Loaded(_)) => {
                        metrics.reloads.get_or_create(&metrics::OutcomeLabel { outcome: "loaded" }).inc();
                        if let Some(s) = store.current() {
                            metrics.set_model(&s.bundle.manifest.version, s.written);
                        }
                        set_health(&reporter, ServingStatus::Serving).await;
                    }
                    Ok(ReloadOutcome::Refused { .. }) => {
                        metrics.reloads.get_or_create(&metrics::OutcomeLabel { outcome: "refused" }).inc();
                    }
                    Ok(ReloadOutcome::Unchanged) | Err(_) => {}
                }
            }
        })
    });

    // shutdown sequence
    let grace = ServeConfig::secs(cfg.shutdown_grace_secs);
    tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    });
    let drained = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|d| *d).await;
    };
    {
        let reporter = reporter.clone();
        let rx = drain_rx.clone();
        tokio::spawn(async move {
            drained(rx).await;
            set_health(&reporter, ServingStatus::NotServing).await;
            tracing::info!(grace_secs = grace.as_secs_f64(), "draining: health NOT_SERVING, in-flight calls finishing");
            tokio::time::sleep(grace).await;
            let _ = close_tx.send(true);
        });
    }
    let metrics_task = metrics_listener.map(|l| {
        let (m, rx) = (metrics.clone(), drain_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, m, drained(rx)).await {
                tracing::warn!(error = %e, "the metrics endpoint stopped");
            }
        })
    });

    let h = &cfg.http2;
    let keepalive = (h.keepalive_interval_secs > 0.0).then(|| ServeConfig::secs(h.keepalive_interval_secs));
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(ServeConfig::secs(h.keepalive_timeout_secs)))
        .initial_stream_window_size(h.stream_window_bytes)
        .initial_connection_window_size(h.connection_window_bytes)
        .max_concurrent_streams(h.max_concurrent_streams)
        .timeout(ServeConfig::secs(cfg.request_timeout_secs))
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()));
    if let Some(t) = &cfg.tls {
        builder = builder.tls_config(tls(t)?)?;
    }
    // accepted sockets get TCP_NODELAY: without it a response's last frames wait for the
    // client's delayed ACK (~40 ms per call)
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));
    let server = builder
        .add_service(health)
        .add_service(InterceptedService::new(reflection_v1, check.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, check))
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, drained(drain_rx.clone()));
    let backstop = async {
        drained(drain_rx).await;
        tokio::time::sleep(grace + Duration::from_secs(2)).await;
    };
    let result = tokio::select! {
        r = server => r.map_err(ServeError::from),
        _ = backstop => {
            tracing::warn!("connections still open after the grace period; dropping them");
            Ok(())
        }
    };
    if let Some(r) = reloader {
        r.abort();
    }
    if let Some(m) = metrics_task {
        m.abort();
    }
    result
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(cfg: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let bound = bind(&cfg).await?;
    let version = bound.store.current().map(|s| s.bundle.manifest.version.clone()).unwrap_or_else(|| "(none yet)".into());
    tracing::info!(
        addr = %bound.local_addr(),
        metrics = ?bound.metrics_addr(),
        model = %cfg.name,
        %version,
        threads = cfg.threads(),
        tls = cfg.tls.is_some(),
        "serving"
    );
    serve_on(bound, shutdown).await
}
