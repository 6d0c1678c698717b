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
//! | `POST /v1/documents/{id}/reprocess` | redo it (`{stage?, chunk_max_tokens?, chunk_overlap_tokens?, embedding_model?}`): 202; its chunks stay searchable meanwhile |
//! | `POST /v1/conversations`, `GET /v1/conversations?limit=&before=` | create one; the caller's, most recently active first |
//! | `GET /v1/conversations/{id}/messages?limit=&after=` | its messages, oldest first |
//! | `POST /v1/conversations/{id}/messages` | ask (`{content, mode?, k?}`): 202 with ids, or with `Accept: text/event-stream` the answer's events |
//! | `POST /v1/search` | hybrid, vector or text search of the caller's chunks (`{query, mode?, k?, document_ids?, metadata?, highlight?}`) |
//! | `GET /v1/messages/{id}` | one message |
//! | `POST /v1/messages/{id}/cancel` | stop an answer being written |
//! | `GET /v1/messages/{id}/events` | an answer's events (SSE), resumable with `Last-Event-ID` |
//! | `GET /v1/usage?from=&to=&group_by=day\|model\|kind` | the caller's tokens and cost over `[from, to)`, grouped, and their quota status |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness, only `ready` or 503 `not_ready` (database reachable, schema current, every worker and the message feed running) |
//! | `GET /openapi.json` | OpenAPI 3.1 description of all of the above (`crates/api/openapi.json`) |
//!
//! The operations routes ([`ops_router`]: `/metrics`, `/healthz`, `/readyz` with the reason
//! when not ready) are served on a listener of their own ([`serve_ops`], `RAGPIPE_OPS_LISTEN`),
//! meant to stay private: `/metrics` counts documents and bytes across all users.
//!
//! Invariants: every `/v1` route authenticates with a bearer API key ([`Auth`]) and touches
//! user data only through that user's [`ragpipe_store::UserTx`]; another user's id is a 404,
//! never a 403. Every response with an error status, including unknown routes, extractor
//! rejections, body limits and the requests hyper refuses before routing
//! ([`protocol_errors`]), has the one JSON shape of [`Error`]. No string with a NUL character
//! reaches the database ([`body`]).

pub mod auth;
pub mod body;
pub mod conversations;
pub mod documents;
mod error;
pub mod health;
pub mod messages;
pub mod params;
pub mod prometheus;
pub mod protocol_errors;
mod request_log;
pub mod search;
pub mod sse;
pub mod upload;
pub mod usage;

pub use auth::Auth;
pub use error::Error;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use protocol_errors::JsonProtocolErrors;
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
    /// Search, shared so that the embedding endpoint's clients and concurrency limit are too.
    pub retriever: ragpipe_agent::Retriever,
    /// The process's supervised components (workers, message feed), for `/readyz` and
    /// `/metrics`; empty in a process that runs none.
    pub liveness: ragpipe_store::liveness::Liveness,
}

impl AppState {
    /// State for `store` and `config`, installing the process's metrics recorder if that has
    /// not happened yet. Fails when the embedding model is misconfigured.
    pub fn new(store: Store, config: Arc<Config>) -> Result<AppState, ragpipe_core::SetupError> {
        let embedders =
            ragpipe_llm::Embedders::new(&config.embedding).map_err(ragpipe_core::SetupError::of("embedding model"))?;
        let prices = ragpipe_llm::PriceTable::from_setting(config.prices.as_deref())
            .map_err(ragpipe_core::SetupError::of("RAGPIPE_PRICES"))?;
        let reranker = ragpipe_llm::Reranker::new(&config.rerank).map_err(ragpipe_core::SetupError::of("reranker"))?;
        Ok(AppState {
            retriever: ragpipe_agent::Retriever::new(store.clone(), embedders)
                .with_prices(prices)
                .with_reranker(reranker),
            store,
            config,
            metrics: prometheus::install_recorder(),
            liveness: Default::default(),
        })
    }

    /// The same state reporting the components registered in `liveness`.
    pub fn with_liveness(mut self, liveness: ragpipe_store::liveness::Liveness) -> AppState {
        self.liveness = liveness;
        self
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Every API route, with the request span and metrics middleware, JSON fallbacks and JSON
/// errors. The operations routes other than `/healthz` and a bare `/readyz` are not here:
/// see [`ops_router`].
pub fn router(state: AppState) -> Router {
    // Only the upload route takes large bodies; the rest take JSON up to MAX_JSON_BODY_BYTES.
    let upload_body_limit = UploadLimits::from_config(&state.config.limits).body_limit();
    Router::new()
        .route(
            "/v1/documents",
            get(documents::list).merge(post(documents::upload).layer(DefaultBodyLimit::max(upload_body_limit))),
        )
        .route("/v1/documents/{id}", get(documents::get).delete(documents::delete))
        .route("/v1/documents/{id}/chunks", get(documents::chunks))
        .route("/v1/documents/{id}/reprocess", post(documents::reprocess))
        .route(
            "/v1/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::messages).post(conversations::ask),
        )
        .route("/v1/search", post(search::search))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/messages/{id}/cancel", post(messages::cancel))
        .route("/v1/messages/{id}/events", get(sse::events))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(public_readyz))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn(request_log::observe))
        .with_state(state)
}

