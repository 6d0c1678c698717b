//! Every answer the server gives to bad input: the one JSON error shape
//! (`{"error": {"code", "message"}}`, `Content-Type: application/json`) with the status that
//! says what is wrong, and never a 500. Walks every operation of the OpenAPI document the
//! server serves with malformed bodies, parameters and ids; sends a NUL character in every
//! string a route takes; and sends the requests hyper refuses before any route sees them.

use ragpipe_api::Error;
use ragpipe_store::conversations;
use ragpipe_store::documents::{self, NewDocument};
use ragpipe_tests::app::{TestApp, TestUser, UploadFile, error_code, json_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Checks that a response is the JSON error shape with `expected` status, and returns its
/// code and message.
async fn error_of(response: reqwest::Response, expected: StatusCode, what: &str) -> Result<(String, String), String> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    shape(status, &content_type, &text, expected).map_err(|e| format!("{what}: {e}"))
}

/// The code and message of an error body, or why it is not the one shape with `expected`.
fn shape(status: StatusCode, content_type: &str, text: &str, expected: StatusCode) -> Result<(String, String), String> {
    let shown: String = text.chars().take(300).collect();
    if status != expected {
        return Err(format!("status {status}, expected {expected}: {content_type} {shown}"));
    }
    if !content_type.starts_with("application/json") {
        return Err(format!("{status} with content type {content_type:?}: {shown:?}"));
    }
    let body: Value = serde_json::from_str(text).map_err(|e| format!("{status}: not JSON ({e}): {shown:?}"))?;
    let object = body.as_object().filter(|o| o.len() == 1);
    let error = object.and_then(|o| o.get("error")).and_then(Value::as_object);
    match error {
        Some(e)
            if e.len() == 2
                && e["code"].as_str().is_some_and(|c| !c.is_empty())
                && e["message"].as_str().is_some_and(|m| !m.is_empty()) =>
        {
            Ok((
                e["code"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            ))
        }
        _ => Err(format!("{status}: not the error shape: {shown}")),
    }
}

/// The resources the walk points `{id}` at: real ones of the caller's, so that a malformed
/// body is the only thing wrong with a request.
struct Fixture {
    app: TestApp,
    alice: TestUser,
    document: String,
    conversation: String,
    message: String,
}

async fn fixture(pool: PgPool) -> Fixture {
    let app = TestApp::builder(pool)
        .config(|c| {
            c.limits.max_file_bytes = 512 * 1024;
            c.limits.max_request_bytes = 1024 * 1024;
        })
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    let document = app
        .upload_one(
            &alice.key,
            "keeper.md",
            "# Keeper\n\nThe keeper trims the wick at dusk.\n",
        )
        .await["id"]
        .as_str()
        .expect("a document id")
        .to_owned();
    let (status, conversation) = json_of(
        app.request(Method::POST, &alice.key, "/v1/conversations")
            .json(&json!({"title": "Lighthouse"}))
            .send()
            .await
            .expect("POST /v1/conversations"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{conversation}");
    let conversation = conversation["id"].as_str().expect("a conversation id").to_owned();
    let (status, asked) = json_of(
        app.request(
            Method::POST,
            &alice.key,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .json(&json!({"content": "When is the wick trimmed?"}))
        .send()
        .await
        .expect("POST messages"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let message = asked["assistant_message"]["id"]
        .as_str()
        .expect("a message id")
        .to_owned();
    Fixture {
        app,
        alice,
        document,
        conversation,
        message,
    }
}

impl Fixture {
    /// `path` with `{id}` replaced by the caller's resource of that route (or by `id`).
    fn concrete(&self, path: &str, id: Option<&str>) -> String {
        let own = if path.starts_with("/v1/documents/") {
            &self.document
        } else if path.starts_with("/v1/conversations/") {
            &self.conversation
        } else {
            &self.message
        };
        path.replace("{id}", id.unwrap_or(own))
    }

    fn request(&self, method: &Method, path: &str) -> reqwest::RequestBuilder {
        self.app.request(method.clone(), &self.alice.key, path)
    }
}

/// A valid value for a body property (only required ones and the NUL cases use them).
fn valid_value(property: &str) -> Value {
    match property {
        "query" => json!("lighthouse"),
        "content" => json!("What does the keeper do?"),
        other => panic!("no valid value for required property {other}: add one"),
    }
}

/// Resolves a `$ref` of the OpenAPI document.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => spec
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {reference}")),
        None => schema,
    }
}

/// The JSON types a schema allows.
fn types(schema: &Value) -> Vec<String> {
    match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// A value of a type the property does not take.
fn wrong_type(property_types: &[String]) -> Value {
    let has = |t: &str| property_types.iter().any(|p| p == t);
    if has("string") {
        json!(12345)
    } else if has("integer") || has("number") {
        json!("twelve")
    } else if has("boolean") {
        json!("yes")
    } else if has("array") {
        json!("not a list")
    } else {
        json!([1, 2])
    }
}

/// Values of the property with a NUL character somewhere inside (none for numbers and
/// booleans).
fn with_nul(property_types: &[String]) -> Vec<Value> {
    let has = |t: &str| property_types.iter().any(|p| p == t);
    let mut values = Vec::new();
    if has("string") {
        values.push(json!("a\u{0}b"));
    }
    if has("array") {
        values.push(json!(["a\u{0}b"]));
    }
    if has("object") {
        values.push(json!({"team": "a\u{0}b"}));
        values.push(json!({"te\u{0}am": "b"}));
    }
    values
}

#[sqlx::test(migrations = false)]
async fn every_operation_answers_malformed_requests_in_the_json_error_shape(pool: PgPool) {
    let f = fixture(pool).await;
    let response = f.app.client.get(f.app.url("/openapi.json")).send().await.expect("GET");
    let (status, spec) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0usize;
    let mut check = |result: Result<(String, String), String>| {
        checked += 1;
        if let Err(e) = result {
            failures.push(e);
        }
    };
    // Every status the walk expects of an operation is one its OpenAPI entry lists.
    let mut undocumented: Vec<String> = Vec::new();
    let mut documents = |operation: &Value, statuses: &[StatusCode], what: &str| {
        for status in statuses {
            if operation["responses"].get(status.as_str()).is_none() {
                undocumented.push(format!("{what}: {status}"));
            }
        }
    };
    let unknown_id = uuid::Uuid::new_v4().to_string();

    for (path, item) in spec["paths"].as_object().expect("paths") {
        let methods: Vec<&str> = ["get", "post", "put", "patch", "delete"]
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        // A method the path does not have.
        for method in ["put", "patch"] {
            if !methods.contains(&method) {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let response = f.request(&m, &f.concrete(path, None)).send().await.expect("send");
                check(error_of(response, StatusCode::METHOD_NOT_ALLOWED, &format!("{method} {path}")).await);
            }
        }
        for method in methods {
            let operation = &item[method];
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let what = format!("{} {path}", m.as_str());
            let target = f.concrete(path, None);
            let body = &operation["requestBody"]["content"];
            let json_schema = body.get("application/json").map(|c| resolve(&spec, &c["schema"]));
            let required: Vec<String> = json_schema
                .and_then(|s| s["required"].as_array())
                .map(|r| r.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let minimal = || {
                let mut o = serde_json::Map::new();
                for p in &required {
                    o.insert(p.clone(), valid_value(p));
                }
                o
            };

            // Ids that are not ids, and ids of nothing.
            if path.contains("{id}") {
                documents(operation, &[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND], &what);
                for bad in ["not-a-uuid", "%00", "12345", "a%00b"] {
                    let mut request = f.request(&m, &f.concrete(path, Some(bad)));
                    if json_schema.is_some() {
                        request = request.json(&Value::Object(minimal()));
                    }
                    let response = request.send().await.expect("send");
                    check(error_of(response, StatusCode::BAD_REQUEST, &format!("{what} with id {bad:?}")).await);
                }
                let mut request = f.request(&m, &f.concrete(path, Some(&unknown_id)));
                if json_schema.is_some() {
                    request = request.json(&Value::Object(minimal()));
                }
                let response = request.send().await.expect("send");
                check(error_of(response, StatusCode::NOT_FOUND, &format!("{what} with an unknown id")).await);
            }

            // No key, a bad key (only the API routes take one).
            if path.starts_with("/v1/") {
                documents(operation, &[StatusCode::UNAUTHORIZED], &what);
                let response = f
                    .app
                    .client
                    .request(m.clone(), f.app.url(&target))
                    .send()
                    .await
                    .expect("send");
                check(error_of(response, StatusCode::UNAUTHORIZED, &format!("{what} without a key")).await);
            }

            // Query parameters: a NUL, a value of the wrong type, one that does not exist.
            let parameters: Vec<&Value> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&spec, p))
                .collect();
            let query: Vec<&str> = parameters
                .iter()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for name in &query {
                for (value, why) in [("%00", "a NUL"), ("a%00b", "a NUL inside"), ("nope", "a bad value")] {
                    let response = f
                        .request(&m, &format!("{target}?{name}={value}"))
                        .send()
                        .await
                        .expect("send");
                    let result =
                        error_of(response, StatusCode::BAD_REQUEST, &format!("{what} ?{name} with {why}")).await;
                    let result = result.and_then(|(code, message)| {
                        if why.contains("NUL") && !message.contains(name) {
                            Err(format!("{what} ?{name}: the message does not name it: {message}"))
                        } else {
                            Ok((code, message))
                        }
                    });
                    check(result);
                }
            }
            if !query.is_empty() {
                documents(operation, &[StatusCode::BAD_REQUEST], &what);
                let response = f
                    .request(&m, &format!("{target}?nonsense=1"))
                    .send()
                    .await
                    .expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::BAD_REQUEST,
                        &format!("{what} with an unknown parameter"),
                    )
                    .await,
                );
            }
            for header in parameters.iter().filter(|p| p["in"] == "header") {
                let name = header["name"].as_str().expect("a header name");
                let response = f.request(&m, &target).header(name, "nope").send().await.expect("send");
                check(error_of(response, StatusCode::BAD_REQUEST, &format!("{what} with {name}: nope")).await);
            }

            // JSON bodies.
            if let Some(schema) = json_schema {
                documents(
                    operation,
                    &[
                        StatusCode::BAD_REQUEST,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ],
                    &what,
                );
                let response = f
                    .request(&m, &target)
                    .header("content-type", "text/plain")
                    .body(Value::Object(minimal()).to_string())
                    .send()
                    .await
                    .expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &format!("{what} as text/plain"),
                    )
                    .await,
                );
                let response = f
                    .request(&m, &target)
                    .body(Value::Object(minimal()).to_string())
                    .send()
                    .await
                    .expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &format!("{what} without a content type"),
                    )
                    .await,
                );
                for broken in ["{\"", "[1,", "nul", "{\"query\": \"x\"} trailing"] {
                    let response = f
                        .request(&m, &target)
                        .header("content-type", "application/json")
                        .body(broken)
                        .send()
                        .await
                        .expect("send");
                    check(
                        error_of(
                            response,
                            StatusCode::BAD_REQUEST,
                            &format!("{what} with broken JSON {broken:?}"),
                        )
                        .await,
                    );
                }
                let mut unknown = minimal();
                unknown.insert("nonsense".into(), json!(1));
                let response = f.request(&m, &target).json(&unknown).send().await.expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::BAD_REQUEST,
                        &format!("{what} with an unknown field"),
                    )
                    .await,
                );
                let response = f
                    .request(&m, &target)
                    .json(&json!([1, 2, 3]))
                    .send()
                    .await
                    .expect("send");
                check(error_of(response, StatusCode::BAD_REQUEST, &format!("{what} with an array body")).await);
                // Over the 2 MiB limit of JSON bodies.
                let mut oversize = minimal();
                oversize.insert("padding".into(), json!("x".repeat(3 * 1024 * 1024)));
                let response = f.request(&m, &target).json(&oversize).send().await.expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("{what} with a 3 MB body"),
                    )
                    .await,
                );

                for (property, property_schema) in schema["properties"].as_object().expect("properties") {
                    let property_types = types(resolve(&spec, property_schema));
                    let mut body = minimal();
                    body.insert(property.clone(), wrong_type(&property_types));
                    let response = f.request(&m, &target).json(&body).send().await.expect("send");
                    check(
                        error_of(
                            response,
                            StatusCode::BAD_REQUEST,
                            &format!("{what} with {property} of the wrong type ({})", body[property]),
                        )
                        .await,
                    );
                    for value in with_nul(&property_types) {
                        let mut body = minimal();
                        body.insert(property.clone(), value.clone());
                        let response = f.request(&m, &target).json(&body).send().await.expect("send");
                        let result = error_of(
                            response,
                            StatusCode::BAD_REQUEST,
                            &format!("{what} with {property}: {value}"),
                        )
                        .await;
                        check(result.and_then(|(code, message)| {
                            if message.contains(property.as_str()) && message.contains("NUL") {
                                Ok((code, message))
                            } else {
                                Err(format!(
                                    "{what} with {property}: {value}: the message does not name it: {message}"
                                ))
                            }
                        }));
                    }
                }
            }

            // The multipart upload.
            if body.get("multipart/form-data").is_some() {
                documents(
                    operation,
                    &[StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE],
                    &what,
                );
                let response = f
                    .request(&m, &target)
                    .json(&json!({"file": "hello"}))
                    .send()
                    .await
                    .expect("send");
                // 400, as it always was (api_documents.rs): the multipart reader's rejection.
                check(error_of(response, StatusCode::BAD_REQUEST, &format!("{what} as JSON")).await);
                let response = f
                    .request(&m, &target)
                    .header("content-type", "multipart/form-data; boundary=XYZ")
                    .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno end")
                    .send()
                    .await
                    .expect("send");
                check(
                    error_of(
                        response,
                        StatusCode::BAD_REQUEST,
                        &format!("{what} with a broken multipart body"),
                    )
                    .await,
                );
                let response = f
                    .app
                    .upload(&f.alice.key, vec![UploadFile::new("big.txt", vec![b'a'; 600 * 1024])])
                    .await;
                check(
                    error_of(
                        response,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("{what} over the file limit"),
                    )
                    .await,
                );
                for (metadata, why) in [
                    (json!({"team": "a\u{0}b"}), "a NUL in a metadata value"),
                    (json!({"te\u{0}am": "b"}), "a NUL in a metadata key"),
                    (json!({"team": {"lead": ["a\u{0}b"]}}), "a NUL deep in the metadata"),
                ] {
                    let file = UploadFile::new("nul.txt", format!("{why}\n").into_bytes()).metadata(metadata);
                    let response = f.app.upload(&f.alice.key, vec![file]).await;
                    let result = error_of(response, StatusCode::BAD_REQUEST, &format!("{what} with {why}")).await;
                    check(result.and_then(|(code, message)| {
                        if code == "invalid_metadata" && message.contains("NUL") {
                            Ok((code, message))
                        } else {
                            Err(format!("{what} with {why}: {code} {message}"))
                        }
                    }));
                }
            }
        }
    }

    // The searches of the issue: a 50 MB JSON body is 413, not 400.
    let response = f
        .request(&Method::POST, "/v1/search")
        .header("content-type", "application/json")
        .body(format!("{{\"query\": \"{}\"}}", "x".repeat(50 * 1024 * 1024)))
        .send()
        .await;
    match response {
        Ok(response) => check(error_of(response, StatusCode::PAYLOAD_TOO_LARGE, "a 50 MB search").await),
        // The server may close the connection before the client has sent all 50 MB.
        Err(e) => eprintln!("a 50 MB search: the connection closed while sending: {e}"),
    }
    // Unknown routes, on both listeners.
    for url in [f.app.url("/v1/nothing"), f.app.url("/"), f.app.ops_url("/nothing")] {
        let response = f.app.client.get(&url).send().await.expect("send");
        check(error_of(response, StatusCode::NOT_FOUND, &url).await);
    }
    let response = f.app.client.post(f.app.ops_url("/metrics")).send().await.expect("send");
    check(
        error_of(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /metrics on the ops listener",
        )
        .await,
    );

    assert!(
        undocumented.is_empty(),
        "statuses the operations answer that openapi.json does not list: {undocumented:?}"
    );
    eprintln!("checked {checked} answers");
    assert!(checked > 150, "the walk checked only {checked} answers");
    assert!(
        failures.is_empty(),
        "{} of {checked} answers are wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Nothing the walk sent was stored: still the one document, conversation and question.
    let documents: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(f.app.pool())
        .await
        .expect("count");
    let conversations: i64 = sqlx::query_scalar("SELECT count(*) FROM copilot_conversations")
        .fetch_one(f.app.pool())
        .await
        .expect("count");
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM copilot_messages")
        .fetch_one(f.app.pool())
        .await
        .expect("count");
    assert_eq!((documents, conversations, messages), (1, 1, 2));
    f.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_nul_in_any_string_is_a_400_naming_the_field_and_nothing_is_written(pool: PgPool) {
    let f = fixture(pool).await;
    let conversation = &f.conversation;
    let document = &f.document;
    let message = &f.message;
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::POST,
            "/v1/search".into(),
            Some(json!({"query": "keeper\u{0}"})),
            "query",
        ),
        (
            Method::POST,
            "/v1/search".into(),
            Some(json!({"query": "keeper", "mode": "text", "metadata": {"team": "a\u{0}"}})),
            "metadata.team",
        ),
        (
            Method::POST,
            "/v1/search".into(),
            Some(json!({"query": "keeper", "mode": "text", "metadata": {"t\u{0}": "a"}})),
            "metadata",
        ),
        (
            Method::POST,
            "/v1/conversations".into(),
            Some(json!({"title": "Notes\u{0}"})),
            "title",
        ),
        (
            Method::POST,
            format!("/v1/conversations/{conversation}/messages"),
            Some(json!({"content": "When\u{0}?"})),
            "content",
        ),
        (
            Method::POST,
            format!("/v1/documents/{document}/reprocess"),
            Some(json!({"embedding_model": "ragpipe-hash-v1\u{0}"})),
            "embedding_model",
        ),
        (Method::GET, "/v1/usage?from=2026-01-01%00".into(), None, "from"),
        (Method::GET, "/v1/usage?group_by=%00day".into(), None, "group_by"),
        (Method::GET, "/v1/documents?status=ready%00".into(), None, "status"),
        (Method::GET, "/v1/conversations?before=%00".into(), None, "before"),
        (
            Method::GET,
            format!("/v1/documents/{document}/chunks?offset=%00"),
            None,
            "offset",
        ),
        (
            Method::GET,
            format!("/v1/conversations/{conversation}/messages?after=%00"),
            None,
            "after",
        ),
        (Method::GET, format!("/v1/messages/{message}%00"), None, "id"),
    ];
    for (method, path, body, field) in cases {
        let mut request = f.request(&method, &path);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("send");
        let what = format!("{method} {path} {}", body.unwrap_or_default());
        match error_of(response, StatusCode::BAD_REQUEST, &what).await {
            Ok((_, message)) => assert!(
                message.contains(field) && (message.contains("NUL") || field == "id"),
                "{what}: the message does not name {field}: {message}"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    let (status, body) = f
        .app
        .upload_json(
            &f.alice.key,
            vec![UploadFile::new("team.md", b"# Team\n".to_vec()).metadata(json!({"owner": "a\u{0}"}))],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_metadata");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("`owner`")),
        "{body}"
    );

    // Nothing was written: the fixture's document, conversation, question and answer only,
    // and no reprocessing was marked.
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM copilot_conversations), \
         (SELECT count(*) FROM copilot_messages), (SELECT count(*) FROM documents WHERE reprocess IS NOT NULL)",
    )
    .fetch_one(f.app.pool())
    .await
    .expect("counts");
    assert_eq!(counts, (1, 1, 2, 0));
    f.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn text_the_database_refuses_is_a_400_not_a_500(pool: PgPool) {
    // The net under the checks: a store error from a NUL that got past them maps to 400.
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    let e = conversations::create(&mut tx, Some("a\0b"))
        .await
        .expect_err("PostgreSQL refuses NUL in text");
    let error = Error::from(e);
    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error.code, "invalid_request");
    drop(tx);

    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    let e = documents::create(
        &mut tx,
        &NewDocument {
            filename: "a.txt",
            content_type: "text/plain",
            bytes: b"a",
            sha256: [7; 32],
            metadata: json!({"team": "a\u{0}b"}),
        },
        3,
    )
    .await
    .expect_err("PostgreSQL refuses \\u0000 in jsonb");
    let error = Error::from(e);
    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error}");
    drop(tx);
    app.shutdown().await;
}

