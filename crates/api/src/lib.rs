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
//! | `GET /openapi.json` | OpenAPI 3.1 description of all of the above, generated from the handlers ([`openapi`]) |
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
//! reaches the database ([`body`]). Every route is registered together with its OpenAPI
//! operation ([`openapi`]), so none is served undocumented; `tests/tests/api_openapi.rs`
//! checks every operation's real answers against the served document.

pub mod auth;
pub mod body;
pub mod conversations;
pub mod documents;
mod error;
pub mod health;
pub mod messages;
pub mod openapi;
pub mod params;
pub mod prometheus;
pub mod protocol_errors;
mod request_log;
pub mod schemas;
pub mod search;
pub mod sse;
pub mod upload;
pub mod usage;

pub use auth::Auth;
pub use error::{Error, ErrorBody, ErrorDetail};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol_errors::JsonProtocolErrors;
use ragpipe_core::Config;
use ragpipe_store::Store;
use std::sync::Arc;
use upload::UploadLimits;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    let (routes, openapi) = documented_routes(upload_body_limit).split_for_parts();
    let openapi = Arc::new(openapi::finish(openapi));
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn(request_log::observe))
        .layer(axum::Extension(openapi))
        .with_state(state)
}

/// The OpenAPI document [`router`] serves at `/openapi.json`: its operations are those of the
/// routes it registers.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(documented_routes(body::MAX_JSON_BODY_BYTES).into_openapi())
}

/// Every route of [`router`], each registered with its OpenAPI operation (`routes!` adds both,
/// so no route is served undocumented). Routes are registered here and nowhere else.
fn documented_routes(upload_body_limit: usize) -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    let upload = OpenApiRouter::new()
        .routes(routes!(documents::upload))
        .layer(DefaultBodyLimit::max(upload_body_limit));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(documents::list))
        .merge(upload)
        .routes(routes!(documents::get, documents::delete))
        .routes(routes!(documents::chunks))
        .routes(routes!(documents::reprocess))
        .routes(routes!(conversations::list, conversations::create))
        .routes(routes!(conversations::messages, conversations::ask))
        .routes(routes!(search::search))
        .routes(routes!(usage::usage))
        .routes(routes!(messages::get))
        .routes(routes!(messages::cancel))
        .routes(routes!(sse::events))
        .routes(routes!(health::healthz))
        .routes(routes!(public_readyz))
        .routes(routes!(serve_openapi))
}

/// `GET /readyz` on the public listener: the operations answer reduced to ready or not, so
/// that what is wrong inside (schema, database, workers) is not told to the world; the ops
/// listener's `/readyz` says it.
#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: ready, or not",
    description = "200 `{\"status\": \"ready\"}` or 503 `not_ready`, without the reason. The reason, \
        and `/metrics`, are on the operations listener (`RAGPIPE_OPS_LISTEN`), which is not part of \
        this API.",
    responses(
        (status = 200, description = "Ready", body = schemas::Health,
            example = json!({"status": "ready"})),
        (status = 503, description = "Not ready (`not_ready`)", body = ErrorBody),
    ),
)]
async fn public_readyz(state: axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if health::readyz(state).await.into_response().status().is_success() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        Error::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not ready").into_response()
    }
}

/// `GET /openapi.json`: the document generated with the routes ([`openapi`]).
#[utoipa::path(
    get,
    operation_id = "openapi",
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object)),
)]
async fn serve_openapi(
    axum::Extension(document): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> axum::Json<Arc<utoipa::openapi::OpenApi>> {
    axum::Json(document)
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
    use std::collections::BTreeSet;

    /// The source of the functions that build [`super::router`].
    fn router_source() -> &'static str {
        let source = include_str!("lib.rs");
        let start = source.find("pub fn router(").expect("router() is defined");
        let end = source[start..]
            .find("/// `GET /readyz` on the public listener")
            .expect("public_readyz follows the route registrations");
        &source[start..start + end]
    }

    #[test]
    fn every_route_is_registered_with_its_operation() {
        // `routes!` adds a handler's route and its operation together; a plain `.route(` (or a
        // nested router) would serve a route the document does not describe.
        let source = router_source();
        for undocumented in [".route(", ".nest(", ".route_service(", ".nest_service("] {
            assert!(
                !source.contains(undocumented),
                "router() registers a route with {undocumented}: use routes! so it is documented"
            );
        }
        assert!(
            source.matches("routes!(").count() >= 15,
            "routes! registrations not found"
        );
    }

    #[test]
    fn the_generated_document_describes_every_operation() {
        let spec = serde_json::to_value(super::openapi_document()).expect("the document serializes");
        assert_eq!(spec["openapi"], "3.1.0");
        let mut operations = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path} has no responses");
                for (status, response) in responses {
                    assert!(
                        response["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status}: no description"
                    );
                    // Every error status answers with the one error shape.
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                            "{method} {path} {status}"
                        );
                    }
                }
                // Every /v1 operation requires the bearer key (the document's default); only
                // the operations routes opt out.
                let security = &operation["security"];
                assert_eq!(
                    path.starts_with("/v1/"),
                    security.is_null(),
                    "{method} {path}: security {security}"
                );
                if path.contains("{id}") {
                    let parameters = operation["parameters"].as_array().expect("parameters");
                    assert!(
                        parameters.iter().any(|p| p["name"] == "id" && p["in"] == "path"),
                        "{method} {path}: no id parameter"
                    );
                }
                operations.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
        assert_eq!(spec["security"], serde_json::json!([{ "apiKey": [] }]));
        assert_eq!(spec["components"]["securitySchemes"]["apiKey"]["scheme"], "bearer");
        let expected: BTreeSet<String> = [
            "GET /v1/documents",
            "POST /v1/documents",
            "GET /v1/documents/{id}",
            "DELETE /v1/documents/{id}",
            "GET /v1/documents/{id}/chunks",
            "POST /v1/documents/{id}/reprocess",
            "GET /v1/conversations",
            "POST /v1/conversations",
            "GET /v1/conversations/{id}/messages",
            "POST /v1/conversations/{id}/messages",
            "POST /v1/search",
            "GET /v1/usage",
            "GET /v1/messages/{id}",
            "POST /v1/messages/{id}/cancel",
            "GET /v1/messages/{id}/events",
            "GET /healthz",
            "GET /readyz",
            "GET /openapi.json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(operations, expected);

        // Every reference points at something defined.
        let text = spec.to_string();
        for reference in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = format!("/{}", reference.split('"').next().unwrap_or_default());
            assert!(spec.pointer(&pointer).is_some(), "dangling $ref {pointer}");
        }
        // The multipart upload and the event streams are described as what they are.
        let upload = &spec["paths"]["/v1/documents"]["post"]["requestBody"]["content"];
        assert!(upload["multipart/form-data"]["schema"].is_object(), "{upload}");
        for (path, method) in [
            ("/v1/messages/{id}/events", "get"),
            ("/v1/conversations/{id}/messages", "post"),
        ] {
            let stream = &spec["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"];
            assert_eq!(
                stream["schema"]["x-events"]["$ref"], "#/components/schemas/AnswerEvent",
                "{method} {path}: {stream}"
            );
        }
    }
}
