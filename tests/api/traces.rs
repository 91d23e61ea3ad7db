//! Traces from the outside: the real binary, started with the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, exports its spans over OTLP HTTP/protobuf to a receiver
//! running in the test, parented to the caller's `traceparent`; without the variable it sends
//! nothing. Either way the request's log line carries the trace id.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::span,
};
use prost::Message;
use serde_json::{json, Value};

use crate::support::{Backend, TestDatabase, ACME_KEY};

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service_name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl ExportedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    /// Each request's `Content-Type`.
    content_types: Arc<Mutex<Vec<String>>>,
}

/// An OTLP/HTTP receiver on a random port: `POST /v1/traces` with a protobuf body.
async fn otlp_receiver(bind: SocketAddr) -> std::io::Result<(SocketAddr, Received)> {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((address, received))
}

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    received.content_types.lock().unwrap().push(content_type);
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut spans = received.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ExportedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: everything accepted.
    Vec::new()
}

/// `neo-sessions serve` as a child process, its log lines collected.
struct Server {
    child: Child,
    address: String,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Server {
    async fn start(db: &TestDatabase, env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let workdir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_neo-sessions"));
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("NEO_") || name.starts_with("OTEL_") || name == "DATABASE_URL" {
                command.env_remove(&*name);
            }
        }
        let mut child = command
            .arg("serve")
            .current_dir(workdir.path())
            .env("NEO_DATABASE_URL", &db.url)
            .env("NEO_DATA_DIR", data_dir.path())
            .env("NEO_KEY_ENCRYPTION_KEY", crate::support::TEST_KEK)
            .env("NEO_LISTEN", "127.0.0.1:0")
            .env("NEO_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start neo-sessions serve");
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child,
            address: String::new(),
            lines,
            reader,
            _dirs: (data_dir, workdir),
        };
        server.address = loop {
            let line = server
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("server logs that it listens");
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
            if entry["message"] == "neo-sessions listening" {
                break entry["address"].as_str().unwrap().to_owned();
            }
        };
        crate::support::init_test_process();
        server
    }

    async fn mint(&self, traceparent: Option<&str>) -> Value {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/public-api/sessions", self.address))
            .bearer_auth(ACME_KEY)
            .json(&json!({"session_id": "s-acme-1"}));
        if let Some(traceparent) = traceparent {
            request = request
                .header("traceparent", traceparent)
                .header("tracestate", "vendor=value");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// SIGTERM, a clean exit, and every log line written. Waits off the test's runtime, which
    /// must go on serving the receiver while the server exports its last spans.
    async fn stop(self) -> Vec<Value> {
        let Self {
            mut child,
            lines,
            reader,
            ..
        } = self;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || {
            let exit = child.wait().unwrap();
            reader.join().unwrap();
            exit
        })
        .await
        .unwrap();
        assert!(exit.success(), "SIGTERM ends the server cleanly: {exit:?}");
        lines
            .try_iter()
            .map(|line| serde_json::from_str(&line).expect("JSON log line"))
            .collect()
    }
}

/// The `request completed` line of the request whose response carried `request_id`.
fn completed_line<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == "request completed" && l["span"]["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no line for {request_id}: {lines:#?}"))
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

