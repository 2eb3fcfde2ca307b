//! The gRPC server: `xsell.v1.CrossSell` over tonic, plus the standard health and reflection
//! services, hot reload of model bundles and graceful shutdown.
//!
//! **Invariant:** this is the only crate that converts between protobuf messages and core types
//! ([`convert`]). It never needs burn: models come from `xsell-model` bundles.
//!
//! The served model is an immutable `Arc<Bundle>` snapshot ([`ModelStore`]); a reload builds the
//! new snapshot off to the side and swaps the pointer, so a request always sees one whole model.

pub mod convert;
mod service;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use service::CrossSellService;
pub use store::{ModelStore, ReloadOutcome};
use tokio_stream::wrappers::TcpListenerStream;
use xsell_proto::v1::cross_sell_server::CrossSellServer;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// `models/<name>`: the directory whose `latest` bundle is served.
    pub model_dir: PathBuf,
    /// How often `latest` is checked for a new bundle (zero disables hot reload).
    pub reload_interval: Duration,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No loadable model at start.
    #[error("no model to serve: {0}")]
    Model(#[from] xsell_model::BundleError),
    /// Transport failure (binding the address, ...).
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
}

/// Binds the listener (so callers can learn the port of `127.0.0.1:0`) and returns it with the store.
pub async fn bind(cfg: &ServeConfig) -> Result<(tokio::net::TcpListener, Arc<ModelStore>), ServeError> {
    let store = Arc::new(ModelStore::open(&cfg.model_dir)?);
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.map_err(|source| ServeError::Bind { addr: cfg.addr, source })?;
    Ok((listener, store))
}

/// Serves on a bound listener until `shutdown` completes; in-flight requests are finished first.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    store: Arc<ModelStore>,
    reload_interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CrossSellServer<CrossSellService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(xsell_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let reloader = (!reload_interval.is_zero()).then(|| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = store.clone();
                // loading reads files and validates arrays: keep it off the async workers
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
        })
    });
    let service = CrossSellServer::new(CrossSellService::new(store));
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    if let Some(r) = reloader {
        r.abort();
    }
    Ok(result?)
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(cfg: ServeConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let (listener, store) = bind(&cfg).await?;
    let b = store.current();
    tracing::info!(addr = %cfg.addr, model = %b.manifest.name, version = %b.manifest.version, items = b.manifest.n_items, "serving");
    serve_on(listener, store, cfg.reload_interval, shutdown).await
}
