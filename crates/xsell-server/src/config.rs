//! Serving configuration: one validated type, loaded in layers (built-in defaults → a TOML file →
//! `XSELL_*` environment variables → command-line flags) with figment.
//!
//! Every key has a default, so an empty configuration serves `models/default` on loopback.
//! Unknown keys in the file are refused with the list of known ones; [`ServeConfig::validate`]
//! checks every range once at startup and names the key it refuses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use xsell_core::Policies;

/// Everything `xsell serve` can be told. Field names are the file's keys; nested tables are
/// `[limits]`, `[http2]`, `[tls]` and `[auth]`; in the environment a key is `XSELL_<KEY>` and a
/// nested one `XSELL_<TABLE>__<KEY>` (e.g. `XSELL_LIMITS__MAX_BATCH=100`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on. Loopback by default: exposing the service is a decision.
    pub addr: SocketAddr,
    /// Root directory of model bundles.
    pub models: PathBuf,
    /// Model name: the directory under `models` whose `latest` bundle is served.
    pub name: String,
    /// Seconds between checks of `latest` for a new bundle (0 disables hot reload).
    pub reload_secs: f64,
    /// Start even when no bundle can be loaded yet: health answers NOT_SERVING and ranking calls
    /// UNAVAILABLE until one appears (needs hot reload).
    pub wait_for_model: bool,
    /// Threads of the interactive ranking pool (0: one per core). Ranking never runs on the I/O
    /// threads.
    pub compute_threads: usize,
    /// Threads of the bulk pool that runs `RankBatch` calls and very large requests, so that small
    /// calls never wait behind them (0: half the cores, at least one).
    pub bulk_threads: usize,
    /// On a quiet server (one call in flight, nothing else ranking): microseconds the I/O task
    /// polls for a ranking job's answer, and the ranking thread that ran it keeps looking for
    /// the next job, before each goes to sleep, yielding its core meanwhile (0: both sleep at
    /// once). Waking sleeping threads cost a lone caller ~0.1–0.15 ms a `Rank` on a VM.
    pub compute_linger_us: u64,
    /// Time slice, in microseconds, the interactive ranking threads ask the scheduler for (Linux
    /// 6.12+; older kernels ignore it): a short slice lets a woken ranking thread preempt busy
    /// threads sooner, which bounds a small call's wait for a core under heavy load (0: the
    /// kernel's default).
    pub compute_slice_us: u64,
    /// Ranking calls admitted at once, running or queued for the pool; beyond it a call is shed
    /// with RESOURCE_EXHAUSTED at once instead of waiting in an unbounded queue.
    pub max_in_flight: usize,
    /// Longest time any call may take when the client sets no deadline (seconds); a client's
    /// shorter `grpc-timeout` wins.
    pub request_timeout_secs: f64,
    /// On SIGTERM/SIGINT: how long in-flight calls may finish before open streams are closed
    /// (seconds). A second signal exits at once.
    pub shutdown_grace_secs: f64,
    /// Prometheus metrics over HTTP at `http://<metrics_addr>/metrics`; empty disables them.
    pub metrics_addr: String,
    /// Process log format: `text` (colour only on a terminal) or `json` (one object a line).
    pub log_format: LogFormat,
    /// Per-request work budget.
    pub limits: Limits,
    /// HTTP/2 transport settings.
    pub http2: Http2,
    /// TLS; plaintext when absent.
    pub tls: Option<Tls>,
    /// Bearer-token authentication; every call but the health check needs a token when any is
    /// configured.
    pub auth: Auth,
    /// Business rules per touchpoint, `[policies.<touchpoint>]` (`unspecified`, `product_page`,
    /// `cart`, `checkout`, `post_purchase`, `email`): offer budget, minimum probability, price
    /// ceiling, objective, per-category cap, return-risk rules. A table sets only the keys it
    /// names; the others keep that touchpoint's defaults. Changing them needs no retraining.
    pub policies: Policies,
    /// The exposure log, `[exposures]`: `dir` (empty: off), `max_file_bytes`, `queue`.
    pub exposures: crate::exposure::ExposureConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Bounds on what one call may ask of the server. A call over a bound is refused before any
/// ranking is done, with a message naming the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most requests in one `RankBatch`.
    pub max_batch: usize,
    /// Most offers one `RankBatch` may ask for (the sum of its `k`s): bounds the response.
    pub max_batch_offers: usize,
    /// Most work units one request may cost: candidates (the model's budget, or the
    /// allow-list) × (basket items + 16 features), the size of the score matrix ranking fills,
    /// plus 1024 per basket item for the candidate sources (RESOURCE_EXHAUSTED beyond it).
    pub max_request_work: u64,
    /// Most work units one `RankBatch` may cost in all.
    pub max_batch_work: u64,
    /// Single requests costing more than this run on the bulk pool, beside batches.
    pub bulk_request_work: u64,
    /// Largest message the server decodes or encodes, in bytes.
    pub max_message_bytes: usize,
}

