//! The OpenAPI document the server serves is what the server does: a real API (with ingest
//! and agent workers and the test chat model) answers every operation, with successes and the
//! error statuses the handlers produce (used-up budgets included), and each answer is checked
//! against the document the same server serves at `/openapi.json`: its status is listed for
//! that operation, its content type is the one listed, and its body validates against the
//! listed schema (JSON Schema 2020-12, `$ref`s resolved in `#/components/schemas`), event by
//! event for event streams. A second test checks that the schemas refuse what they should, so
//! that a check validating nothing cannot pass.

mod agent_support;

use agent_support::{QUESTION, start_with};
use jsonschema::{Draft, Validator};
use ragpipe_store::quotas::{self, Limit, Quota, UserBudget};
use ragpipe_tests::app::{TestApp, TestUser, UploadFile};
use ragpipe_tests::openai_server::ScriptedReply;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::{BTreeMap, BTreeSet};

/// The served document, and what the responses checked against it did.
struct Contract {
    spec: Value,
    /// `METHOD /path` → the statuses seen.
    seen: BTreeMap<String, BTreeSet<u16>>,
    /// Every way a response differed from the document.
    failures: Vec<String>,
    checked: usize,
}

/// One server-sent event: its name and its data.
struct Event {
    name: String,
    data: String,
}

impl Contract {
    async fn fetch(app: &TestApp) -> Contract {
        let response = app.client.get(app.url("/openapi.json")).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        let spec: Value = response.json().await.expect("the document is JSON");
        assert_eq!(spec["openapi"], "3.1.0", "an OpenAPI 3.1 document");
        let mut contract = Contract {
            spec: spec.clone(),
            seen: BTreeMap::new(),
            failures: Vec::new(),
            checked: 0,
        };
        // The document describes itself too.
        contract.check_value("GET /openapi.json", StatusCode::OK, Some("application/json"), &spec);
        contract
    }

    /// Sends `request` for the operation `method template` and checks the answer against the
    /// document; returns the status and the body (JSON, or the events as a JSON array of
    /// `{event, data}`).
    async fn send(&mut self, method: &Method, template: &str, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let operation = format!("{method} {template}");
        let response = request.send().await.unwrap_or_else(|e| panic!("{operation}: {e}"));
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let text = response.text().await.expect("the body");
        if content_type.as_deref() == Some("text/event-stream") {
            let events = parse_events(&text);
            self.check_events(&operation, status, &events);
            let body = events
                .iter()
                .map(
                    |e| json!({"event": e.name, "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null)}),
                )
                .collect();
            return (status, Value::Array(body));
        }
        let body = if text.is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(body) => body,
                Err(e) => {
                    self.failures
                        .push(format!("{operation} {status}: not JSON ({e}): {text:.300}"));
                    Value::Null
                }
            }
        };
        if text.is_empty() {
            self.check_empty(&operation, status, content_type.as_deref());
        } else {
            self.check_value(&operation, status, content_type.as_deref(), &body);
        }
        (status, body)
    }

    /// The documented response of `operation` for `status`, recording that it was seen.
    fn response(&mut self, operation: &str, status: StatusCode) -> Option<Value> {
        self.checked += 1;
        self.seen
            .entry(operation.to_owned())
            .or_default()
            .insert(status.as_u16());
        let (method, path) = operation.split_once(' ').expect("METHOD /path");
        let documented = &self.spec["paths"][path][method.to_lowercase()];
        if !documented.is_object() {
            self.failures.push(format!("{operation}: not in the document"));
            return None;
        }
        match documented["responses"].get(status.as_str()) {
            Some(response) => Some(response.clone()),
            None => {
                self.failures
                    .push(format!("{operation}: status {status} is not documented"));
                None
            }
        }
    }

    fn check_empty(&mut self, operation: &str, status: StatusCode, content_type: Option<&str>) {
        let Some(response) = self.response(operation, status) else {
            return;
        };
        if response
            .get("content")
            .is_some_and(|c| c.as_object().is_some_and(|c| !c.is_empty()))
        {
            self.failures.push(format!(
                "{operation} {status}: an empty body ({content_type:?}) where the document lists content"
            ));
        }
    }

