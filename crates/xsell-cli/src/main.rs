//! `xsell`: the command-line front of the workspace. Glue, not a library: it parses flags,
//! installs the tracing subscriber, draws progress bars, and maps errors to exit codes.

/// `println!` that ends the process quietly (exit 0) when stdout's reader has gone
/// (`xsell eval … | head`), instead of panicking on the broken pipe.
macro_rules! outln {
    ($($t:tt)*) => { $crate::stdout_write(format_args!($($t)*), true) };
}

/// `print!` with the same rule as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::stdout_write(format_args!($($t)*), false) };
}

mod attribution;
mod batch;
mod bench;
mod bench_serve;
mod business;
mod client;
mod eval;
mod html;
mod progress;
mod train;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Learns which products are bought together and serves personalized cross-sell offers.
///
/// With no subcommand, trains a model on the sample order log (generated on first use).
#[derive(Debug, Parser)]
#[command(name = "xsell", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a deterministic synthetic order log (parquet, canonical schema).
    Generate(GenerateArgs),
    /// Train a model bundle from parquet order logs.
    Train(train::TrainArgs),
    /// Offline evaluation per the protocol: model and baselines, JSON report.
    Eval(eval::EvalArgs),
    /// Serve the latest model bundle over gRPC.
    Serve(ServeArgs),
    /// Offers for every customer (or a list) from their history and last order, for campaigns (parquet).
    Batch(batch::BatchArgs),
    /// Measure ranking latency, training time and peak memory.
    Bench(bench::BenchArgs),
    /// Load-test a gRPC server over loopback: latency and throughput against the transport's floor.
    BenchServe(bench_serve::BenchServeArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Output parquet file.
    #[arg(long, default_value = train::SAMPLE)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Purchase orders.
    #[arg(long, default_value_t = 10_000)]
    orders: usize,
    /// Registered customers.
    #[arg(long, default_value_t = 500)]
    customers: usize,
    /// Catalog size (rounded up to a multiple of the generator's 24 categories).
    #[arg(long, default_value_t = 192)]
    items: usize,
}

/// `xsell serve`: flags are the top layer of the configuration (defaults → `--config` file →
/// `XSELL_*` environment → flags); each is optional and overrides only its own key.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see `--print-config` for every key and its default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Root directory of model bundles [default: models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Model name, a directory under --models [default: default].
    #[arg(long)]
    name: Option<String>,
    /// Seconds between checks for a new bundle; 0 disables hot reload [default: 2].
    #[arg(long)]
    reload_secs: Option<f64>,
    /// Start without a model; health reports NOT_SERVING until a bundle loads.
    #[arg(long)]
    wait_for_model: bool,
    /// Ranking threads; 0 = one per core [default: 0].
    #[arg(long)]
    compute_threads: Option<usize>,
    /// Ranking calls admitted at once before shedding [default: 256].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Prometheus metrics address; empty disables [default: 127.0.0.1:9464].
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    log_format: Option<String>,
    /// Seconds in-flight calls get on SIGTERM before streams are closed [default: 10].
    #[arg(long)]
    shutdown_grace_secs: Option<f64>,
    /// TLS certificate chain (PEM); with --tls-key turns TLS on.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one per line: every call but health then needs one.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The flags that were given, as a configuration layer.
    fn layer(&self) -> serde_json::Value {
        use serde_json::json;
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("addr", self.addr.map(|a| json!(a.to_string())));
        put("models", self.models.as_ref().map(|p| json!(p)));
        put("name", self.name.as_ref().map(|n| json!(n)));
        put("reload_secs", self.reload_secs.map(|v| json!(v)));
        put("wait_for_model", self.wait_for_model.then_some(json!(true)));
        put("compute_threads", self.compute_threads.map(|v| json!(v)));
        put("max_in_flight", self.max_in_flight.map(|v| json!(v)));
        put("metrics_addr", self.metrics_addr.as_ref().map(|v| json!(v)));
        put("log_format", self.log_format.as_ref().map(|v| json!(v)));
        put("shutdown_grace_secs", self.shutdown_grace_secs.map(|v| json!(v)));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let mut t = json!({ "cert": cert, "key": key });
            if let Some(ca) = &self.tls_client_ca {
                t["client_ca"] = json!(ca);
            }
            put("tls", Some(t));
        }
        put("auth", self.tokens_file.as_ref().map(|f| json!({ "tokens_file": f })));
        serde_json::Value::Object(m)
    }
}

fn init_logging(format: xsell_server::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("XSELL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        // colour codes only for a person at a terminal, never in files or pipes
        xsell_server::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        xsell_server::LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // serving's log format is part of its configuration; every other command logs text (a bad
    // configuration is reported by `run`)
    let format = match &cli.command {
        Some(Command::Serve(a)) => {
            xsell_server::ServeConfig::load(a.config.as_deref(), a.layer()).map(|c| c.log_format).unwrap_or_default()
        }
        _ => Default::default(),
    };
    init_logging(format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn run_serve(cfg: xsell_server::ServeConfig, print_config: bool) -> anyhow::Result<()> {
    if print_config {
        out!("{}", cfg.to_toml());
        return Ok(());
    }
    let dir = cfg.model_dir();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(xsell_server::serve(cfg, shutdown_signal())).with_context(|| format!("serving {}", dir.display()))?;
    tracing::info!("shut down");
    Ok(())
}

fn run(command: Option<Command>) -> anyhow::Result<()> {
    // no subcommand: `train` with every default (the sample log, models/default)
    let command = command.or_else(|| Cli::parse_from(["xsell", "train"]).command).context("no command")?;
    match command {
        Command::Generate(a) => {
            anyhow::ensure!((1..=10_000_000).contains(&a.items), "--items must be within 1..=10000000");
            let cfg = xsell_data::generate::GenerateConfig {
                seed: a.seed,
                orders: a.orders,
                customers: a.customers,
                items_per_category: a.items.div_ceil(xsell_data::generate::CATEGORIES),
                ..Default::default()
            };
            // streamed: memory stays bounded whatever the log's size
            let mut out = xsell_data::BatchWriter::order_log(&a.out)?;
            let mut written = 0;
            xsell_data::generate::generate_batches(&cfg, 1 << 16, &mut |batch| {
                written += batch.len();
                out.write_lines(batch)
            })?;
            out.finish()?;
            outln!("wrote {written} lines ({} orders) to {}", a.orders, a.out.display());
            Ok(())
        }
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchServe(a) => bench_serve::run(a),
        Command::Serve(a) => run_serve(xsell_server::ServeConfig::load(a.config.as_deref(), a.layer())?, a.print_config),
    }
}

/// Writes to stdout; a closed pipe ends the process quietly, another write error with exit 2.
pub(crate) fn stdout_write(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let written = o.write_fmt(args).and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(2);
    }
}

/// The error chain on one line, skipping causes that the message before them already spells out
/// (our library errors embed their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    signal().await;
    tracing::info!("shutdown signal received; draining (a second signal exits at once)");
    tokio::spawn(async {
        signal().await;
        eprintln!("second shutdown signal: exiting now");
        std::process::exit(130);
    });
}

/// Completes on SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
