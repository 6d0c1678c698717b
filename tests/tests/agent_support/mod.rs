//! Shared by the `agent_*` tests: the API with in-process ingest and agent workers, the
//! OpenAI-compatible test server as the chat model, a few small documents, and an SSE client
//! that reads the stream the way a browser's EventSource does.

#![allow(dead_code)]

use ragpipe_core::Config;
use ragpipe_tests::app::{TestApp, TestUser};
use ragpipe_tests::openai_server::OpenAiServer;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

/// Two documents whose single chunks a scripted answer can cite as [1] and [2].
pub const BATCHING_DOC: &str = "Embedding requests are batched by input count and by total tokens. \
    A batch holds at most sixty-four inputs and eight thousand tokens, so that no request is refused for its size.";
pub const RETRIES_DOC: &str = "Failed embedding requests are retried with exponential backoff and jitter, \
    honouring Retry-After when the server sends it. Rate limits are answered with status 429.";
/// A question both documents answer.
pub const QUESTION: &str = "How are embedding requests batched and retried?";

/// A running system: API, workers, chat model.
pub struct System {
    /// The API.
    pub app: TestApp,
    /// The chat model (None: the offline responder).
    pub model: Option<OpenAiServer>,
    /// A user with the two documents ingested.
    pub alice: TestUser,
}

/// A pool with room for the API, two workers' queue listeners and the message feed (the
/// `#[sqlx::test]` default of 5 connections is too tight for a whole system; 20 is what its
/// parent pool allows).
pub async fn pool(options: PgPoolOptions, connect: PgConnectOptions) -> sqlx::PgPool {
    options
        .max_connections(20)
        .connect_with(connect)
        .await
        .expect("connecting to the test database")
}

/// Starts the API with ingest and agent workers; `online` uses the test server as the chat
/// model, otherwise the offline responder answers. Alice's two documents are ingested.
pub async fn start(pool: sqlx::PgPool, online: bool) -> System {
    start_with(pool, online, |_| {}).await
}

/// [`start`], with the configuration edited after the defaults are set.
pub async fn start_with(pool: sqlx::PgPool, online: bool, edit: impl FnOnce(&mut Config) + Send + 'static) -> System {
    let model = if online {
        Some(OpenAiServer::start().await)
    } else {
        None
    };
    let chat = model.as_ref().map(|m| m.chat_endpoint());
    let app = TestApp::builder(pool)
        .config(move |c| {
            if let Some(chat) = chat {
                c.chat = chat;
            }
            c.worker.max_attempts = 3;
            edit(c);
        })
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .with_task("agent worker", ragpipe_agent_worker::spawn)
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    for (name, text) in [("batching.txt", BATCHING_DOC), ("retries.txt", RETRIES_DOC)] {
        let doc = app.upload_one(&alice.key, name, text.as_bytes().to_vec()).await;
        let id = doc["id"].as_str().expect("document id").to_owned();
        let done = app.wait_for_document(&alice.key, &id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "ready", "{done}");
    }
    System { app, model, alice }
}

impl System {
    /// The test server (panics for an offline system).
    pub fn model(&self) -> &OpenAiServer {
        self.model.as_ref().expect("an online system")
    }

    /// `POST /v1/conversations` as `user`, returning the id.
    pub async fn conversation(&self, user: &TestUser) -> String {
        let response = self
            .app
            .request(reqwest::Method::POST, &user.key, "/v1/conversations")
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("POST /v1/conversations");
        let (status, body) = ragpipe_tests::app::json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("conversation id").to_owned()
    }

    /// Asks `question` in `conversation`, reads the stream to its end and checks that it is an
    /// answer that completed: `message`, `context`, deltas, `usage`, `done`.
    pub async fn ask_answered(&self, user: &TestUser, conversation: &str, question: &str) -> Vec<SseEvent> {
        let events = self.ask_stream(user, conversation, question).await.rest().await;
        assert_eq!(
            shape(&events),
            ["message", "context", "delta*", "usage", "done"],
            "{events:#?}"
        );
        events
    }

