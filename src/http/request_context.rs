//! The outermost layer: request id, trace context, tracing span, error envelope, one log line
//! per request.

use std::{
    borrow::Cow,
    cell::RefCell,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    body::{Bytes, HttpBody},
    extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State},
    http::request::Parts,
    http::{
        header::{CONNECTION, CONTENT_TYPE},
        HeaderName, HeaderValue, StatusCode,
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    error::{ErrorReport, Limit},
    AppState,
};
use crate::{
    auth::Principal,
    metrics::{method_label, MintLabels, RequestLabels, RouteLabels},
    ratelimit::client_ip,
    telemetry::{self, TraceParent},
};

/// Set by the request-context middleware on every request.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    pub request_id: Uuid,
    pub started: Instant,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestContext>()
            .copied()
            .unwrap_or_else(|| RequestContext {
                request_id: Uuid::new_v4(),
                started: Instant::now(),
            }))
    }
}

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes polled by probes and scrapers: their lines are logged at DEBUG, not INFO.
const PROBE_ROUTES: [&str; 3] = ["/public-api/health", "/public-api/health/live", "/metrics"];

/// A caller's own request id (not a UUID, so not adopted) as logged: at most this many
/// characters, printable ASCII only.
const MAX_CLIENT_REQUEST_ID: usize = 64;

/// A request method as logged: at most this many characters, then `…`. HTTP allows a method of
/// any length, and every request is logged before it is authenticated.
const MAX_LOGGED_METHOD: usize = 32;

/// `method` as a log line copies it: whole when short (every standard method), else a prefix.
fn logged_method(method: &str) -> Cow<'_, str> {
    if method.len() <= MAX_LOGGED_METHOD {
        return Cow::Borrowed(method);
    }
    let prefix: String = method.chars().take(MAX_LOGGED_METHOD).collect();
    Cow::Owned(format!("{prefix}…"))
}

/// Keeps an incoming UUID `X-Request-Id`, replaces anything else (logged as `client_request_id`),
/// and makes it the request's span, response header and `meta.request_id`. Resolves the client
/// address once (after trusted proxies) for the log and the failed-auth limit. Every error
/// response leaves here in the envelope, and one line per request is logged.
pub async fn request_context(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let offered = request
        .headers()
        .get(&X_REQUEST_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned());
    let adopted = offered.as_deref().and_then(|v| Uuid::try_parse(v).ok());
    let request_id = adopted.unwrap_or_else(Uuid::new_v4);
    let started = Instant::now();
    let method = request.method().clone();
    let minting = method == axum::http::Method::POST;
    let logged_method = logged_method(method.as_str());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_ip = client_ip(
        &state.config.server.trusted_proxies,
        peer,
        request.headers(),
    );
    // A caller's request id that we did not adopt, as logged: bounded, printable.
    let client_request_id: Option<String> = match (adopted, offered.as_deref()) {
        (None, Some(offered)) => Some(
            offered
                .chars()
                .take(MAX_CLIENT_REQUEST_ID)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect(),
        ),
        _ => None,
    };
    // The request's server span, for export only: disabled (a cached check, nothing made)
    // unless a collector is configured. The caller's valid `traceparent` is its parent; the
    // trace id goes into the log lines either way.
    let incoming = TraceParent::from_headers(request.headers());
    let server_span = tracing::info_span!(
        target: "neo_sessions_otel",
        parent: None,
        "request",
        otel.name = format!("{logged_method} {route}"),
        otel.kind = "server",
        http.request.method = %logged_method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let trace_id = telemetry::adopt_trace(&server_span, incoming.as_ref(), request.headers());
    // The span of every line logged while the request runs. What the handlers learn later (the
    // caller, the jti, the error code) is kept in the request's `RequestLog` and written once,
    // into the `request completed` line's own span, never recorded into this one: the JSON
    // formatter re-parses and re-serialises a span's fields at every `record`, which cost a
    // tenth of a mint's CPU.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %logged_method,
        route = %route,
        client_ip = %client_ip,
        client_request_id = client_request_id.as_deref(),
        trace_id = trace_id.map(tracing::field::display),
    );
    request.extensions_mut().insert(client_ip);
    request.extensions_mut().insert(RequestContext {
        request_id,
        started,
    });
    let (parts, body) = request.into_parts();
    let (body, body_read) = ReadToEnd::track(body);

    let (mut response, log) = REQUEST_LOG
        .scope(RefCell::new(RequestLog::default()), async {
            let response = next
                .run(Request::from_parts(parts, body))
                .instrument(span.clone())
                .instrument(server_span.clone())
                .await;
            (response, REQUEST_LOG.with(|log| log.take()))
        })
        .await;

    // hyper closes a connection whose request body was left unread (it cannot find the next
    // request); say so, or a keep-alive client would send its next request into a closed socket.
    if !body_read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }

    let status = response.status();
    let mut code = None;
    let mut limit = None;
    if status.is_client_error() || status.is_server_error() {
        let shape = if route == super::INTROSPECTION_PATH {
            ErrorShape::OAuth
        } else {
            ErrorShape::Envelope
        };
        let rendered = render_error(response, request_id, &span, shape);
        response = rendered.response;
        code = Some(rendered.code);
        limit = rendered.limit;
    }
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let elapsed = started.elapsed();
    let route_label = KNOWN_ROUTES
        .iter()
        .copied()
        .find(|known| *known == route)
        .unwrap_or("unmatched");
    let metrics = &state.metrics;
    let method_name = method_label(&method);
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method_name,
            route: route_label,
            status: status.as_u16(),
        })
        .inc();
    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            method: method_name,
            route: route_label,
        })
        .observe(elapsed.as_secs_f64());
    if route_label == MINT_ROUTE && minting {
        metrics
            .mints
            .get_or_create(&MintLabels {
                principal_kind: log.principal_kind.unwrap_or("none"),
                outcome: code.unwrap_or("ok"),
            })
            .inc();
    }
    if !server_span.is_disabled() {
        server_span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            server_span.record("otel.status_code", "error");
        }
    }
    let latency_ms = latency_ms(elapsed);
    // The line's span: the request's fields and what was learnt, formatted once.
    macro_rules! completed {
        ($level:expr) => {{
            let line = tracing::span!(
                parent: &span,
                $level,
                "request",
                request_id = %request_id,
                method = %logged_method,
                route = %route,
                client_ip = %client_ip,
                client_request_id = client_request_id.as_deref(),
                trace_id = trace_id.map(tracing::field::display),
                principal_kind = log.principal_kind,
                principal_id = log.principal_id.as_deref(),
                tenant = log.tenant.as_deref(),
                jti = log.jti.map(tracing::field::display),
                code,
                limit,
            );
            line.in_scope(|| {
                tracing::event!($level, status = status.as_u16(), latency_ms, "request completed")
            });
        }};
    }
    if PROBE_ROUTES.contains(&route.as_str()) {
        completed!(tracing::Level::DEBUG);
    } else {
        completed!(tracing::Level::INFO);
    }
    response
}

