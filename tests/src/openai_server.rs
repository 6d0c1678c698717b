//! An OpenAI-compatible HTTP server for tests and the demo: real HTTP on `127.0.0.1`, the real
//! wire protocol, so the real client code runs against it.
//!
//! - `POST /v1/embeddings`: deterministic vectors from ragpipe's hashed embedder (so they have
//!   neighbourhood structure: texts sharing words are close), of a configurable dimension, in
//!   input order, with `usage.prompt_tokens` counted by tiktoken.
//! - `POST /v1/chat/completions`, streaming or not: scripted replies ([`ScriptedReply`], from
//!   `fixtures/replies/*.json` or built in code) split into deltas with an optional delay each,
//!   `usage` in a final chunk only when `stream_options.include_usage` is true, `max_tokens`
//!   honoured (finish reason `length`).
//!   A condense request (its last message ends with [`CONDENSE_MARKER`]) is answered from
//!   its own queue ([`OpenAiServer::push_condense_reply`]) or with [`default_condensed`], never
//!   with an answer's scripted reply.
//! - `POST /v1/rerank` (and `/rerank`): the `/rerank` wire format of Cohere, Jina, TEI and
//!   vLLM, scoring each document by the share of the query's distinct words it contains (a
//!   deterministic stand-in for a cross-encoder), with `usage.total_tokens` counted by tiktoken.
//! - `GET /v1/models`.
//! - A llama.cpp mode ([`OpenAiServer::set_llama_cpp_mode`]) imitating its server as measured
//!   (FACTS.md): LF-only event separators, a role-only first chunk, `: ping` comment lines,
//!   no usage while streaming, `max_completion_tokens` ignored, HTTP 500 for array content.
//!
//! Faults are injected per server instance and per route, so parallel tests do not interfere
//! ([`OpenAiServer::inject`]): 429 with `Retry-After`, any error status, slow answers, a stream
//! cut after K deltas, a stream that ends with `[DONE]` but no finish reason, a body cut with
//! or without a `Content-Length`. Every request is
//! logged ([`OpenAiServer::requests`]) with its body and, for streams, when the first token was
//! sent, for the streaming-overhead benchmark, and with the tokens the server counted for it
//! ([`RecordedRequest::usage`], summed by [`OpenAiServer::billed`]): the provider's bill.
//!
//! The server stops when the [`OpenAiServer`] is dropped.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ragpipe_core::Config;
use ragpipe_core::config::ModelEndpoint;
use ragpipe_llm::{ChatMessage, HashedEmbedder, Role, TokenCounter, count_prompt_tokens};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Model name the server reports for embeddings by default.
pub const EMBEDDING_MODEL: &str = "test-embedding";
/// Model name the server reports for chat by default.
pub const CHAT_MODEL: &str = "test-chat";
/// Largest request body accepted.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The model routes, for fault injection and filtering the request log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/rerank` (also `POST /rerank`).
    Rerank,
}

/// A failure the server produces instead of (or in the middle of) a normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with an OpenAI rate-limit error body and, if given, `Retry-After: N`.
    RateLimited {
        /// Seconds sent in `Retry-After` (none: no header).
        retry_after_secs: Option<u64>,
    },
    /// Any status with the given body (e.g. 500, 503, or 400 "context length exceeded").
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body, sent as `application/json`.
        body: String,
    },
    /// Wait this long before answering normally (to trigger client timeouts, or to hold a
    /// worker between two model calls while a test kills it).
    Delay(Duration),
    /// Answer normally: a placeholder in the fault queue, so that a later fault hits the
    /// request after.
    Pass,
    /// Answer 200, send part of the body, then close the connection mid-body, framed as
    /// `framing` says. On embeddings the cut falls in the middle of the JSON (inside the `data`
    /// list); on chat, after the role chunk, in the middle of the first content event, so no
    /// delta was delivered and the call may be retried.
    Truncated {
        /// How the response delimits its body.
        framing: Framing,
    },
    /// Answer 200, stream this many content deltas, then drop the connection (no finish
    /// reason, no `[DONE]`, an unterminated body). On embeddings: 200 then a broken body.
    CutAfter {
        /// Content deltas sent before the cut.
        deltas: usize,
    },
    /// Stream this many content deltas, pause, then go on normally (a model that stalls).
    StallAfter {
        /// Content deltas sent before the pause.
        deltas: usize,
        /// How long the stream stays silent.
        pause: Duration,
    },
    /// Stream this many content deltas, then `data: [DONE]` with no finish reason (how
    /// llama.cpp's server ends a stream cut by a newer request).
    EndWithoutFinish {
        /// Content deltas sent before `[DONE]`.
        deltas: usize,
    },
}

