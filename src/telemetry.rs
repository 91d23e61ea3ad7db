//! Logging (JSON lines when stdout is not a terminal, human-readable otherwise) and, when a
//! collector is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), traces exported over OTLP
//! HTTP/protobuf.
//!
//! The spans that are only for export (the request's server span, authentication, each store
//! call, signing, the mint record's wait and commit) use the target [`SPAN_TARGET`]. The log
//! lines never see them (their filter turns that target off), and without a collector nothing
//! enables them: each such span is then a disabled callsite, a cached check that makes nothing.

use std::{io::IsTerminal, str::FromStr, time::Duration};

use opentelemetry::{
    trace::{
        SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    },
    Context as OtelContext,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::Targets,
    fmt::{
        self,
        format::{FormatEvent, FormatFields, JsonFields, Writer},
        FmtContext, FormattedFields,
    },
    prelude::*,
    registry::LookupSpan,
    EnvFilter, Layer,
};

use crate::config::{LogConfig, LogFormat, TraceConfig};

/// The target of the spans made for export only. The span macros name it as a literal (an
/// attribute's `target` must be one): `neo_sessions_otel`.
pub const SPAN_TARGET: &str = "neo_sessions_otel";

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// One export request's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where log lines go: `serve` logs to stdout (the container convention); the other commands log
/// to stderr so that their stdout carries only their output (e.g. the key `api-key create` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// What [`init`] set up: keep it until exit, and call [`Telemetry::shutdown_traces`] before.
pub struct Telemetry {
    /// Dropping it flushes the log lines still queued.
    _log: WorkerGuard,
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (waiting at most 5 s for the collector) and stops the
    /// exporter; log lines go on until this is dropped. Runs the provider's blocking shutdown
    /// off the async workers: the export itself runs on them.
    pub async fn shutdown_traces(&mut self) {
        if let Some(provider) = self.traces.take() {
            let flushed =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                    .await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "the last spans could not be exported");
            }
        }
    }
}

/// Installs the subscriber. Lines are formatted on the calling thread and written by a
/// background thread through a buffer flushed whenever no more lines are queued, so a request
/// never waits on a write syscall (or on a slow pipe). With `traces` naming a collector, spans
/// are exported to it too (`serve` passes its `[trace]`; other commands export nothing). Runs
/// inside the Tokio runtime, which the exporter sends on.
pub fn init(
    config: &LogConfig,
    traces: Option<&TraceConfig>,
    target: LogTarget,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.filter)
        .map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: log.filter: {e} (environment variable NEO_LOG_FILTER)"
            )
        })?
        // The export-only spans never reach a log line, whatever the filter says.
        .add_directive(format!("{SPAN_TARGET}=off").parse()?);
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
    let Some((trace, url)) = traces.and_then(|t| t.traces_url().map(|url| (t, url))) else {
        // No collector: the filter stays global, as it always was, so a disabled span costs
        // one cached check and the log lines pay for no per-layer filtering.
        tracing_subscriber::registry()
            .with(filter)
            .with(log_lines(json, writer))
            .try_init()?;
        return Ok(Telemetry {
            _log: guard,
            traces: None,
        });
    };
    let provider = tracer_provider(&url, &trace.service_name)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("neo-sessions"))
        .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::TRACE));
    tracing_subscriber::registry()
        .with(log_lines(json, writer).with_filter(filter))
        .with(spans)
        .try_init()?;
    tracing::info!(
        url,
        service_name = trace.service_name,
        "exporting traces over OTLP/HTTP"
    );
    Ok(Telemetry {
        _log: guard,
        traces: Some(provider),
    })
}

/// The layer that writes log lines, JSON or human-readable.
fn log_lines<S>(json: bool, writer: NonBlocking) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if json {
        fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer().with_writer(writer).boxed()
    }
}

