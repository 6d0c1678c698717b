//! The ragpipe HTTP API (axum).
//!
//! Routes:
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/documents` | multipart upload of one or more files (+ optional JSON metadata each) |
//! | `GET /v1/documents?status=&limit=&before=` | the caller's documents, newest first, keyset-paginated |
//! | `GET /v1/documents/{id}` | one document: status, progress, error, counts |
//! | `GET /v1/documents/{id}/chunks?offset=&limit=` | its chunks, in order |
//! | `DELETE /v1/documents/{id}` | delete it with its bytes and chunks |
//! | `POST /v1/conversations`, `GET /v1/conversations?limit=&before=` | create one; the caller's, most recently active first |
//! | `GET /v1/conversations/{id}/messages?limit=&after=` | its messages, oldest first |
//! | `POST /v1/conversations/{id}/messages` | ask (`{content, mode?, k?}`): 202 with ids, or with `Accept: text/event-stream` the answer's events |
//! | `GET /v1/messages/{id}` | one message |
//! | `POST /v1/messages/{id}/cancel` | stop an answer being written |
//! | `GET /v1/messages/{id}/events` | an answer's events (SSE), resumable with `Last-Event-ID` |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (database reachable, schema current) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | OpenAPI 3.1 description of all of the above (`crates/api/openapi.json`) |
//!
//! Invariants: every `/v1` route authenticates with a bearer API key ([`Auth`]) and touches
//! user data only through that user's [`ragpipe_store::UserTx`]; another user's id is a 404,
//! never a 403. Every error, including unknown routes and bad parameters, has the one JSON
//! shape of [`Error`].

pub mod auth;
pub mod conversations;
pub mod documents;
mod error;
pub mod health;
pub mod messages;
pub mod params;
pub mod prometheus;
mod requests;
pub mod search;
pub mod sse;
pub mod upload;

pub use auth::Auth;
pub use error::Error;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use ragpipe_core::Config;
use ragpipe_store::Store;
use std::sync::Arc;
use upload::UploadLimits;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The configuration the process started with.
    pub config: Arc<Config>,
    /// The process-wide Prometheus recorder's handle ([`prometheus::install_recorder`]).
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// State for `store` and `config`, installing the process's metrics recorder if that has
    /// not happened yet.
    pub fn new(store: Store, config: Arc<Config>) -> AppState {
        AppState {
            store,
            config,
            metrics: prometheus::install_recorder(),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Every route, with the request span and metrics middleware and JSON fallbacks.
pub fn router(state: AppState) -> Router {
    // Only the upload route takes large bodies; the rest keep axum's 2 MB default.
    let upload_body_limit = UploadLimits::from_config(&state.config.limits).body_limit();
    Router::new()
        .route(
            "/v1/documents",
            get(documents::list).merge(post(documents::upload).layer(DefaultBodyLimit::max(upload_body_limit))),
        )
        .route("/v1/documents/{id}", get(documents::get).delete(documents::delete))
        .route("/v1/documents/{id}/chunks", get(documents::chunks))
        .route(
            "/v1/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::messages).post(conversations::ask),
        )
        .route("/v1/search", post(search::search))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/messages/{id}/cancel", post(messages::cancel))
        .route("/v1/messages/{id}/events", get(sse::events))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(prometheus::scrape))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(requests::observe))
        .with_state(state)
}

/// The OpenAPI description, written by hand beside this crate and kept in step with the routes
/// (a test checks that it parses and lists every route).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// The operations routes alone (`/healthz`, `/readyz`, `/metrics`), for processes that serve no
/// API, such as `ragpipe worker`.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(prometheus::scrape))
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> Error {
    Error::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting connections and
/// waits for requests in flight to finish.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "API listening");
    }
    // TCP_NODELAY: an SSE event is a small write that follows another; with Nagle's algorithm
    // it waits for the client's (delayed) ACK of the previous one. Measured with
    // `bench_stream` (BENCHMARKS.md, "Streaming"): first-delta overhead p50 17 ms → 7 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    });
    // Graceful shutdown waits for every response to end; an answer's event stream may not end
    // for as long as its answer is written (or ever, if no worker is left), so open streams are
    // told to close when shutdown begins.
    let closing = sse::StreamsClosing::default();
    let close_streams = closing.0.clone();
    axum::serve(listener, router(state).layer(axum::Extension(closing)))
        .with_graceful_shutdown(async move {
            shutdown.await;
            close_streams.cancel();
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;

    #[test]
    fn the_openapi_document_parses_and_lists_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        let mut paths: Vec<&str> = spec["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/healthz",
                "/metrics",
                "/openapi.json",
                "/readyz",
                "/v1/documents",
                "/v1/documents/{id}",
                "/v1/documents/{id}/chunks"
            ]
        );
        // Every reference points at something defined.
        let text = OPENAPI_JSON;
        for reference in text.split("\"$ref\": \"#/").skip(1) {
            let pointer = format!("/{}", reference.split('"').next().unwrap_or_default());
            assert!(spec.pointer(&pointer).is_some(), "dangling $ref {pointer}");
        }
    }
}