impl Fault {
    /// HTTP 500 with a plain message, as a crashed upstream answers.
    pub fn server_error() -> Fault {
        Fault::Status {
            status: 500,
            body: json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}}).to_string(),
        }
    }
}

/// How a response delimits its body (for [`Fault::Truncated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A `Content-Length` for the whole body: the client sees fewer bytes than promised.
    ContentLength,
    /// Chunked: the client sees the connection end before the last chunk.
    Chunked,
    /// No length and no chunks (an HTTP/1.0-style response, as some proxies send): the body
    /// ends when the connection closes, so the client sees a short body end cleanly.
    UntilClose,
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Which route.
    pub route: Route,
    /// The request path, e.g. `/v1/embeddings`.
    pub path: String,
    /// The JSON body (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
    /// When the request arrived.
    pub received_at: Instant,
    /// When the first content delta was handed to the connection (streams only).
    pub first_token_at: Option<Instant>,
    /// The fault injected into this request, if any.
    pub fault: Option<Fault>,
    /// True when the client went away before the streamed answer ended (a cancelled
    /// generation); false for complete or deliberately cut streams and non-streamed answers.
    pub disconnected: bool,
    /// The tokens the server counted for this request: what it reported (or, for a stream
    /// not asked to include usage, would have reported) in `usage`, for an answer it sent
    /// whole. `None` for refused, failed and cut requests. A test sums these to get the
    /// provider's bill ([`OpenAiServer::billed`]).
    pub usage: Option<ReplyUsage>,
}

/// Token counts a scripted reply reports instead of the server's own tiktoken counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyUsage {
    /// Reported prompt tokens.
    pub prompt_tokens: u64,
    /// Reported completion tokens.
    pub completion_tokens: u64,
}

/// A chat answer the server plays back.
///
/// In `fixtures/replies/*.json`: `{"description": "...", "text": "..."}` (split into
/// word-sized deltas) or `"deltas": ["...", ...]`, with optional `delta_delay_ms`,
/// `finish_reason` (default `stop`) and `usage` (default: tiktoken counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// What the reply shows (fixtures only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The whole answer, split into deltas when `deltas` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The answer's deltas, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<String>,
    /// Pause before each delta, in milliseconds.
    #[serde(default)]
    pub delta_delay_ms: u64,
    /// The finish reason sent at the end.
    #[serde(default = "default_finish_reason")]
    pub finish_reason: String,
    /// Usage reported instead of the server's own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ReplyUsage>,
}

fn default_finish_reason() -> String {
    "stop".into()
}

impl Default for ScriptedReply {
    fn default() -> Self {
        ScriptedReply::text("This is a scripted answer from the test server.")
    }
}

impl ScriptedReply {
    /// `text`, streamed a word at a time (each delta a word with its leading space).
    pub fn text(text: &str) -> ScriptedReply {
        ScriptedReply {
            description: String::new(),
            text: Some(text.to_owned()),
            deltas: Vec::new(),
            delta_delay_ms: 0,
            finish_reason: default_finish_reason(),
            usage: None,
        }
    }

    /// Exactly these deltas.
    pub fn deltas<S: Into<String>>(deltas: impl IntoIterator<Item = S>) -> ScriptedReply {
        ScriptedReply {
            text: None,
            deltas: deltas.into_iter().map(Into::into).collect(),
            ..ScriptedReply::text("")
        }
    }

    /// The same reply with a pause before every delta.
    pub fn with_delta_delay(mut self, delay: Duration) -> ScriptedReply {
        self.delta_delay_ms = delay.as_millis() as u64;
        self
    }

    /// The same reply reporting these token counts.
    pub fn with_usage(mut self, prompt_tokens: u64, completion_tokens: u64) -> ScriptedReply {
        self.usage = Some(ReplyUsage {
            prompt_tokens,
            completion_tokens,
        });
        self
    }

