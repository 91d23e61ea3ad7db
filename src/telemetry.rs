//! Logging: JSON lines when stdout is not a terminal, human-readable otherwise.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Where log lines go: `serve` logs to stdout (the container convention); the other commands log
/// to stderr so that their stdout carries only their output (e.g. the key `api-key create` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

pub fn init(config: &LogConfig, target: LogTarget) -> anyhow::Result<()> {
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
    let writer = move || -> Box<dyn std::io::Write> {
        match target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::Stderr => Box::new(std::io::stderr()),
        }
    };
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
    Ok(())
}