/// A raw HTTP/1.1 connection, for requests no client library sends.
struct Raw {
    stream: TcpStream,
    /// Bytes read past the last response (a pipelined response's start).
    pending: Vec<u8>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connecting"),
            pending: Vec::new(),
        }
    }

    async fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .unwrap_or_else(|e| panic!("reading {what}: {e}"));
        assert!(
            n > 0,
            "the connection closed before {what}: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        self.pending.extend_from_slice(&chunk[..n]);
    }

    /// Writes `request` (may be empty) and reads the next response: status, content type and
    /// body.
    async fn exchange(&mut self, request: &[u8]) -> (StatusCode, String, String) {
        self.stream.write_all(request).await.expect("writing the request");
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill("a response").await;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while self.pending.len() < head_end + length {
            self.fill("the body").await;
        }
        let body = String::from_utf8_lossy(&self.pending[head_end..head_end + length]).to_string();
        self.pending.drain(..head_end + length);
        (status, header("content-type"), body)
    }
}

#[sqlx::test(migrations = false)]
async fn requests_hyper_refuses_before_routing_get_the_json_error_shape(pool: PgPool) {
    let f = fixture(pool).await;
    let addr = f.app.base_url.trim_start_matches("http://").to_owned();
    let ops_addr = f.app.ops_base_url.trim_start_matches("http://").to_owned();
    let long_path = format!("/v1/documents?before={}", "a".repeat(70 * 1024));
    let cases: Vec<(String, Vec<u8>, StatusCode, &str)> = vec![
        (
            "a URI over 64 KB".into(),
            format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
        ),
        (
            "500 KB of headers".into(),
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(500 * 1024)
            )
            .into_bytes(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
        (
            "a NUL in a header".into(),
            format!(
                "GET /v1/messages/{}/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: a\0b\r\n\r\n",
                f.message
            )
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "a request line that is not HTTP".into(),
            b"HELLO THERE\r\n\r\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "a space in the URI".into(),
            b"GET /v1/doc uments HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for listener in [&addr, &ops_addr] {
        for (what, request, status, code) in &cases {
            let (got, content_type, body) = Raw::connect(listener).await.exchange(request).await;
            let result = shape(got, &content_type, &body, *status);
            match result {
                Ok((got_code, _)) => assert_eq!(&got_code, code, "{what} on {listener}"),
                Err(e) => panic!("{what} on {listener}: {e}"),
            }
        }
    }

    // On a connection that already served a request (keep-alive), the refusal is JSON too.
    let mut raw = Raw::connect(&addr).await;
    let (status, _, body) = raw.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    let (status, content_type, body) = raw
        .exchange(format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    if let Err(e) = shape(status, &content_type, &body, StatusCode::URI_TOO_LONG) {
        panic!("a long URI after a request on the same connection: {e}");
    }

    // Pipelined: both requests in one write; the second is refused after the first is served.
    let mut raw = Raw::connect(&addr).await;
    let both = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, _, body) = raw.exchange(both.as_bytes()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    let (status, content_type, body) = raw.exchange(b"").await;
    if let Err(e) = shape(status, &content_type, &body, StatusCode::URI_TOO_LONG) {
        panic!("a long URI pipelined after a request: {e}");
    }

    // (reqwest cannot send such a URI: the `http` crate's `Uri` stops at 64 KB too.)
    // The server still serves.
    let (status, _) = f.app.get_json(&f.alice.key, "/v1/documents").await;
    assert_eq!(status, StatusCode::OK);
    f.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn uploads_keep_their_own_body_limit_above_the_json_one(pool: PgPool) {
    // The 2 MiB limit of JSON bodies is the router's default; the upload route's own (files
    // plus multipart overhead) still applies to it.
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let line = "The keeper trims the wick at dusk and logs the passing ships.\n";
    let text = line.repeat(3 * 1024 * 1024 / line.len() + 1);
    assert!(text.len() > ragpipe_api::body::MAX_JSON_BODY_BYTES);
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("log.txt", text.into_bytes())])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.shutdown().await;
}