    /// The same reply ending with another finish reason.
    pub fn with_finish_reason(mut self, reason: &str) -> ScriptedReply {
        self.finish_reason = reason.to_owned();
        self
    }

    /// Parses a reply from JSON.
    pub fn from_json(json: &str) -> Result<ScriptedReply, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Loads `fixtures/replies/{name}.json` from this repository.
    pub fn fixture(name: &str) -> std::io::Result<ScriptedReply> {
        let path = replies_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        ScriptedReply::from_json(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("parsing {}: {e}", path.display()),
            )
        })
    }

    /// The deltas streamed, in order.
    pub fn stream_deltas(&self) -> Vec<String> {
        if !self.deltas.is_empty() {
            return self.deltas.clone();
        }
        // Each delta is a word with the whitespace before it, as models stream " word".
        let mut out = Vec::new();
        let mut current = String::new();
        let mut in_word = false;
        for c in self.text.as_deref().unwrap_or("").chars() {
            if c.is_whitespace() && in_word {
                out.push(std::mem::take(&mut current));
                in_word = false;
            }
            in_word |= !c.is_whitespace();
            current.push(c);
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }

    /// The whole answer (the deltas concatenated).
    pub fn full_text(&self) -> String {
        self.stream_deltas().concat()
    }
}

/// Directory of the scripted-reply fixtures, `fixtures/replies/` in this repository.
pub fn replies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join("replies")
}

/// A running test server. Dropping it stops the server.
pub struct OpenAiServer {
    base_url: String,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OpenAiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for OpenAiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    inner: Mutex<Inner>,
    tokens: TokenCounter,
}

struct Inner {
    embedding_dim: usize,
    embedding_max_input_tokens: Option<usize>,
    refused_marker: Option<String>,
    api_key: Option<String>,
    llama_cpp: bool,
    default_reply: ScriptedReply,
    replies: VecDeque<ScriptedReply>,
    condense_replies: VecDeque<ScriptedReply>,
    faults: HashMap<Route, VecDeque<Fault>>,
    requests: Vec<RecordedRequest>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data behind.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OpenAiServer {
    /// Starts a server on `127.0.0.1` and a free port, with 384-dimensional embeddings.
    ///
    /// # Panics
    /// If no local port can be bound (the test cannot run at all then).
    pub async fn start() -> OpenAiServer {
        OpenAiServer::try_start()
            .await
            .expect("binding 127.0.0.1:0 for the OpenAI-compatible test server")
    }

    /// Starts a server on `127.0.0.1` and a free port.
    pub async fn try_start() -> std::io::Result<OpenAiServer> {
        let state = Arc::new(Shared {
            inner: Mutex::new(Inner {
                embedding_dim: 384,
                embedding_max_input_tokens: None,
                refused_marker: None,
                api_key: None,
                llama_cpp: false,
                default_reply: ScriptedReply::default(),
                replies: VecDeque::new(),
                condense_replies: VecDeque::new(),
                faults: HashMap::new(),
                requests: Vec::new(),
            }),
            tokens: TokenCounter::default(),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/rerank", post(rerank))
            .route("/rerank", post(rerank))
            .route("/v1/models", get(models))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // TCP_NODELAY, so that a delta leaves when it is written and `first_token_at` is
            // when the client could have it (Nagle held small writes ~40 ms for a delayed ACK).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("OpenAI-compatible test server stopped: {e}");
            }
        });
        Ok(OpenAiServer {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        })
    }

    /// The base URL to configure clients with, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// An embedding endpoint pointing here: the configuration defaults with this server's
    /// URL, [`EMBEDDING_MODEL`], the server's dimension, a 10 s timeout and 3 retries.
    pub fn embedding_endpoint(&self) -> ModelEndpoint {
        let mut e = Config::defaults().embedding;
        e.base_url = Some(self.base_url.clone());
        e.model = EMBEDDING_MODEL.into();
        e.dim = self.state.lock().embedding_dim as u32;
        e.timeout_secs = 10;
        e.max_retries = 3;
        e
    }

    /// A reranker endpoint pointing here: the configuration defaults with this server's
    /// `/v1` URL, a 5 s timeout and 1 retry.
    pub fn rerank_endpoint(&self) -> ModelEndpoint {
        let mut e = Config::defaults().rerank;
        e.base_url = Some(self.base_url.clone());
        e.timeout_secs = 5;
        e.max_retries = 1;
        e
    }

