//! Logging: JSON lines when stdout is not a terminal, human-readable otherwise.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Where log lines go: `serve` logs to stdout (the container convention); the other commands log
/// to stderr so that their stdout carries only their output (e.g. the key `api-key create` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the subscriber. Lines are formatted on the calling thread and written by a
/// background thread through a buffer flushed whenever no more lines are queued, so a request
/// never waits on a write syscall (or on a slow pipe). Keep the guard until exit: dropping it
/// flushes what is left.
pub fn init(config: &LogConfig, target: LogTarget) -> anyhow::Result<WorkerGuard> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration: log.filter: {e} (environment variable NEO_LOG_FILTER)"
        )
    })?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => match target {
            LogTarget::Stdout => !std::io::stdout().is_terminal(),
            LogTarget::Stderr => !std::io::stderr().is_terminal(),
        },
    };
    let sink: Box<dyn std::io::Write + Send> = match target {
        LogTarget::Stdout => Box::new(std::io::BufWriter::new(std::io::stdout())),
        LogTarget::Stderr => Box::new(std::io::BufWriter::new(std::io::stderr())),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Under a flood, drop log lines rather than block requests; the drop is counted.
        .lossy(true)
        .finish(sink);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()?;
    } else {
        registry.with(fmt::layer().with_writer(writer)).try_init()?;
    }
    Ok(guard)
}