/// A request's latency in milliseconds to the microsecond: `0.042`, never `0.0420000001`
/// (the nearest double to a whole number of microseconds over 1000 prints as that decimal).
fn latency_ms(elapsed: std::time::Duration) -> f64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

tokio::task_local! {
    static REQUEST_LOG: RefCell<RequestLog>;
}

/// What the handlers of a request learn that its `request completed` line reports.
#[derive(Default)]
struct RequestLog {
    principal_kind: Option<&'static str>,
    principal_id: Option<String>,
    tenant: Option<String>,
    jti: Option<Uuid>,
}

/// Notes the authenticated caller for the request's log line and metrics.
pub fn log_principal(principal: &Principal) {
    let _ = REQUEST_LOG.try_with(|log| {
        let mut log = log.borrow_mut();
        log.principal_kind = Some(principal.kind());
        log.principal_id = Some(principal.id());
        log.tenant = Some(principal.tenant_id().to_owned());
    });
}

/// Notes the minted (or re-signed) token's id for the request's log line.
pub fn log_jti(jti: Uuid) {
    let _ = REQUEST_LOG.try_with(|log| log.borrow_mut().jti = Some(jti));
}

/// Route templates as metric labels (anything else is `unmatched`).
const KNOWN_ROUTES: &[&str] = &[
    MINT_ROUTE,
    "/public-api/sessions/revoke",
    "/public-api/sessions/revocations",
    "/public-api/sessions/{jti}",
    "/public-api/sessions/introspect",
    super::INTROSPECTION_PATH,
    "/docs",
    "/docs/redoc.standalone.js",
    "/public-api/health",
    "/public-api/health/live",
    "/public-api/openapi.json",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/metrics",
];
const MINT_ROUTE: &str = "/public-api/sessions";

/// An error response in the envelope, with what its log line reports.
struct Rendered {
    response: Response,
    code: &'static str,
    /// On a 429: which limit.
    limit: Option<&'static str>,
}

/// How a route writes its errors: our envelope, or (the OAuth endpoint) RFC 6749 §5.2's object.
#[derive(Clone, Copy)]
enum ErrorShape {
    Envelope,
    OAuth,
}