    /// A chat endpoint pointing here: the configuration defaults with this server's URL,
    /// [`CHAT_MODEL`], a 10 s timeout and 3 retries.
    pub fn chat_endpoint(&self) -> ModelEndpoint {
        let mut e = Config::defaults().chat;
        e.base_url = Some(self.base_url.clone());
        e.model = CHAT_MODEL.into();
        e.timeout_secs = 10;
        e.max_retries = 3;
        e
    }

    /// Sets the dimension of the vectors `/v1/embeddings` returns.
    pub fn set_embedding_dim(&self, dim: usize) {
        self.state.lock().embedding_dim = dim.max(1);
    }

    /// Makes `/v1/embeddings` answer 400 `context_length_exceeded` to any input longer than
    /// `max_tokens` tokens (none: no limit).
    pub fn set_embedding_max_input_tokens(&self, max_tokens: Option<usize>) {
        self.state.lock().embedding_max_input_tokens = max_tokens;
    }

    /// Makes `/v1/embeddings` answer 400 `invalid_input` to every request with an input that
    /// contains `marker`, every time (none: refuse nothing): a model that cannot take one
    /// input, whatever the client retries.
    pub fn refuse_embedding_inputs_containing(&self, marker: Option<&str>) {
        self.state.lock().refused_marker = marker.map(str::to_owned);
    }

    /// Requires `Authorization: Bearer {key}` on every request (none: anything goes).
    pub fn require_api_key(&self, key: Option<&str>) {
        self.state.lock().api_key = key.map(str::to_owned);
    }

    /// Switches the llama.cpp imitation on or off (see the module documentation).
    pub fn set_llama_cpp_mode(&self, on: bool) {
        self.state.lock().llama_cpp = on;
    }

    /// Queues `reply` for the next chat request (replies queue in order; when none is queued
    /// the default reply answers).
    pub fn push_reply(&self, reply: ScriptedReply) {
        self.state.lock().replies.push_back(reply);
    }

    /// Queues the reply to the next condense request (a chat request whose last message ends
    /// with [`CONDENSE_MARKER`]); without one, the server answers [`default_condensed`].
    pub fn push_condense_reply(&self, reply: ScriptedReply) {
        self.state.lock().condense_replies.push_back(reply);
    }

    /// Sets the reply used when none is queued.
    pub fn set_default_reply(&self, reply: ScriptedReply) {
        self.state.lock().default_reply = reply;
    }

    /// Makes the next `times` requests to `route` fail with `fault` (after any already queued).
    pub fn inject(&self, route: Route, fault: Fault, times: usize) {
        let mut inner = self.state.lock();
        let queue = inner.faults.entry(route).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// Drops every fault still queued: the model behaves from now on.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// The tokens the server counted on `route`, summed over every request it answered whole:
    /// the provider's bill, to compare with ragpipe's ledger.
    pub fn billed(&self, route: Route) -> ReplyUsage {
        let inner = self.state.lock();
        let mut total = ReplyUsage {
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        for usage in inner
            .requests
            .iter()
            .filter(|r| r.route == route)
            .filter_map(|r| r.usage)
        {
            total.prompt_tokens += usage.prompt_tokens;
            total.completion_tokens += usage.completion_tokens;
        }
        total
    }

    /// The requests received on `route`, in arrival order.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }
}

/// Records the request, checks the key and takes the next fault for the route.
fn admit(
    state: &Shared,
    route: Route,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(usize, Value, Option<Fault>), Box<Response>> {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = state.lock();
    let fault = inner.faults.get_mut(&route).and_then(VecDeque::pop_front);
    let index = inner.requests.len();
    inner.requests.push(RecordedRequest {
        route,
        path: path.to_owned(),
        body: json.clone(),
        authorization: authorization.clone(),
        received_at: Instant::now(),
        first_token_at: None,
        fault: fault.clone(),
        disconnected: false,
        usage: None,
    });
    if let Some(key) = &inner.api_key
        && authorization.as_deref() != Some(format!("Bearer {key}").as_str())
    {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )));
    }
    if json.is_null() {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
            "invalid_request_error",
            None,
        )));
    }
    Ok((index, json, fault))
}