    fn check_value(&mut self, operation: &str, status: StatusCode, content_type: Option<&str>, body: &Value) {
        let Some(response) = self.response(operation, status) else {
            return;
        };
        let Some(content_type) = content_type else {
            self.failures
                .push(format!("{operation} {status}: a body without a content type"));
            return;
        };
        let Some(schema) = response["content"][content_type].get("schema") else {
            self.failures.push(format!(
                "{operation} {status}: content type {content_type} is not documented: {}",
                response["content"]
            ));
            return;
        };
        let schema = schema.clone();
        self.validate(&format!("{operation} {status}"), &schema, body);
    }

    fn check_events(&mut self, operation: &str, status: StatusCode, events: &[Event]) {
        let Some(response) = self.response(operation, status) else {
            return;
        };
        let Some(schema) = response["content"]["text/event-stream"].get("schema") else {
            self.failures
                .push(format!("{operation} {status}: an event stream is not documented"));
            return;
        };
        if events.is_empty() {
            self.failures.push(format!("{operation} {status}: no events"));
        }
        // The events' schema: `x-events` points at a `oneOf`, one schema per event, each
        // titled `event: <name>`.
        let all = self.resolve(&schema["x-events"]).clone();
        let by_name: BTreeMap<String, Value> = all["oneOf"]
            .as_array()
            .expect("the events schema is a oneOf")
            .iter()
            .map(|variant| {
                let title = self.resolve(variant)["title"].as_str().unwrap_or_default();
                let name = title.strip_prefix("event: ").expect("titled `event: <name>`");
                (name.to_owned(), variant.clone())
            })
            .collect();
        let any_event = schema["x-events"].clone();
        for event in events {
            let what = format!("{operation} {status} event {}", event.name);
            let Some(named) = by_name.get(&event.name) else {
                self.failures.push(format!("{what}: not a documented event"));
                continue;
            };
            match serde_json::from_str::<Value>(&event.data) {
                Ok(data) => {
                    self.checked += 1;
                    self.validate(&what, &named.clone(), &data);
                    // The `oneOf` of all events accepts it too: as this event only.
                    self.validate(&format!("{what} (as any event)"), &any_event, &data);
                }
                Err(e) => self.failures.push(format!("{what}: data is not JSON ({e})")),
            }
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(reference) => self
                .spec
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {reference}")),
            None => schema,
        }
    }

    /// Validates `instance` against `schema`, a schema of the document (its `$ref`s point into
    /// the document's components).
    fn validate(&mut self, what: &str, schema: &Value, instance: &Value) {
        let validator = validator(&self.spec, schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            let shown: String = instance.to_string().chars().take(600).collect();
            self.failures.push(format!(
                "{what}: the body does not match the document:\n  {}\n  body: {shown}",
                errors.join("\n  ")
            ));
        }
    }
}

/// A validator of `schema` whose references resolve in `spec`: the schema is the root of a
/// document that also holds the components, where `#/components/schemas/...` points.
fn validator(spec: &Value, schema: &Value) -> Validator {
    let mut root = match schema {
        Value::Object(o) => o.clone(),
        other => panic!("not a schema: {other}"),
    };
    root.insert("components".into(), spec["components"].clone());
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("the document's schema {schema} is not valid JSON Schema: {e}"))
}

/// The events of a whole event stream (comments skipped).
fn parse_events(text: &str) -> Vec<Event> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let mut name = "message".to_owned();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            (!data.is_empty()).then(|| Event {
                name,
                data: data.join("\n"),
            })
        })
        .collect()
}

/// A reply slow enough (about 1.8 s of deltas) that an answer can be cancelled while written.
fn slow_reply() -> ScriptedReply {
    ScriptedReply::fixture("slow-long-answer").expect("fixture")
}

async fn set_budget(app: &TestApp, user: &TestUser, quota: Quota, budget: UserBudget) {
    quotas::set_user_budget(&app.store, user.id, quota, budget)
        .await
        .expect("setting a budget");
}

fn cited_reply() -> ScriptedReply {
    ScriptedReply::fixture("cites-two-sources").expect("fixture")
}

async fn system(options: PgPoolOptions, connect: PgConnectOptions) -> agent_support::System {
    start_with(agent_support::pool(options, connect).await, true, |c| {
        c.limits.max_file_bytes = 512 * 1024;
        c.limits.max_request_bytes = 1024 * 1024;
    })
    .await
}