    /// Asks `question` in `conversation` with `Accept: text/event-stream`.
    pub async fn ask_stream(&self, user: &TestUser, conversation: &str, question: &str) -> SseClient {
        let response = self
            .app
            .request(
                reqwest::Method::POST,
                &user.key,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .header("accept", "text/event-stream")
            .json(&serde_json::json!({ "content": question }))
            .send()
            .await
            .expect("POST messages");
        assert_eq!(response.status(), StatusCode::OK);
        SseClient::new(response)
    }

    /// Asks without a stream: 202 and the ids.
    pub async fn ask(&self, user: &TestUser, conversation: &str, question: &str) -> Value {
        let response = self
            .app
            .request(
                reqwest::Method::POST,
                &user.key,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .json(&serde_json::json!({ "content": question }))
            .send()
            .await
            .expect("POST messages");
        let (status, body) = ragpipe_tests::app::json_of(response).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// `GET /v1/messages/{id}/events`, optionally with `Last-Event-ID`.
    pub async fn events(&self, user: &TestUser, message: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self
            .app
            .request(
                reqwest::Method::GET,
                &user.key,
                &format!("/v1/messages/{message}/events"),
            )
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.expect("GET events")
    }

    /// The message as `GET /v1/messages/{id}` shows it.
    pub async fn message(&self, user: &TestUser, id: &str) -> Value {
        let (status, body) = self.app.get_json(&user.key, &format!("/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the message is no longer `streaming`.
    pub async fn wait_finished(&self, user: &TestUser, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.message(user, id).await;
            if m["status"] != "streaming" {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id} still streaming: {m}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The usage events of the chat kind, as (model, prompt tokens, completion tokens, key).
    pub async fn chat_usage(&self) -> Vec<(String, i64, i64, String)> {
        sqlx::query_as(
            "SELECT model, prompt_tokens, completion_tokens, idempotency_key FROM usage_events \
             WHERE kind = 'chat' ORDER BY created_at",
        )
        .fetch_all(self.app.pool())
        .await
        .expect("reading usage")
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` (default `message`).
    pub event: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines joined with newlines.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Decodes an event stream's bytes into text as they arrive: a multi-byte character split
/// across network chunks waits for its last byte, and so does a `\r` that may begin a `\r\n`
/// line ending (normalised to `\n`).
#[derive(Debug, Default)]
pub struct SseText {
    pending: Vec<u8>,
}

impl SseText {
    /// The text that `bytes` completes. Panics on bytes that are not UTF-8 (an event stream
    /// is UTF-8 by definition).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => panic!("the event stream is not UTF-8: {e}"),
        };
        // Hold back a trailing \r: its \n may be in the next chunk.
        let take = if valid > 0 && self.pending[valid - 1] == b'\r' {
            valid - 1
        } else {
            valid
        };
        let done: Vec<u8> = self.pending.drain(..take).collect();
        String::from_utf8(done)
            .expect("checked to be UTF-8 above")
            .replace("\r\n", "\n")
    }
}

/// Reads an event stream incrementally.
pub struct SseClient {
    response: reqwest::Response,
    text: SseText,
    buffer: String,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    /// The last event id seen, as EventSource keeps it.
    pub last_event_id: Option<String>,
}

impl SseClient {
    /// Wraps a streaming response.
    pub fn new(response: reqwest::Response) -> SseClient {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type}"
        );
        SseClient {
            response,
            text: SseText::default(),
            buffer: String::new(),
            comments: 0,
            last_event_id: None,
        }
    }

    /// The next event, or None when the stream ended. Panics after 30 s of silence.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(Duration::from_secs(30))
            .await
            .expect("an event within 30 s")
    }

    /// The next event (None: the stream ended), or Err after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<SseEvent>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if !has_data {
                    continue;
                }
                if event.id.is_some() {
                    self.last_event_id = event.id.clone();
                }
                return Ok(Some(event));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(());
            }
            match tokio::time::timeout(deadline - now, self.response.chunk()).await {
                Err(_) => return Err(()),
                Ok(Ok(Some(bytes))) => {
                    let text = self.text.push(&bytes);
                    self.buffer.push_str(&text);
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => panic!("reading the event stream: {e}"),
            }
        }
    }

    /// Every remaining event until the stream ends.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// The text of the delta events, concatenated.
pub fn delta_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.json()["text"].as_str().expect("delta text").to_owned())
        .collect()
}

/// The event names in order, consecutive deltas collapsed into one `delta*`.
pub fn shape(events: &[SseEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let name = if e.event == "delta" {
            "delta*".to_owned()
        } else {
            e.event.clone()
        };
        if out.last() != Some(&name) {
            out.push(name);
        }
    }
    out
}