fn error(status: StatusCode, message: &str, error_type: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": error_type, "param": null, "code": code}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Applies a fault that replaces the whole answer; `Ok` means "answer (maybe in a broken way)".
async fn apply_fault(fault: &Option<Fault>) -> Result<(), Box<Response>> {
    match fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests. Please try again later.",
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            );
            if let Some(secs) = retry_after_secs {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            Err(Box::new(response))
        }
        Some(Fault::Status { status, body }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(Box::new(
                (status, [(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
            ))
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(*delay).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn embeddings(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (index, request, fault) = match admit(&state, Route::Embeddings, "/v1/embeddings", &headers, &body) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if let Err(response) = apply_fault(&fault).await {
        return *response;
    }
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "'input' must be a string or an array of strings.",
                "invalid_request_error",
                None,
            );
        }
    };
    let (dim, max_input, refused) = {
        let inner = state.lock();
        (
            inner.embedding_dim,
            inner.embedding_max_input_tokens,
            inner.refused_marker.clone(),
        )
    };
    if let Some(marker) = refused
        && let Some(position) = inputs.iter().position(|i| i.contains(&marker))
    {
        let message = format!("Input {position} contains content this model does not accept.");
        return error(
            StatusCode::BAD_REQUEST,
            &message,
            "invalid_request_error",
            Some("invalid_input"),
        );
    }
    let counts: Vec<usize> = inputs.iter().map(|i| state.tokens.count(i)).collect();
    if let Some(max) = max_input
        && let Some(&longest) = counts.iter().max()
        && longest > max
    {
        let message = format!(
            "This model's maximum context length is {max} tokens, however you requested {longest} tokens in one input."
        );
        return error(
            StatusCode::BAD_REQUEST,
            &message,
            "invalid_request_error",
            Some("context_length_exceeded"),
        );
    }
    let hasher = HashedEmbedder::new(dim);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": hasher.embed(text)}))
        .collect();
    let tokens: usize = counts.iter().sum();
    let model = request["model"].as_str().unwrap_or(EMBEDDING_MODEL);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    });
    let text = body.to_string();
    match fault {
        Some(Fault::CutAfter { .. } | Fault::EndWithoutFinish { .. }) => {
            // Headers and half the body, then the connection drops.
            let half = Bytes::from(text.as_bytes()[..text.len() / 2].to_vec());
            cut_response("application/json", half, Framing::Chunked, text.len())
        }
        Some(Fault::Truncated { framing }) => {
            let half = Bytes::from(text.as_bytes()[..text.len() / 2].to_vec());
            cut_response("application/json", half, framing, text.len())
        }
        _ => {
            record_usage(
                &state,
                index,
                ReplyUsage {
                    prompt_tokens: tokens as u64,
                    completion_tokens: 0,
                },
            );
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
    }
}

/// How the condense prompt (`prompts/condense.md`) ends: the test server tells a condense
/// request from an answer's by it.
pub const CONDENSE_MARKER: &str = "Standalone query:";

/// Whether a chat request body is a condense request.
pub fn is_condense_request(body: &Value) -> bool {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(plain_content)
        .is_some_and(|c| c.trim_end().ends_with(CONDENSE_MARKER))
}

/// The server's condensed query when none is scripted: the last question followed by the
/// latest earlier user question (a crude but deterministic stand-in for a model's rewrite).
pub fn default_condensed(body: &Value) -> String {
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(plain_content)
        .unwrap_or_default();
    let question = prompt
        .lines()
        .find_map(|l| l.strip_prefix("Last question:"))
        .unwrap_or_default()
        .trim();
    let earlier = prompt
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("User:"))
        .unwrap_or_default()
        .trim();
    format!("{question} {earlier}").trim().to_owned()
}

/// Lower-cased words of two or more letters or digits.
fn words(text: &str) -> std::collections::HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect()
}

/// The share of the query's distinct words found in the document, in `[0, 1]`.
pub fn lexical_overlap(query: &str, document: &str) -> f64 {
    let q = words(query);
    if q.is_empty() {
        return 0.0;
    }
    let d = words(document);
    q.iter().filter(|w| d.contains(*w)).count() as f64 / q.len() as f64
}