fn render_error(
    response: Response,
    request_id: Uuid,
    span: &tracing::Span,
    shape: ErrorShape,
) -> Rendered {
    let (mut parts, _) = response.into_parts();
    let report = parts
        .extensions
        .remove::<ErrorReport>()
        .unwrap_or_else(|| ErrorReport::for_status(parts.status));
    let limit = report
        .details
        .as_ref()
        .and_then(|details| details.get("limit"))
        .and_then(|limit| limit.as_str())
        .and_then(|limit| {
            [Limit::PerPrincipal, Limit::FailedAuthPerIp]
                .into_iter()
                .map(Limit::as_str)
                .find(|known| *known == limit)
        });
    if let Some(cause) = &report.cause {
        span.in_scope(|| {
            if parts.status.is_server_error() {
                tracing::error!(code = report.code, cause = %cause, "request failed");
            } else {
                tracing::info!(code = report.code, cause = %cause, "request refused");
            }
        });
    }
    let code = report.code;
    let body = match shape {
        ErrorShape::Envelope => report.into_body(request_id),
        ErrorShape::OAuth => oauth_error_body(parts.status, &report),
    };
    let body = match serde_json::to_vec(&body) {
        Ok(body) => body,
        Err(_) => {
            return Rendered {
                response: StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                code,
                limit,
            }
        }
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Rendered {
        response: Response::from_parts(parts, Body::from(body)),
        code,
        limit,
    }
}

/// For `CatchPanicLayer`: a 500 whose cause (the panic message) is logged, never sent.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let cause = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("panic")
        .to_owned();
    let mut report = ErrorReport::for_status(StatusCode::INTERNAL_SERVER_ERROR);
    report.cause = Some(format!("handler panicked: {cause}"));
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(report);
    response
}

/// A request body that records whether it was read to its end.
struct ReadToEnd {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl ReadToEnd {
    fn track(body: Body) -> (Body, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(body.is_end_stream()));
        if done.load(Ordering::Relaxed) {
            // Nothing to read (no body, or `Content-Length: 0`): no wrapper needed.
            return (body, done);
        }
        let tracked = Self {
            inner: body,
            done: Arc::clone(&done),
        };
        (Body::new(tracked), done)
    }
}

impl HttpBody for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads and discards what is left of a request refused before its body was needed (at most
/// the body limit, which the limit layer enforces), so that the keep-alive connection stays
/// usable for the client's next request.
pub async fn drain_body(request: Request) {
    let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
}

/// An error of the OAuth introspection endpoint as RFC 6749 §5.2 writes it: `error` from the registered codes,
/// `error_description` in the characters it allows.
fn oauth_error_body(status: StatusCode, report: &ErrorReport) -> serde_json::Value {
    let (error, description) = match status.as_u16() {
        401 => (
            "invalid_client",
            "Authenticate with HTTP Basic (user name: the API key's id, password: the key) or Authorization: Bearer <API key>.".to_owned(),
        ),
        403 if report.code == "insufficient_scope" => ("insufficient_scope", report.message.clone()),
        403 => ("access_denied", report.message.clone()),
        429 | 503 => ("temporarily_unavailable", report.message.clone()),
        400..=499 => ("invalid_request", report.message.clone()),
        _ => ("server_error", report.message.clone()),
    };
    // RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E.
    let description: String = description
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    serde_json::json!({ "error": error, "error_description": description })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{latency_ms, oauth_error_body, ErrorReport, StatusCode};
    use serde_json::json;

    #[test]
    fn latency_is_logged_in_milliseconds_to_the_microsecond_without_float_noise() {
        for (elapsed, shown) in [
            (Duration::from_nanos(42_000), "0.042"),
            (Duration::from_nanos(42_999), "0.042"),
            (Duration::from_nanos(1_234_567), "1.234"),
            (Duration::from_nanos(3_000_000), "3.0"),
            (Duration::from_micros(100_000_001), "100000.001"),
            (Duration::ZERO, "0.0"),
        ] {
            let value = latency_ms(elapsed);
            assert_eq!(serde_json::to_string(&value).unwrap(), shown);
            assert_eq!(format!("{value:?}"), shown);
        }
        // Every microsecond count prints as itself over 1000.
        for micros in 0..200_000_u64 {
            let text = serde_json::to_string(&latency_ms(Duration::from_micros(micros))).unwrap();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{micros} µs printed as {text}");
        }
    }

    #[test]
    fn error_descriptions_keep_to_the_characters_rfc_6749_allows() {
        let report = ErrorReport {
            code: "forbidden",
            message: "a \"quoted\" \\ — word".to_owned(),
            details: None,
            cause: None,
        };
        assert_eq!(
            oauth_error_body(StatusCode::FORBIDDEN, &report),
            json!({"error": "access_denied", "error_description": "a 'quoted' / ? word"})
        );
    }
}