/// HTTP/2 settings, chosen so that a fast streaming client is served rather than dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2 {
    /// Concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Flow-control window per stream, bytes.
    pub stream_window_bytes: u32,
    /// Flow-control window per connection, bytes. The HTTP/2 library tolerates unread small DATA
    /// frames up to half of it (its anti-flood budget), so it is sized for thousands of small
    /// streamed messages in flight.
    pub connection_window_bytes: u32,
    /// Interval of HTTP/2 keepalive pings, seconds (0 disables them).
    pub keepalive_interval_secs: f64,
    /// A ping unanswered this long closes the connection, seconds.
    pub keepalive_timeout_secs: f64,
    /// Messages a `RankStream` reads ahead of the one being ranked, so the transport's buffers
    /// drain while ranking runs.
    pub stream_read_ahead: usize,
}

/// TLS from PEM files (rustls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Where bearer tokens come from. Tokens are secrets: they are never part of the file itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// A file with one token per line (blank lines and `#` comments skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// The name of an environment variable holding comma-separated tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_env: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            models: PathBuf::from("models"),
            name: "default".into(),
            reload_secs: 2.0,
            wait_for_model: false,
            compute_threads: 0,
            bulk_threads: 0,
            compute_linger_us: 500,
            compute_slice_us: 100,
            max_in_flight: 256,
            request_timeout_secs: 30.0,
            shutdown_grace_secs: 10.0,
            metrics_addr: "127.0.0.1:9464".into(),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            http2: Http2::default(),
            tls: None,
            auth: Auth::default(),
            policies: Policies::default(),
            exposures: Default::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch: 10_000,
            max_batch_offers: 200_000,
            max_request_work: 50_000_000,
            max_batch_work: 500_000_000,
            bulk_request_work: 4_000_000,
            max_message_bytes: 16 << 20,
        }
    }
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            max_concurrent_streams: 256,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 8 << 20,
            keepalive_interval_secs: 30.0,
            keepalive_timeout_secs: 10.0,
            stream_read_ahead: 256,
        }
    }
}

/// A refused configuration, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range.
    #[error("configuration key '{key}': {reason}")]
    Invalid {
        /// The dotted key, e.g. `limits.max_batch`.
        key: &'static str,
        /// What was expected.
        reason: String,
    },
    /// A policy key's value is out of range.
    #[error("configuration key '{key}': {reason}")]
    Policy {
        /// The dotted key, e.g. `policies.checkout.min_probability`.
        key: String,
        /// What was expected.
        reason: String,
    },
    /// The layers could not be read or merged (unknown key, wrong type, unreadable file).
    #[error("configuration: {0}")]
    Load(String),
}

/// Top-level keys, for the environment layer (other `XSELL_*` variables belong to other commands).
const KEYS: &[&str] = &[
    "addr",
    "models",
    "name",
    "reload_secs",
    "wait_for_model",
    "compute_threads",
    "bulk_threads",
    "compute_linger_us",
    "compute_slice_us",
    "max_in_flight",
    "request_timeout_secs",
    "shutdown_grace_secs",
    "metrics_addr",
    "log_format",
    "limits",
    "http2",
    "tls",
    "auth",
    "policies",
    "exposures",
];

