//! A span around every HTTP request: method, matched route and request id
//! from the start, status and latency when it completes. Log lines of the
//! handler carry them.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Runs the request in its span. The request id is settled here and
/// written back into the request's `x-request-id`, so the handler's
/// envelope carries the same id as the log lines.
pub async fn trace(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = super::req_id(request.headers());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert("x-request-id", value);
    }
    // The route as declared (`/admin/dead-letters/:id`), never the raw
    // path: bounded, and free of whatever a client put in it.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        route = %route,
        req_id = %id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    // Microsecond precision is plenty for a log line.
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| tracing::debug!(status, latency_ms, "request finished"));
    response
}