/// `GET /readyz` on the public listener: the operations answer reduced to ready or not, so
/// that what is wrong inside (schema, database, workers) is not told to the world; the ops
/// listener's `/readyz` says it.
async fn public_readyz(state: axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if health::readyz(state).await.into_response().status().is_success() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        Error::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not ready").into_response()
    }
}

/// The OpenAPI description, written by hand beside this crate and kept in step with the routes
/// (a test checks that it parses and lists every route).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// The operations routes (`/healthz`, `/readyz` with the reason when not ready, `/metrics`
/// across all users), for the ops listener of `ragpipe serve` ([`serve_ops`]) and of
/// `ragpipe worker --metrics-listen`. Not authenticated: bind it to a private address.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(prometheus::scrape))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(error::json_errors))
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
    let listener = JsonProtocolErrors(axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    }));
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

/// Serves the operations routes ([`ops_router`]) on `listener` until `shutdown` resolves.
pub async fn serve_ops(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "operations endpoints listening");
    }
    axum::serve(JsonProtocolErrors(listener), ops_router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;
    use std::collections::BTreeSet;

    /// `METHOD /path` of every route `router` registers, read from its source: axum keeps its
    /// route table private, and reading the registrations themselves (rather than a list kept
    /// by hand) means a route added without its OpenAPI entry fails the test below.
    fn routed_operations() -> BTreeSet<String> {
        let source = include_str!("lib.rs");
        let body = source
            .split_once("pub fn router(")
            .and_then(|(_, rest)| rest.split_once(".fallback("))
            .map(|(body, _)| body)
            .expect("router() registers its routes before its fallback");
        assert!(
            !body.contains(".nest("),
            "router() nests a router: teach routed_operations to read it"
        );
        let mut routes = BTreeSet::new();
        for registration in body.split(".route(").skip(1) {
            let path = registration
                .split('"')
                .nth(1)
                .expect("a route's path is a string literal");
            // The method routers called in the registration: `get(h)`, `get(h).post(h)`,
            // `get(h).merge(post(h).layer(..))`. Handler paths (`documents::delete`) are not
            // followed by `(`, so they do not count.
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = registration
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| !registration[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':'));
                if called {
                    routes.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        routes
    }

    #[test]
    fn the_openapi_document_parses_and_lists_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        let mut operations = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "patch", "delete"] {
                if let Some(operation) = item.get(method) {
                    assert!(
                        operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
                        "{method} {path} has no responses"
                    );
                    operations.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let routed = routed_operations();
        // The reader found the registrations (a sample, so that a broken reader cannot pass by
        // finding nothing).
        for route in [
            "GET /v1/documents",
            "POST /v1/documents",
            "DELETE /v1/documents/{id}",
            "GET /healthz",
        ] {
            assert!(
                routed.contains(route),
                "router source not read: {route} missing from {routed:?}"
            );
        }
        let undescribed: Vec<_> = routed.difference(&operations).collect();
        assert!(
            undescribed.is_empty(),
            "routes without an OpenAPI operation: {undescribed:?}"
        );
        let unrouted: Vec<_> = operations.difference(&routed).collect();
        assert!(
            unrouted.is_empty(),
            "OpenAPI operations that router() does not register: {unrouted:?}"
        );

        // Every reference points at something defined.
        for reference in OPENAPI_JSON.split("\"$ref\": \"#/").skip(1) {
            let pointer = format!("/{}", reference.split('"').next().unwrap_or_default());
            assert!(spec.pointer(&pointer).is_some(), "dangling $ref {pointer}");
        }
        // Every /v1 operation requires the bearer key (the document's default); only the
        // operations routes opt out.
        assert_eq!(spec["security"], serde_json::json!([{ "apiKey": [] }]));
        for route in &operations {
            let (method, path) = route.split_once(' ').expect("METHOD path");
            let security = &spec["paths"][path][method.to_lowercase()]["security"];
            assert_eq!(
                path.starts_with("/v1/"),
                security.is_null(),
                "{route}: security {security}"
            );
        }
    }
}