impl ServeConfig {
    /// Loads defaults, then `file` (TOML) when given, then `XSELL_*` environment variables, then
    /// `flags` (a serializable struct whose unset fields are skipped), and validates the result.
    /// `XSELL_MODEL_NAME` is accepted for `name`, as earlier releases read it.
    pub fn load(file: Option<&Path>, flags: impl Serialize) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(ConfigError::Load(format!("{}: no such configuration file", f.display())));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        let env = Env::prefixed("XSELL_")
            .map(|k| if k.as_str().eq_ignore_ascii_case("model_name") { "name".into() } else { k.into() })
            .filter(|k| KEYS.contains(&k.as_str().split("__").next().unwrap_or_default().to_ascii_lowercase().as_str()))
            .split("__");
        let cfg: ServeConfig = fig.merge(env).merge(Serialized::defaults(flags)).extract().map_err(|e| ConfigError::Load(one_line(&e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every range; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        let secs = |v: f64| v.is_finite() && (0.0..=86_400.0).contains(&v);
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return bad("name", "must be a plain directory name under `models`");
        }
        if !secs(self.reload_secs) {
            return bad("reload_secs", "must be a number of seconds within [0, 86400]");
        }
        if self.wait_for_model && self.reload_secs == 0.0 {
            return bad("wait_for_model", "needs hot reload (reload_secs > 0) to ever pick up a model");
        }
        if self.compute_threads > 1024 {
            return bad("compute_threads", "must be at most 1024 (0: one per core)");
        }
        if self.bulk_threads > 1024 {
            return bad("bulk_threads", "must be at most 1024 (0: half the cores)");
        }
        if self.compute_linger_us > 100_000 {
            return bad("compute_linger_us", "must be at most 100000 (0.1 s; 0: no polling, threads sleep as soon as they wait)");
        }
        if self.compute_slice_us != 0 && !(100..=100_000).contains(&self.compute_slice_us) {
            return bad("compute_slice_us", "must be 0 (the kernel's default) or within [100, 100000] (the kernel's bounds)");
        }
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            return bad("max_in_flight", "must be within [1, 1000000]");
        }
        if !secs(self.request_timeout_secs) || self.request_timeout_secs == 0.0 {
            return bad("request_timeout_secs", "must be a positive number of seconds, at most 86400");
        }
        if !secs(self.shutdown_grace_secs) {
            return bad("shutdown_grace_secs", "must be a number of seconds within [0, 86400]");
        }
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<SocketAddr>().is_err() {
            return bad("metrics_addr", "must be host:port (an IP address), or empty to disable metrics");
        }
        let l = &self.limits;
        if !(1..=1_000_000).contains(&l.max_batch) {
            return bad("limits.max_batch", "must be within [1, 1000000]");
        }
        if l.max_batch_offers == 0 {
            return bad("limits.max_batch_offers", "must be at least 1");
        }
        if l.max_request_work == 0 {
            return bad("limits.max_request_work", "must be at least 1");
        }
        if l.max_batch_work < l.max_request_work {
            return bad("limits.max_batch_work", "must be at least limits.max_request_work");
        }
        if !(4096..=(1 << 30)).contains(&l.max_message_bytes) {
            return bad("limits.max_message_bytes", "must be within [4096, 1073741824]");
        }
        let h = &self.http2;
        if h.max_concurrent_streams == 0 {
            return bad("http2.max_concurrent_streams", "must be at least 1");
        }
        // RFC 9113 §6.9.2: windows are at least 65,535 and at most 2³¹ − 1 bytes
        if !(65_535..=i32::MAX as u32).contains(&h.stream_window_bytes) {
            return bad("http2.stream_window_bytes", "must be within [65535, 2147483647]");
        }
        if !(65_535..=i32::MAX as u32).contains(&h.connection_window_bytes) {
            return bad("http2.connection_window_bytes", "must be within [65535, 2147483647]");
        }
        if !secs(h.keepalive_interval_secs) {
            return bad("http2.keepalive_interval_secs", "must be a number of seconds within [0, 86400]");
        }
        if !secs(h.keepalive_timeout_secs) || h.keepalive_timeout_secs == 0.0 {
            return bad("http2.keepalive_timeout_secs", "must be a positive number of seconds, at most 86400");
        }
        if !(1..=65_536).contains(&h.stream_read_ahead) {
            return bad("http2.stream_read_ahead", "must be within [1, 65536]");
        }
        if self.exposures.max_file_bytes < 4096 {
            return bad("exposures.max_file_bytes", "must be at least 4096");
        }
        if !(1..=10_000_000).contains(&self.exposures.queue) {
            return bad("exposures.queue", "must be within [1, 10000000]");
        }
        if self.auth.tokens_env.as_deref().is_some_and(str::is_empty) {
            return bad("auth.tokens_env", "must name an environment variable");
        }
        self.policies.validate().map_err(|e| match e {
            xsell_core::Error::Config { key, reason } => ConfigError::Policy { key, reason },
            other => ConfigError::Load(other.to_string()),
        })
    }

    /// `models/<name>`.
    pub fn model_dir(&self) -> PathBuf {
        self.models.join(&self.name)
    }

    /// Ranking pool threads, resolving 0 to the cores available.
    pub fn threads(&self) -> usize {
        match self.compute_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }

    /// Bulk pool threads, resolving 0 to half the cores (at least one).
    pub fn bulk_threads(&self) -> usize {
        match self.bulk_threads {
            0 => (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1),
            n => n,
        }
    }