async fn rerank(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (index, request, fault) = match admit(&state, Route::Rerank, "/v1/rerank", &headers, &body) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if let Err(response) = apply_fault(&fault).await {
        return *response;
    }
    let Some(query) = request["query"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "'query' must be a string.",
            "invalid_request_error",
            None,
        );
    };
    // Cohere and vLLM take strings; Jina and TEI also `{"text": ...}` objects.
    let documents: Option<Vec<String>> = request["documents"].as_array().map(|items| {
        items
            .iter()
            .filter_map(|v| v.as_str().or_else(|| v["text"].as_str()).map(str::to_owned))
            .collect()
    });
    let Some(documents) = documents.filter(|d| Some(d.len()) == request["documents"].as_array().map(Vec::len)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "'documents' must be an array of strings.",
            "invalid_request_error",
            None,
        );
    };
    let top_n = request["top_n"].as_u64().map_or(documents.len(), |n| n as usize);
    let mut results: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| (i, lexical_overlap(query, d)))
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    results.truncate(top_n);
    let query_tokens = state.tokens.count(query);
    let tokens: usize = documents.iter().map(|d| query_tokens + state.tokens.count(d)).sum();
    let model = request["model"].as_str().unwrap_or("test-rerank");
    let body = json!({
        "model": model,
        "results": results.iter().map(|(i, score)| json!({"index": i, "relevance_score": score})).collect::<Vec<_>>(),
        "usage": {"total_tokens": tokens}
    });
    let text = body.to_string();
    match fault {
        Some(Fault::Truncated { framing }) => {
            let half = Bytes::from(text.as_bytes()[..text.len() / 2].to_vec());
            cut_response("application/json", half, framing, text.len())
        }
        _ => {
            record_usage(
                &state,
                index,
                ReplyUsage {
                    prompt_tokens: tokens as u64,
                    completion_tokens: 0,
                },
            );
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
    }
}

/// Notes in the request log what the server counted for a request it answered whole.
fn record_usage(state: &Shared, index: usize, usage: ReplyUsage) {
    if let Some(r) = state.lock().requests.get_mut(index) {
        r.usage = Some(usage);
    }
}

