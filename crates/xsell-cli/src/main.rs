//! `xsell`: the command-line front of the workspace. Glue, not a library: it parses flags,
//! installs the tracing subscriber, draws progress bars, and maps errors to exit codes.

mod bench;
mod eval;
mod progress;
mod train;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Measure ranking latency, training time and peak memory.
    Bench(bench::BenchArgs),
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
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "XSELL_ADDR", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Root directory of model bundles.
    #[arg(long, env = "XSELL_MODELS", default_value = "models")]
    models: PathBuf,
    /// Model name (a directory under --models).
    #[arg(long, env = "XSELL_MODEL_NAME", default_value = "default")]
    name: String,
    /// Seconds between checks for a new bundle (0 disables hot reload).
    #[arg(long, env = "XSELL_RELOAD_SECS", default_value_t = 2.0)]
    reload_secs: f64,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XSELL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // no subcommand: `train` with every default (the sample log, models/default)
    let command = cli.command.or_else(|| Cli::parse_from(["xsell", "train"]).command).context("no command")?;
    match command {
        Command::Generate(a) => {
            let cfg = xsell_data::generate::GenerateConfig { seed: a.seed, orders: a.orders, customers: a.customers, ..Default::default() };
            let (lines, _) = xsell_data::generate::generate(&cfg);
            xsell_data::write_lines(&a.out, &lines)?;
            println!("wrote {} lines ({} orders) to {}", lines.len(), a.orders, a.out.display());
            Ok(())
        }
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => {
            anyhow::ensure!(a.reload_secs.is_finite() && a.reload_secs >= 0.0, "--reload-secs must be a non-negative number");
            let cfg = xsell_server::ServeConfig {
                addr: a.addr,
                model_dir: a.models.join(&a.name),
                reload_interval: Duration::from_secs_f64(a.reload_secs),
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
            rt.block_on(xsell_server::serve(cfg, shutdown_signal()))
                .with_context(|| format!("serving {}", a.models.join(&a.name).display()))?;
            tracing::info!("shut down");
            Ok(())
        }
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