async fn spans_are_exported_over_otlp_parented_to_the_callers_traceparent(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let (receiver, received) = otlp_receiver(([127, 0, 0, 1], 0).into()).await.unwrap();
    let endpoint = format!("http://{receiver}");
    let server = Server::start(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "sessions-under-test"),
        ],
    )
    .await;

    let traced = server
        .mint(Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01")))
        .await;
    // An invalid traceparent (upper-case hex) is no error: the request starts its own trace.
    let untraced = server
        .mint(Some(&format!(
            "00-{}-{PARENT_ID}-01",
            TRACE_ID.to_uppercase()
        )))
        .await;
    // Stopping flushes what is still queued: no wait for the exporter's batch timer.
    let lines = server.stop().await;

    let spans = received.spans.lock().unwrap().clone();
    assert!(
        received
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP protobuf"
    );
    let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    let server_span = in_trace
        .iter()
        .find(|s| s.name == "POST /public-api/sessions")
        .unwrap_or_else(|| panic!("no server span: {names:?}\n{spans:#?}"));
    assert_eq!(server_span.parent_span_id, PARENT_ID, "the caller's span");
    assert_eq!(server_span.kind, span::SpanKind::Server as i32);
    assert_eq!(server_span.service_name, "sessions-under-test");
    assert_eq!(
        server_span.attribute("http.route"),
        Some("/public-api/sessions")
    );
    assert_eq!(server_span.attribute("http.request.method"), Some("POST"));
    assert_eq!(
        server_span.attribute("http.response.status_code"),
        Some("200")
    );
    for name in [
        "authenticate",
        "store",
        "sign",
        "mint.record",
        "recorder.commit",
    ] {
        assert!(names.contains(&name), "no {name} span: {names:?}");
    }
    // Each span's parent is in the trace (the server span's is the caller's), and the chain
    // reaches the server span: request → mint.record → recorder.commit → store.
    let by_id = |id: &str| in_trace.iter().find(|s| s.span_id == id);
    for span in &in_trace {
        let mut current = *span;
        while current.span_id != server_span.span_id {
            current = by_id(&current.parent_span_id)
                .unwrap_or_else(|| panic!("{} has no parent in the trace", current.name));
        }
    }
    let commit = in_trace
        .iter()
        .find(|s| s.name == "recorder.commit")
        .unwrap();
    assert_eq!(by_id(&commit.parent_span_id).unwrap().name, "mint.record");
    assert!(in_trace.iter().any(|s| s.name == "store"
        && s.parent_span_id == commit.span_id
        && s.attribute("db.operation.name") == Some("record_mints")));
    // Nothing of a credential reaches a span.
    let exported = format!("{spans:?}");
    assert!(!exported.contains(ACME_KEY) && !exported.contains(&ACME_KEY[12..]));

    // The log line carries the trace id: the caller's, or the one the request started.
    let traced_line = completed_line(&lines, traced["meta"]["request_id"].as_str().unwrap());
    assert_eq!(traced_line["span"]["trace_id"], TRACE_ID, "{traced_line}");
    let untraced_line = completed_line(&lines, untraced["meta"]["request_id"].as_str().unwrap());
    let new_trace = untraced_line["span"]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a trace id: {untraced_line}"));
    assert_ne!(new_trace, TRACE_ID.to_lowercase());
    assert_eq!(new_trace.len(), 32);
    let root = spans
        .iter()
        .find(|s| s.trace_id == new_trace && s.name == "POST /public-api/sessions")
        .unwrap_or_else(|| panic!("the new trace's server span: {spans:#?}"));
    assert_eq!(root.parent_span_id, "", "a trace of its own");

    // Only requests start traces: no background store call is exported on its own.
    for span in &spans {
        assert!(
            span.trace_id == TRACE_ID || span.trace_id == new_trace,
            "a span outside the requests' traces: {span:?}"
        );
    }
    // The log lines never show the export-only spans.
    for line in &lines {
        let name = line["span"]["name"].as_str().unwrap_or("request");
        assert_eq!(name, "request", "{line}");
    }
}

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported: not even to the OTLP default
/// address (127.0.0.1:4318), which a receiver listens on here when the port is free. The
/// caller's trace id still reaches the log line.
async fn without_an_endpoint_nothing_is_exported(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let default_receiver = otlp_receiver(([127, 0, 0, 1], 4318).into()).await.ok();
    let server = Server::start(&db, &[("OTEL_SERVICE_NAME", "sessions-under-test")]).await;
    let traced = server
        .mint(Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01")))
        .await;
    let plain = server.mint(None).await;
    let lines = server.stop().await;

    if let Some((_, received)) = default_receiver {
        assert!(received.spans.lock().unwrap().is_empty());
        assert!(received.content_types.lock().unwrap().is_empty());
    }
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "exporting traces over OTLP/HTTP"),
        "{lines:#?}"
    );
    let traced_line = completed_line(&lines, traced["meta"]["request_id"].as_str().unwrap());
    assert_eq!(traced_line["span"]["trace_id"], TRACE_ID, "{traced_line}");
    let plain_line = completed_line(&lines, plain["meta"]["request_id"].as_str().unwrap());
    assert!(
        plain_line["span"].get("trace_id").is_none(),
        "no trace, no trace id: {plain_line}"
    );
    // latency_ms is a number of milliseconds to the microsecond, without float noise.
    for line in lines.iter().filter(|l| l["message"] == "request completed") {
        let latency = line["latency_ms"].to_string();
        let decimals = latency.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{latency}");
    }
}

backend_tests!(spans_are_exported_over_otlp_parented_to_the_callers_traceparent,);

// Export is process-wide and one test of it suffices; it does not differ by backend.
#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_sqlite() {
    without_an_endpoint_nothing_is_exported(Backend::Sqlite).await
}
