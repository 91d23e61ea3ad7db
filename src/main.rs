use std::process::ExitCode;

use clap::Parser;
use neo_sessions::{
    cli::{Cli, Command},
    config::Config,
    telemetry::{self, LogTarget},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    neo_sessions_verify::install_crypto_provider();
    let cli = Cli::parse();
    let loaded = match Config::load_with_flags(
        cli.config.as_deref(),
        std::env::vars_os().filter_map(utf8),
        &cli.config_flags(),
    ) {
        Ok(loaded) => loaded,
        // Before logging exists: said once, as text, on stderr.
        Err(error) => {
            eprintln!("neo-sessions: {error}");
            return ExitCode::from(2);
        }
    };
    let log_target = match cli.command {
        Command::Serve { .. } => LogTarget::Stdout,
        _ => LogTarget::Stderr,
    };
    // Only `serve` exports spans. Held until exit: its shutdown exports the last spans, and
    // dropping it flushes the log lines still queued.
    let traces = (log_target == LogTarget::Stdout).then_some(&loaded.config.trace);
    let mut telemetry = match telemetry::init(&loaded.config.log, traces, log_target) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("neo-sessions: {error}");
            return ExitCode::from(2);
        }
    };
    for name in Config::unknown_variables(std::env::vars_os().filter_map(utf8)) {
        tracing::warn!(
            variable = name,
            "unknown NEO_* variable ignored (a typo? see docs/operating.md#configuration)"
        );
    }
    let outcome = neo_sessions::cli::run(cli, loaded).await;
    telemetry.shutdown_traces().await;
    match outcome {
        Ok(code) => code,
        Err(error) => {
            let error = neo_sessions::cli::describe_error(&error);
            // Said once, where the command's messages go: serve's is its last log line (JSON for
            // the collector, or a readable line on a terminal); any other command says it on
            // stderr, as text.
            if log_target == LogTarget::Stdout {
                tracing::error!(fatal = true, "{error}");
            } else {
                eprintln!("neo-sessions: {error}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Variables whose name and value are text (others cannot be settings).
fn utf8((name, value): (std::ffi::OsString, std::ffi::OsString)) -> Option<(String, String)> {
    Some((name.into_string().ok()?, value.into_string().ok()?))
}