    /// The metrics address, if metrics are on.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics_addr.parse().ok()
    }

    /// Seconds as a duration (validated finite and non-negative).
    pub(crate) fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v.max(0.0))
    }

    /// The effective configuration as TOML, for `xsell serve --print-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    /// The bearer tokens configured (none: authentication off).
    pub fn tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = Vec::new();
        if let Some(f) = &self.auth.tokens_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| ConfigError::Invalid { key: "auth.tokens_file", reason: format!("{}: {e}", f.display()) })?;
            tokens.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
        }
        if let Some(var) = &self.auth.tokens_env {
            let v = std::env::var(var)
                .map_err(|_| ConfigError::Invalid { key: "auth.tokens_env", reason: format!("environment variable {var} is not set") })?;
            tokens.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from));
        }
        if (self.auth.tokens_file.is_some() || self.auth.tokens_env.is_some()) && tokens.is_empty() {
            return Err(ConfigError::Invalid { key: "auth", reason: "token source configured but it holds no token".into() });
        }
        Ok(tokens)
    }
}

/// Figment's error with every message on one line.
fn one_line(e: &figment::Error) -> String {
    e.clone().into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_load_and_validate() {
        let cfg = ServeConfig::load(None, serde_json::json!({})).unwrap();
        assert_eq!(cfg, ServeConfig::default());
        assert!(cfg.addr.ip().is_loopback(), "loopback is the default");
        // the printed configuration reads back as the same configuration
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serve.toml");
        std::fs::write(&f, cfg.to_toml()).unwrap();
        assert_eq!(ServeConfig::load(Some(&f), serde_json::json!({})).unwrap(), cfg);
    }

    #[test]
    fn layers_override_in_order_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serve.toml");
        std::fs::write(&f, "name = \"from-file\"\nmax_in_flight = 7\n[limits]\nmax_batch = 100\n").unwrap();
        let cfg = ServeConfig::load(Some(&f), serde_json::json!({ "max_in_flight": 9 })).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.max_in_flight, cfg.limits.max_batch), ("from-file", 9, 100), "flags win over the file");

        std::fs::write(&f, "bogus_key = 1\n").unwrap();
        let e = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("bogus_key") && e.contains("max_in_flight"), "names the key and the known ones: {e}");
        std::fs::write(&f, "[limits]\nmax_batch = 0\n").unwrap();
        let e = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("limits.max_batch"), "{e}");
        std::fs::write(&f, "reload_secs = \"soon\"\n").unwrap();
        let e = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("reload_secs"), "{e}");
        let e = ServeConfig::load(Some(&dir.path().join("missing.toml")), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        for (key, value) in [
            ("metrics_addr", serde_json::json!("not an address")),
            ("http2", serde_json::json!({ "stream_window_bytes": 10 })),
            ("request_timeout_secs", serde_json::json!(-1.0)),
            ("name", serde_json::json!("../escape")),
            ("compute_linger_us", serde_json::json!(200_000)),
            ("compute_slice_us", serde_json::json!(50)),
        ] {
            let e = ServeConfig::load(None, serde_json::json!({ key: value })).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn a_policy_table_sets_only_its_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serve.toml");
        std::fs::write(&f, "[policies.checkout]\nmin_probability = 0.2\nobjective = \"expected_value\"\n").unwrap();
        let cfg = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap();
        let (got, default) = (cfg.policies.checkout, Policies::default().checkout);
        assert_eq!((got.min_probability, got.objective), (0.2, xsell_core::Objective::ExpectedValue));
        assert_eq!(
            (got.max_offers, got.max_price_ratio),
            (default.max_offers, default.max_price_ratio),
            "the other keys keep the checkout defaults"
        );
        assert_eq!(cfg.policies.cart, Policies::default().cart);
        std::fs::write(&f, "[policies.cart]\nmin_probability = 1.5\n").unwrap();
        let e = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("policies.cart.min_probability"), "{e}");
        std::fs::write(&f, "[policies.cart]\nmax_offer = 2\n").unwrap();
        let e = ServeConfig::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("max_offer"), "{e}");
    }

    #[test]
    fn tokens_come_from_a_file_and_an_empty_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# comment\n a \n\nb\n").unwrap();
        let cfg = ServeConfig { auth: Auth { tokens_file: Some(f.clone()), tokens_env: None }, ..Default::default() };
        assert_eq!(cfg.tokens().unwrap(), ["a", "b"]);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(cfg.tokens().unwrap_err().to_string().contains("auth"));
        let auth = crate::auth::Auth::new(&["a".into(), "b".into()]);
        assert!(auth.accepts("a") && auth.accepts("b") && !auth.accepts("c") && !auth.accepts(""));
    }
}