#[sqlx::test(migrations = false)]
async fn every_operation_answers_as_the_openapi_document_says(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = system(options, connect).await;
    let app = &system.app;
    let alice = &system.alice;
    let bob = app.create_user("bob@example.com").await;
    let mut c = Contract::fetch(app).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let as_alice = |method: &Method, path: &str| app.request(method.clone(), &alice.key, path);
    let as_bob = |method: &Method, path: &str| app.request(method.clone(), &bob.key, path);
    let anonymous = |method: &Method, path: &str| app.client.request(method.clone(), app.url(path));
    let bad_key = |method: &Method, path: &str| app.request(method.clone(), "rp_not_a_key", path);
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);

    // Operations.
    c.send(&get, "/healthz", anonymous(&get, "/healthz")).await;
    c.send(&get, "/readyz", anonymous(&get, "/readyz")).await;

    // Documents.
    let t = "/v1/documents";
    let (status, listed) = c.send(&get, t, as_alice(&get, t)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ready = listed["documents"][0]["id"].as_str().expect("a document").to_owned();
    c.send(&get, t, as_alice(&get, "/v1/documents?status=ready&limit=1"))
        .await;
    c.send(&get, t, as_alice(&get, "/v1/documents?limit=0")).await;
    c.send(&get, t, as_alice(&get, "/v1/documents?before=nope")).await;
    c.send(&get, t, anonymous(&get, t)).await;
    c.send(&get, t, bad_key(&get, t)).await;
    let upload = |files: Vec<UploadFile>| as_alice(&post, t).multipart(TestApp::upload_form(files));
    let notes = || {
        UploadFile::new("notes.md", b"# Notes\n\nThe keeper trims the wick at dusk.\n".to_vec())
            .metadata(json!({"team": "lights"}))
    };
    let (status, uploaded) = c.send(&post, t, upload(vec![notes()])).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let fresh = uploaded["documents"][0]["id"].as_str().expect("an id").to_owned();
    let (status, _) = c.send(&post, t, upload(vec![notes()])).await;
    assert_eq!(status, StatusCode::OK, "the same bytes again");
    c.send(&post, t, upload(vec![UploadFile::new("empty.txt", Vec::new())]))
        .await;
    c.send(
        &post,
        t,
        upload(vec![UploadFile::new(
            "pixel.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
        )]),
    )
    .await;
    c.send(
        &post,
        t,
        upload(vec![UploadFile::new("big.txt", vec![b'a'; 600 * 1024])]),
    )
    .await;
    c.send(&post, t, as_alice(&post, t).json(&json!({"file": "hello"})))
        .await;
    c.send(
        &post,
        t,
        anonymous(&post, t).multipart(TestApp::upload_form(vec![notes()])),
    )
    .await;

    let t = "/v1/documents/{id}";
    let (status, document) = c.send(&get, t, as_alice(&get, &format!("/v1/documents/{ready}"))).await;
    assert_eq!(status, StatusCode::OK, "{document}");
    c.send(&get, t, as_alice(&get, &format!("/v1/documents/{fresh}"))).await;
    c.send(&get, t, as_bob(&get, &format!("/v1/documents/{ready}"))).await;
    c.send(&get, t, as_alice(&get, &format!("/v1/documents/{unknown}")))
        .await;
    c.send(&get, t, as_alice(&get, "/v1/documents/not-a-uuid")).await;
    c.send(&get, t, anonymous(&get, &format!("/v1/documents/{ready}")))
        .await;

    let t = "/v1/documents/{id}/chunks";
    let (status, chunks) = c
        .send(&get, t, as_alice(&get, &format!("/v1/documents/{ready}/chunks")))
        .await;
    assert_eq!(status, StatusCode::OK, "{chunks}");
    assert!(!chunks["chunks"].as_array().expect("chunks").is_empty(), "{chunks}");
    c.send(
        &get,
        t,
        as_alice(&get, &format!("/v1/documents/{ready}/chunks?limit=5000")),
    )
    .await;
    c.send(&get, t, as_alice(&get, &format!("/v1/documents/{unknown}/chunks")))
        .await;
    c.send(&get, t, as_alice(&get, "/v1/documents/12345/chunks")).await;
    c.send(&get, t, anonymous(&get, &format!("/v1/documents/{ready}/chunks")))
        .await;

    // Search.
    let t = "/v1/search";
    let (status, found) = c
        .send(
            &post,
            t,
            as_alice(&post, t).json(&json!({"query": QUESTION, "highlight": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert!(!found["hits"].as_array().expect("hits").is_empty(), "{found}");
    c.send(
        &post,
        t,
        as_alice(&post, t).json(&json!({"query": "batches", "mode": "text", "k": 1})),
    )
    .await;
    c.send(&post, t, as_alice(&post, t).json(&json!({"query": ""}))).await;
    c.send(&post, t, as_alice(&post, t).json(&json!({"query": "x", "k": 0})))
        .await;
    c.send(&post, t, as_alice(&post, t).body(r#"{"query": "x"}"#)).await;
    c.send(
        &post,
        t,
        as_alice(&post, t).json(&json!({"query": "x", "padding": "x".repeat(3 * 1024 * 1024)})),
    )
    .await;
    c.send(&post, t, anonymous(&post, t).json(&json!({"query": "x"}))).await;

    // Conversations and questions.
    let t = "/v1/conversations";
    let (status, conversation) = c
        .send(&post, t, as_alice(&post, t).json(&json!({"title": "Lighthouse"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{conversation}");
    let conversation = conversation["id"].as_str().expect("an id").to_owned();
    c.send(&post, t, as_alice(&post, t)).await;
    c.send(&post, t, as_alice(&post, t).json(&json!({"title": "x".repeat(201)})))
        .await;
    c.send(
        &post,
        t,
        as_alice(&post, t).header("content-type", "text/plain").body("{}"),
    )
    .await;
    c.send(&post, t, anonymous(&post, t).json(&json!({}))).await;
    c.send(&get, t, as_alice(&get, t)).await;
    c.send(&get, t, as_alice(&get, "/v1/conversations?limit=many")).await;
    c.send(&get, t, anonymous(&get, t)).await;

    let t = "/v1/conversations/{id}/messages";
    let path = format!("/v1/conversations/{conversation}/messages");
    system.model().push_reply(cited_reply());
    let (status, events) = c
        .send(
            &post,
            t,
            as_alice(&post, &path)
                .header("accept", "text/event-stream")
                .json(&json!({"content": QUESTION})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(names.first(), Some(&"message"), "{events}");
    assert_eq!(names.last(), Some(&"done"), "{events}");
    assert!(
        names.contains(&"context") && names.contains(&"delta") && names.contains(&"usage"),
        "{names:?}"
    );
    let answered = events[0]["data"]["message_id"]
        .as_str()
        .expect("the answer's id")
        .to_owned();
    let question = events[0]["data"]["user_message_id"]
        .as_str()
        .expect("the question's id")
        .to_owned();

    system.model().push_reply(slow_reply());
    let (status, asked) = c
        .send(
            &post,
            t,
            as_alice(&post, &path).json(&json!({"content": "Tell me everything.", "k": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let streaming = asked["assistant_message"]["id"].as_str().expect("an id").to_owned();
    let cancel = format!("/v1/messages/{streaming}/cancel");
    let (status, cancelled) = c
        .send(&post, "/v1/messages/{id}/cancel", as_alice(&post, &cancel))
        .await;
    assert_eq!(status, StatusCode::OK, "cancelled while written: {cancelled}");
    let (status, _) = c
        .send(&post, "/v1/messages/{id}/cancel", as_alice(&post, &cancel))
        .await;
    assert_eq!(status, StatusCode::OK, "cancelled again");

    c.send(&post, t, as_alice(&post, &path).json(&json!({"content": "  "})))
        .await;
    c.send(&post, t, as_alice(&post, &path).json(&json!({"content": "x", "k": 0})))
        .await;
    c.send(
        &post,
        t,
        as_alice(&post, &path).json(&json!({"content": "x".repeat(33 * 1024)})),
    )
    .await;
    c.send(
        &post,
        t,
        as_alice(&post, &path).header("content-type", "text/plain").body("{}"),
    )
    .await;
    c.send(
        &post,
        t,
        as_alice(&post, &format!("/v1/conversations/{unknown}/messages")).json(&json!({"content": "x"})),
    )
    .await;
    c.send(
        &post,
        t,
        as_alice(&post, "/v1/conversations/x/messages").json(&json!({"content": "x"})),
    )
    .await;
    c.send(&post, t, anonymous(&post, &path).json(&json!({"content": "x"})))
        .await;
    let (status, page) = c.send(&get, t, as_alice(&get, &path)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    c.send(&get, t, as_alice(&get, &format!("{path}?limit=1"))).await;
    c.send(&get, t, as_alice(&get, &format!("{path}?after=nope"))).await;
    c.send(&get, t, as_bob(&get, &path)).await;
    c.send(&get, t, as_alice(&get, "/v1/conversations/nope/messages")).await;
    c.send(&get, t, anonymous(&get, &path)).await;

    // Messages.
    let t = "/v1/messages/{id}";
    let (status, message) = c
        .send(&get, t, as_alice(&get, &format!("/v1/messages/{answered}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert!(
        !message["citations"].as_array().expect("citations").is_empty(),
        "{message}"
    );
    c.send(&get, t, as_alice(&get, &format!("/v1/messages/{question}")))
        .await;
    c.send(&get, t, as_alice(&get, &format!("/v1/messages/{streaming}")))
        .await;
    c.send(&get, t, as_bob(&get, &format!("/v1/messages/{answered}"))).await;
    c.send(&get, t, as_alice(&get, "/v1/messages/%00")).await;
    c.send(&get, t, anonymous(&get, &format!("/v1/messages/{answered}")))
        .await;

    let t = "/v1/messages/{id}/cancel";
    c.send(&post, t, as_alice(&post, &format!("/v1/messages/{answered}/cancel")))
        .await;
    c.send(&post, t, as_alice(&post, &format!("/v1/messages/{question}/cancel")))
        .await;
    c.send(&post, t, as_alice(&post, &format!("/v1/messages/{unknown}/cancel")))
        .await;
    c.send(&post, t, as_alice(&post, "/v1/messages/1/cancel")).await;
    c.send(&post, t, anonymous(&post, &format!("/v1/messages/{answered}/cancel")))
        .await;

    let t = "/v1/messages/{id}/events";
    let events_of =
        |id: &str| as_alice(&get, &format!("/v1/messages/{id}/events")).header("accept", "text/event-stream");
    let (status, replayed) = c.send(&get, t, events_of(&answered)).await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    c.send(&get, t, events_of(&answered).header("last-event-id", "context"))
        .await;
    c.send(&get, t, events_of(&streaming)).await;
    c.send(&get, t, events_of(&answered).header("last-event-id", "nope"))
        .await;
    c.send(&get, t, events_of(&question)).await;
    c.send(&get, t, events_of(&unknown)).await;
    c.send(&get, t, events_of("not-an-id")).await;
    c.send(&get, t, anonymous(&get, &format!("/v1/messages/{answered}/events")))
        .await;

    // Usage, after the questions and uploads were accounted.
    let t = "/v1/usage";
    for query in ["", "?group_by=model", "?group_by=kind&from=2020-01-01"] {
        let (status, usage) = c.send(&get, t, as_alice(&get, &format!("{t}{query}"))).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        assert!(!usage["rows"].as_array().expect("rows").is_empty(), "{query}: {usage}");
    }
    c.send(&get, t, as_alice(&get, "/v1/usage?from=yesterday")).await;
    c.send(&get, t, as_alice(&get, "/v1/usage?group_by=week")).await;
    c.send(&get, t, anonymous(&get, t)).await;

    // Reprocessing, and deleting.
    let done = app
        .wait_for_document(&alice.key, &fresh, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "ready", "{done}");
    let t = "/v1/documents/{id}/reprocess";
    let reprocess = format!("/v1/documents/{fresh}/reprocess");
    let (status, pending) = c.send(&post, t, as_alice(&post, &reprocess)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert!(pending["reprocess"].is_object(), "the pending run is shown: {pending}");
    // In flight still (409), or already done (202 again): either is documented.
    c.send(&post, t, as_alice(&post, &reprocess).json(&json!({"stage": "chunk"})))
        .await;
    c.send(
        &post,
        t,
        as_alice(&post, &reprocess).json(&json!({"chunk_max_tokens": 0})),
    )
    .await;
    c.send(
        &post,
        t,
        as_alice(&post, &reprocess).json(&json!({"embedding_model": "nope"})),
    )
    .await;
    c.send(&post, t, as_alice(&post, &reprocess).json(&json!({"stage": "all"})))
        .await;
    c.send(
        &post,
        t,
        as_alice(&post, &reprocess)
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    c.send(
        &post,
        t,
        as_alice(&post, &reprocess).json(&json!({"padding": "x".repeat(3 * 1024 * 1024)})),
    )
    .await;
    c.send(&post, t, as_alice(&post, &format!("/v1/documents/{unknown}/reprocess")))
        .await;
    c.send(&post, t, as_alice(&post, "/v1/documents/x/reprocess")).await;
    c.send(&post, t, anonymous(&post, &reprocess)).await;

    // Budgets used up: tokens (429 wherever models would be called), then storage (413).
    let other = listed["documents"][1]["id"]
        .as_str()
        .expect("a second document")
        .to_owned();
    let more = || upload(vec![UploadFile::new("more.txt", b"More.\n".to_vec())]);
    set_budget(app, alice, Quota::MonthlyTokens, UserBudget::Own(Limit::At(1))).await;
    let (status, _) = c.send(&post, "/v1/documents", more()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let ask = as_alice(&post, &path).json(&json!({"content": "And?"}));
    let (status, _) = c.send(&post, "/v1/conversations/{id}/messages", ask).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let again = as_alice(&post, &format!("/v1/documents/{other}/reprocess"));
    let (status, _) = c.send(&post, t, again).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    set_budget(app, alice, Quota::MonthlyTokens, UserBudget::Plan).await;
    set_budget(app, alice, Quota::StorageBytes, UserBudget::Own(Limit::At(1))).await;
    let (status, _) = c.send(&post, "/v1/documents", more()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    set_budget(app, alice, Quota::StorageBytes, UserBudget::Plan).await;

    let t = "/v1/documents/{id}";
    c.send(&delete, t, as_bob(&delete, &format!("/v1/documents/{ready}")))
        .await;
    c.send(&delete, t, anonymous(&delete, &format!("/v1/documents/{ready}")))
        .await;
    c.send(&delete, t, as_alice(&delete, "/v1/documents/nope")).await;
    let (status, _) = c
        .send(&delete, t, as_alice(&delete, &format!("/v1/documents/{ready}")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    c.send(&delete, t, as_alice(&delete, &format!("/v1/documents/{ready}")))
        .await;

    // Every operation of the document was exercised: a success, and for the API's routes no
    // key (401), and for those with an id an id that is not one (400) and one of nothing (404).
    let mut unexercised = Vec::new();
    for (path, item) in c.spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            let operation = format!("{} {path}", method.to_uppercase());
            let seen = c.seen.get(&operation).cloned().unwrap_or_default();
            let mut wanted: Vec<(&str, bool)> = vec![("a success", seen.iter().any(|s| (200..300).contains(s)))];
            if path.starts_with("/v1/") {
                wanted.push(("401", seen.contains(&401)));
            }
            if path.contains("{id}") {
                wanted.push(("400", seen.contains(&400)));
                wanted.push(("404", seen.contains(&404)));
            }
            for (what, done) in wanted {
                if !done {
                    unexercised.push(format!("{operation}: {what} (seen {seen:?})"));
                }
            }
        }
    }
    eprintln!("checked {} responses and events: {:?}", c.checked, c.seen);
    assert!(
        c.failures.is_empty(),
        "{} answers differ from the OpenAPI document:\n{}",
        c.failures.len(),
        c.failures.join("\n")
    );
    assert!(unexercised.is_empty(), "operations not exercised: {unexercised:#?}");
    system.app.shutdown().await;
}

/// The document's schemas are valid JSON Schema 2020-12 and strict enough to refuse what the
/// server never sends: a check that validates nothing would pass the test above.
#[sqlx::test(migrations = false)]
async fn the_documents_schemas_refuse_bodies_of_another_shape(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let c = Contract::fetch(&app).await;
    assert!(c.failures.is_empty(), "{:?}", c.failures);
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let valid = |name: &str, body: &Value| validator(&c.spec, &schema(name)).is_valid(body);
    let error = json!({"error": {"code": "not_found", "message": "document not found"}});
    assert!(valid("Error", &error));
    for wrong in [
        json!({"error": "not_found"}),
        json!({"error": {"code": "not_found"}}),
        json!({"code": "not_found", "message": "x"}),
    ] {
        assert!(!valid("Error", &wrong), "an Error schema that accepts {wrong}");
    }
    let conversation = json!({
        "id": uuid::Uuid::new_v4(), "title": null,
        "created_at": "2026-12-04T21:00:00Z", "updated_at": "2026-12-04T21:00:00Z",
    });
    assert!(valid("Conversation", &conversation));
    let mut wrong = conversation.clone();
    wrong["id"] = json!("not-a-uuid");
    assert!(!valid("Conversation", &wrong), "formats are validated");
    let mut wrong = conversation.clone();
    wrong["created_at"] = json!(12);
    assert!(!valid("Conversation", &wrong));
    let mut wrong = conversation;
    wrong.as_object_mut().expect("an object").remove("updated_at");
    assert!(!valid("Conversation", &wrong), "required fields are required");
    assert!(valid("DeltaEvent", &json!({"text": "more"})));
    assert!(!valid("DeltaEvent", &json!({"text": 1})));
    app.shutdown().await;
}
