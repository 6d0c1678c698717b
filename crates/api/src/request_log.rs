//! One span per request (method, path, route, status, latency, the caller once known), a log
//! line when it ends, and the HTTP request metrics.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

/// Middleware wrapping every route and the fallbacks.
pub async fn observe(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The route template (`/v1/documents/{id}`) labels metrics: the concrete path would make a
    // series per document.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %request.uri().path(),
        route = %route,
        status = Empty,
        latency_ms = Empty,
        user_id = Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let latency = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!("request failed");
        } else {
            tracing::info!("request finished");
        }
    });
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.as_str().to_owned()),
    ];
    metrics::counter!("ragpipe_http_requests_total", &labels).increment(1);
    metrics::histogram!("ragpipe_http_request_duration_seconds", &labels).record(latency.as_secs_f64());
    response
}