/// A 200 whose body is `sent` and then a dropped connection, framed by `framing` (with a
/// `Content-Length` of `whole` bytes).
fn cut_response(content_type: &'static str, sent: Bytes, framing: Framing, whole: usize) -> Response {
    use futures::StreamExt;
    // hyper drops bytes not yet flushed when a body fails: let it flush the part first.
    let cut = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<Bytes, _>(std::io::Error::other("connection cut by test"))
    });
    let parts = futures::stream::once(async move { Ok::<_, std::io::Error>(sent) }).chain(cut);
    let mut builder = Response::builder().header(header::CONTENT_TYPE, content_type);
    match framing {
        Framing::ContentLength => builder = builder.header(header::CONTENT_LENGTH, whole),
        Framing::Chunked => {}
        // hyper delimits an HTTP/1.0 response of unknown length by closing the connection.
        Framing::UntilClose => builder = builder.version(axum::http::Version::HTTP_10),
    }
    builder
        .body(Body::from_stream(parts))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn models(State(state): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let key = state.lock().api_key.clone();
    if let Some(key) = key
        && headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(format!("Bearer {key}").as_str())
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let body = json!({"object": "list", "data": [
        {"id": EMBEDDING_MODEL, "object": "model", "created": 0, "owned_by": "ragpipe-tests"},
        {"id": CHAT_MODEL, "object": "model", "created": 0, "owned_by": "ragpipe-tests"},
    ]});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A chat message's content as text; `None` for array-of-parts content.
fn plain_content(message: &Value) -> Option<String> {
    match &message["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

async fn chat_completions(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (index, request, fault) = match admit(&state, Route::ChatCompletions, "/v1/chat/completions", &headers, &body) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if let Err(response) = apply_fault(&fault).await {
        return *response;
    }
    let (llama, reply) = {
        let mut inner = state.lock();
        let reply = if is_condense_request(&request) {
            // Condense calls have their own replies, so they never take an answer's.
            inner
                .condense_replies
                .pop_front()
                .unwrap_or_else(|| ScriptedReply::text(&default_condensed(&request)))
        } else {
            inner.replies.pop_front().unwrap_or_else(|| inner.default_reply.clone())
        };
        (inner.llama_cpp, reply)
    };
    let Some(raw_messages) = request["messages"].as_array() else {
        return error(
            StatusCode::BAD_REQUEST,
            "'messages' must be an array.",
            "invalid_request_error",
            None,
        );
    };
    let mut messages = Vec::with_capacity(raw_messages.len());
    for m in raw_messages {
        let role = match m["role"].as_str() {
            Some("system" | "developer") => Role::System,
            Some("assistant") => Role::Assistant,
            _ => Role::User,
        };
        match plain_content(m) {
            Some(content) => messages.push(ChatMessage { role, content }),
            // Measured: llama.cpp's server answers 500 to content given as parts.
            None if llama => return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
            None => {
                let text: String = m["content"]
                    .as_array()
                    .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
                    .unwrap_or_default();
                messages.push(ChatMessage { role, content: text });
            }
        }
    }
    // llama.cpp honours only `max_tokens`; OpenAI both.
    let max_tokens = if llama {
        request["max_tokens"].as_u64()
    } else {
        request["max_completion_tokens"]
            .as_u64()
            .or_else(|| request["max_tokens"].as_u64())
    };
    let mut deltas = reply.stream_deltas();
    let mut finish_reason = reply.finish_reason.clone();
    if let Some(max) = max_tokens {
        let mut used = 0u64;
        let kept = deltas
            .iter()
            .take_while(|d| {
                used += state.tokens.count(d) as u64;
                used <= max
            })
            .count();
        if kept < deltas.len() {
            deltas.truncate(kept);
            finish_reason = "length".into();
        }
    }
    let text = deltas.concat();
    let usage = reply.usage.unwrap_or_else(|| ReplyUsage {
        prompt_tokens: count_prompt_tokens(&state.tokens, &messages),
        completion_tokens: state.tokens.count(&text) as u64,
    });
    let usage_json = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens
    });
    let model = request["model"].as_str().unwrap_or(CHAT_MODEL).to_owned();
    let id = format!("chatcmpl-test-{index}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    if request["stream"].as_bool() != Some(true) {
        record_usage(&state, index, usage);
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason}],
            "usage": usage_json,
        });
        return ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }

    let include_usage = !llama && request["stream_options"]["include_usage"].as_bool() == Some(true);
    if let Some(Fault::Truncated { framing }) = fault {
        // The role chunk, then the first content event cut in half: no delta arrives whole.
        let chunk = |delta: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
            })
        };
        let role = format!("data: {}\r\n\r\n", chunk(json!({"role": "assistant", "content": ""})));
        let first = format!(
            "data: {}\r\n\r\n",
            chunk(json!({"content": deltas.first().cloned().unwrap_or_default()}))
        );
        let mut sent = role.into_bytes();
        sent.extend_from_slice(&first.as_bytes()[..first.len() / 2]);
        let promised = sent.len() + first.len();
        return cut_response("text/event-stream", Bytes::from(sent), framing, promised);
    }
    // Counted once the answer has gone out whole (a scripted cut is not billed).
    let counted = (!matches!(fault, Some(Fault::CutAfter { .. } | Fault::EndWithoutFinish { .. }))).then_some(usage);
    let plan = StreamPlan {
        id,
        created,
        model,
        deltas,
        delay: Duration::from_millis(reply.delta_delay_ms),
        finish_reason,
        usage: include_usage.then_some(usage_json),
        llama,
        fault,
    };
    let body_state = BodyState {
        steps: plan.steps(),
        state,
        index,
        finished: false,
        counted,
    };
    let body = futures::stream::unfold(body_state, |mut body| async move {
        loop {
            let Some(step) = body.steps.pop_front() else {
                body.finish();
                if let Some(usage) = body.counted.take() {
                    record_usage(&body.state, body.index, usage);
                }
                return None;
            };
            match step {
                Step::Send(bytes) => return Some((Ok(bytes), body)),
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::MarkFirstToken => {
                    if let Some(r) = body.state.lock().requests.get_mut(body.index) {
                        r.first_token_at = Some(Instant::now());
                    }
                }
                Step::Abort => {
                    // Let hyper flush what was sent before the cut; it drops unflushed bytes
                    // when a body fails.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    body.steps.clear();
                    body.finish();
                    return Some((Err(std::io::Error::other("connection cut by test")), body));
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A streamed body in progress. Dropped unfinished means the client went away.
struct BodyState {
    steps: VecDeque<Step>,
    state: Arc<Shared>,
    index: usize,
    finished: bool,
    /// What the server counts for this answer once its last byte is handed over.
    counted: Option<ReplyUsage>,
}

impl BodyState {
    /// The stream ended as scripted (completely or by a scripted cut).
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for BodyState {
    fn drop(&mut self) {
        if !self.finished
            && let Some(r) = self.state.lock().requests.get_mut(self.index)
        {
            r.disconnected = true;
        }
    }
}

/// What a streamed answer consists of, before it is turned into bytes.
struct StreamPlan {
    id: String,
    created: u64,
    model: String,
    deltas: Vec<String>,
    delay: Duration,
    finish_reason: String,
    usage: Option<Value>,
    llama: bool,
    fault: Option<Fault>,
}

enum Step {
    Send(Bytes),
    Sleep(Duration),
    MarkFirstToken,
    Abort,
}

impl StreamPlan {
    fn event(&self, data: &str) -> Step {
        // llama.cpp separates with LF only; sse-starlette-based servers with CRLF.
        let text = if self.llama {
            format!("data: {data}\n\n")
        } else {
            format!("data: {data}\r\n\r\n")
        };
        Step::Send(Bytes::from(text))
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Step {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.usage.is_some() {
            // OpenAI sends `"usage": null` on every chunk when usage was requested.
            chunk["usage"] = Value::Null;
        }
        self.event(&chunk.to_string())
    }

    fn ping(&self) -> Step {
        Step::Send(Bytes::from_static(b": ping - 2026-01-01 00:00:00.000000+00:00\n\n"))
    }

    fn steps(self) -> VecDeque<Step> {
        let mut steps = VecDeque::new();
        let first = if self.llama {
            json!({"role": "assistant"})
        } else {
            json!({"role": "assistant", "content": ""})
        };
        steps.push_back(self.chunk(first, None));
        if self.llama {
            steps.push_back(self.ping());
        }
        let cut = match &self.fault {
            Some(Fault::CutAfter { deltas }) => Some((*deltas, false)),
            Some(Fault::EndWithoutFinish { deltas }) => Some((*deltas, true)),
            _ => None,
        };
        for (i, delta) in self.deltas.iter().enumerate() {
            if let Some((after, clean)) = cut
                && i == after
            {
                if clean {
                    steps.push_back(self.event("[DONE]"));
                } else {
                    steps.push_back(Step::Abort);
                }
                return steps;
            }
            if let Some(Fault::StallAfter { deltas, pause }) = &self.fault
                && i == *deltas
            {
                steps.push_back(Step::Sleep(*pause));
            }
            if !self.delay.is_zero() {
                steps.push_back(Step::Sleep(self.delay));
            }
            if i == 0 {
                steps.push_back(Step::MarkFirstToken);
            }
            steps.push_back(self.chunk(json!({"content": delta}), None));
            if self.llama && i % 3 == 2 {
                steps.push_back(self.ping());
            }
        }
        if let Some((_, clean)) = cut {
            // Fewer deltas than the cut point: cut at the end instead of finishing.
            steps.push_back(if clean { self.event("[DONE]") } else { Step::Abort });
            return steps;
        }
        steps.push_back(self.chunk(json!({}), Some(&self.finish_reason)));
        if let Some(usage) = &self.usage {
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage,
            });
            steps.push_back(self.event(&chunk.to_string()));
        }
        steps.push_back(self.event("[DONE]"));
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_replies_stream_word_by_word() {
        let r = ScriptedReply::text("Hello there,  world.\nBye");
        let d = r.stream_deltas();
        assert_eq!(d, vec!["Hello", " there,", "  world.", "\nBye"]);
        assert_eq!(r.full_text(), "Hello there,  world.\nBye");
    }

    #[test]
    fn every_reply_fixture_parses() {
        let dir = std::fs::read_dir(replies_dir()).expect("fixtures/replies exists");
        let mut seen = 0;
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
                let reply = ScriptedReply::fixture(&name).expect("fixture parses");
                assert!(!reply.description.is_empty(), "{name} says what it shows");
                assert!(!reply.full_text().is_empty(), "{name} has text");
                seen += 1;
            }
        }
        assert!(seen >= 3, "{seen} fixtures");
    }
}
