//! The outermost layer: request id, tracing span, error envelope, one log line per request.

use std::{
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
    extract::{MatchedPath, Request},
    http::{
        header::{CONNECTION, CONTENT_TYPE},
        HeaderName, HeaderValue, StatusCode,
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::{field::Empty, Instrument};
use uuid::Uuid;

use super::{envelope::RequestContext, error::ErrorReport};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Keeps an incoming UUID `X-Request-Id`, replaces anything else, and makes it the request's
/// span, response header and `meta.request_id`. Every error response leaves here in the envelope.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::try_parse(v.trim()).ok())
        .unwrap_or_else(Uuid::new_v4);
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        route = %route,
        principal_kind = Empty,
        principal_id = Empty,
        tenant = Empty,
    );
    request.extensions_mut().insert(RequestContext {
        request_id,
        started,
    });
    let (parts, body) = request.into_parts();
    let (body, body_read) = ReadToEnd::track(body);

    let mut response = next
        .run(Request::from_parts(parts, body))
        .instrument(span.clone())
        .await;

    // hyper closes a connection whose request body was left unread (it cannot find the next
    // request); say so, or a keep-alive client would send its next request into a closed socket.
    if !body_read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }

    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        response = render_error(response, request_id, &span);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        tracing::info!(status = status.as_u16(), latency_ms, "request completed");
    });
    response
}

fn render_error(response: Response, request_id: Uuid, span: &tracing::Span) -> Response {
    let (mut parts, _) = response.into_parts();
    let report = parts
        .extensions
        .remove::<ErrorReport>()
        .unwrap_or_else(|| ErrorReport::for_status(parts.status));
    if let Some(cause) = &report.cause {
        span.in_scope(|| {
            if parts.status.is_server_error() {
                tracing::error!(code = report.code, cause = %cause, "request failed");
            } else {
                tracing::info!(code = report.code, cause = %cause, "request refused");
            }
        });
    }
    let body = match serde_json::to_vec(&report.into_body(request_id)) {
        Ok(body) => body,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
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
