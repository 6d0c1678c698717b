//! The library half of `ragpipe-cli`: the commands whose engines other binaries drive too (the
//! benchmarks of `ragpipe-bench` run `reprocess` and `eval`'s corpus, and start the workers as
//! `ragpipe worker` does), and the process setup every ragpipe binary shares.

pub mod eval;
pub mod reprocess;
pub mod shutdown;
pub mod workers;

use anyhow::Context;
use ragpipe_core::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// The configuration flag of every ragpipe binary (flattened into its command line).
#[derive(clap::Args, Debug)]
pub struct ConfigFlag {
    /// Configuration file (default: ./ragpipe.toml when it exists, or $RAGPIPE_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Runs a binary's command: tracing to stderr (filter `RAGPIPE_LOG`), a multi-threaded runtime,
/// the configuration (environment, then the file of `flag`), then `command` with it; on an error,
/// its one-line chain of causes and a failing exit code.
pub fn run_main<F>(flag: ConfigFlag, command: impl FnOnce(Config) -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<ExitCode>>,
{
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let main = async {
        let config = Config::load(flag.config.as_deref()).context("reading configuration")?;
        command(config).await
    };
    match runtime.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAGPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lopdf=off,sqlx::postgres::notice=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
