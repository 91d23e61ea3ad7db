//! Logging: JSON lines when stdout is not a terminal, human-readable otherwise.

use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{
    fmt::{
        self,
        format::{FormatEvent, FormatFields, JsonFields, Writer},
        FmtContext, FormattedFields,
    },
    prelude::*,
    registry::LookupSpan,
    EnvFilter,
};

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
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(writer),
            )
            .try_init()?;
    } else {
        registry.with(fmt::layer().with_writer(writer)).try_init()?;
    }
    Ok(guard)
}

/// One JSON object per line: `timestamp`, `level`, the event's fields (`message` among them),
/// `target`, and the current span's fields under `span` with its `name`, as
/// tracing-subscriber's JSON format with `flatten_event` and `with_current_span` writes them.
/// The span's fields are already JSON (formatted once, when the span was made): they are
/// copied in as they are, where that format parses them back into a value and serialises them
/// again for every line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"{}\"",
            metadata.level()
        )?;
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        write_members(&mut writer, &fields)?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, metadata.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            let mut wrote = false;
            if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                let members = object_members(&fields.fields);
                if !members.is_empty() {
                    writer.write_str(members)?;
                    wrote = true;
                }
            }
            writer.write_str(if wrote { ",\"name\":" } else { "\"name\":" })?;
            write_json_str(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// The members of a JSON object as `JsonFields` writes it (`{...}`), without the braces.
fn object_members(object: &str) -> &str {
    object
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or("")
}

/// `,` and the members of `object`, if it has any.
fn write_members(writer: &mut Writer<'_>, object: &str) -> std::fmt::Result {
    let members = object_members(object);
    if members.is_empty() {
        return Ok(());
    }
    writer.write_char(',')?;
    writer.write_str(members)
}

fn write_json_str(writer: &mut Writer<'_>, text: &str) -> std::fmt::Result {
    let quoted = serde_json::to_string(text).map_err(|_| std::fmt::Error)?;
    writer.write_str(&quoted)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .expect("utf-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect()
    }

    #[test]
    fn lines_are_json_with_the_event_flattened_and_the_span_nested() {
        let lines = lines(|| {
            tracing::info!(count = 3, "outside \"any\" span");
            let span = tracing::info_span!("request", id = "a\"b\\c\nd", n = 7);
            span.in_scope(|| tracing::warn!(cause = %"x\"y", "refused"));
            tracing::info_span!("empty").in_scope(|| tracing::info!("in an empty span"));
        });
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["message"], "outside \"any\" span");
        assert_eq!(lines[0]["count"], 3);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0]["target"].as_str().is_some());
        assert!(lines[0].get("span").is_none());
        let timestamp = lines[0]["timestamp"].as_str().expect("timestamp");
        assert!(timestamp.ends_with('Z'), "{timestamp}");
        assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["cause"], "x\"y");
        assert_eq!(lines[1]["span"]["id"], "a\"b\\c\nd");
        assert_eq!(lines[1]["span"]["n"], 7);
        assert_eq!(lines[1]["span"]["name"], "request");
        assert_eq!(lines[2]["span"], serde_json::json!({"name": "empty"}));
    }
}