/// Spans are batched and posted to `url` by the SDK's background thread, through [`ExportClient`].
fn tracer_provider(url: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let client = ExportClient {
        client: reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter's HTTP client: {e}"))?,
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter needs the Tokio runtime: {e}"))?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter for {url}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(RequestsOnly)))
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: our reqwest client, driven on the Tokio runtime (the SDK's
/// batch thread has no reactor of its own), so no second HTTP stack is built.
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = opentelemetry_http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Which traces start here: a request's (its server span) and nothing else. A store call of a
/// background task (retention, the key reload) has no request above it and is not exported.
/// Spans with a parent follow its decision (`Sampler::ParentBased`), so a caller's
/// `traceparent` that says "not sampled" is respected.
#[derive(Debug, Clone)]
struct RequestsOnly;

impl ShouldSample for RequestsOnly {
    fn should_sample(
        &self,
        _parent: Option<&OtelContext>,
        _trace_id: TraceId,
        _name: &str,
        span_kind: &SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        SamplingResult {
            decision: if *span_kind == SpanKind::Server {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

/// A W3C Trace Context `traceparent` header, parsed. Anything that breaks the format (a
/// missing or extra field, upper-case or non-hex digits, an all-zero id, version `ff`, two
/// headers) is no parent at all: the request starts a trace of its own, never an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: opentelemetry::trace::SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// The request's `traceparent`, when it has exactly one and it is valid.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<Self> {
        let mut values = headers.get_all("traceparent").iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(value.to_str().ok()?)
    }

    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55. A later
        // version may append fields after a "-"; version 00 may not.
        if bytes.len() < 55 || [2, 35, 52].iter().any(|&i| bytes[i] != b'-') {
            return None;
        }
        let version = lower_hex(&value[0..2])?;
        match version {
            0xff => return None,
            0 if bytes.len() != 55 => return None,
            _ if bytes.len() > 55 && bytes[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = lower_hex(&value[3..35])?;
        let parent_id = lower_hex(&value[36..52])?;
        let flags = lower_hex(&value[53..55])?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id: TraceId::from(trace_id),
            parent_id: opentelemetry::trace::SpanId::from(u64::try_from(parent_id).ok()?),
            sampled: flags & 1 == 1,
        })
    }

    /// The caller's span as the parent of ours, with its `tracestate` when that is valid.
    fn remote_context(&self, tracestate: Option<&str>) -> OtelContext {
        let state = tracestate
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        OtelContext::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.parent_id,
            flags,
            true,
            state,
        ))
    }
}

/// Lower-case hex digits only, as the Trace Context format requires (at most 32 of them).
fn lower_hex(text: &str) -> Option<u128> {
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// Makes the caller's `traceparent` the parent of the request's server span `span` and
/// returns the request's trace id for its log lines: the exported trace's when spans are
/// exported (the caller's, or a new one), else the caller's trace id, if it sent one.
pub fn adopt_trace(
    span: &tracing::Span,
    incoming: Option<&TraceParent>,
    headers: &axum::http::HeaderMap,
) -> Option<TraceId> {
    if span.is_disabled() {
        return incoming.map(|parent| parent.trace_id);
    }
    if let Some(parent) = incoming {
        let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok());
        let _ = span.set_parent(parent.remote_context(tracestate));
    }
    let trace_id = span.context().span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
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
    fn a_traceparent_is_adopted_only_when_it_follows_the_w3c_format() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(valid).expect("valid");
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        let unsampled = TraceParent::parse(&valid.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled);
        // A later version may carry more fields after a dash; version 00 may not.
        assert!(TraceParent::parse(&format!("01{}-extra", &valid[2..])).is_some());
        for invalid in [
            "",
            "garbage",
            &valid[..54],
            &format!("{valid}-extra"),
            &valid.replace("00-4b", "ff-4b"),
            &valid.to_uppercase(),
            &valid.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &valid.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &valid.replace("4bf9", "4bg9"),
            &valid.replace('-', "_"),
            &format!("01{}x", &valid[2..]),
        ] {
            assert_eq!(TraceParent::parse(invalid), None, "{invalid:?}");
        }
        // Two headers: which one would be the parent? Neither.
        let mut headers = axum::http::HeaderMap::new();
        headers.append("traceparent", valid.parse().unwrap());
        assert!(TraceParent::from_headers(&headers).is_some());
        headers.append("traceparent", valid.parse().unwrap());
        assert_eq!(TraceParent::from_headers(&headers), None);
    }

    /// Without a collector the export-only spans are never made, and the log lines never show
    /// them whatever the filter.
    #[test]
    fn export_only_spans_are_disabled_for_the_log_lines() {
        let filter = EnvFilter::try_new("trace")
            .unwrap()
            .add_directive(format!("{SPAN_TARGET}=off").parse().unwrap());
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::info_span!(target: "neo_sessions_otel", "store").is_disabled());
            assert!(!tracing::info_span!("request").is_disabled());
        });
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
