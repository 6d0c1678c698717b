//! The library half of `ragpipe-cli`: the commands whose engines other binaries drive too (the
//! benchmarks of `ragpipe-bench` run `reprocess` and `eval`'s corpus, and start the workers as
//! `ragpipe worker` does), and the process setup every ragpipe binary shares.

pub mod eval;
pub mod reprocess;
pub mod shutdown;
pub mod workers;

use std::process::ExitCode;

/// Runs a binary's `main` future: tracing to stderr (filter `RAGPIPE_LOG`), a multi-threaded
/// runtime, and on an error its one-line chain of causes and a failing exit code.
pub fn run_main(main: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
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
