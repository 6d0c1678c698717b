//! `POST /v1/documents/{id}/reprocess` over real HTTP: the document stays ready and searchable
//! while its new chunk set is made, then has it; one in flight at a time; another user's is a
//! 404; bad settings are 422; the owner's run counts against their token budget.

use ragpipe_store::quotas::{self, Limit, Quota, UserBudget};
use ragpipe_tests::app::{TestApp, error_code, json_of};
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

fn notes() -> String {
    let mut text = String::from("# Lighthouse keeping\n\n");
    for i in 0..40 {
        text.push_str(&format!(
            "Entry {i}: the keeper trimmed the wick, polished the lens and logged the passing ships before dawn.\n\n"
        ));
    }
    text
}

async fn reprocess(app: &TestApp, key: &str, id: &str, body: Value) -> (reqwest::StatusCode, Value) {
    let response = app
        .request(reqwest::Method::POST, key, &format!("/v1/documents/{id}/reprocess"))
        .json(&body)
        .send()
        .await
        .expect("reprocess");
    json_of(response).await
}

async fn wait_until_reprocessed(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, doc) = app.get_json(key, &format!("/v1/documents/{id}")).await;
        if doc["reprocess"].is_null() {
            return doc;
        }
        assert!(doc["reprocess"]["error"].is_null(), "the reprocessing failed: {doc}");
        assert!(tokio::time::Instant::now() < deadline, "never reprocessed: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_document_is_rechunked_in_the_background_and_stays_searchable(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let endpoint = server.embedding_endpoint();
    let app = TestApp::builder(pool)
        .config(|c| c.embedding = endpoint)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    let doc = app.upload_one(&alice.key, "lighthouse.md", notes()).await;
    let id = doc["id"].as_str().expect("id").to_owned();
    let ready = app.wait_for_document(&alice.key, &id, Duration::from_secs(60)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let first_chunks = ready["chunk_count"].as_i64().expect("chunks");

    // The next embedding call takes 2 s: the reprocessing is in flight meanwhile.
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(2)), 1);
    let (status, accepted) = reprocess(
        &app,
        &alice.key,
        &id,
        json!({"chunk_max_tokens": 64, "chunk_overlap_tokens": 8}),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{accepted}");
    assert_eq!(accepted["status"], "ready", "the document stays ready: {accepted}");
    assert_eq!(accepted["reprocess"]["stage"], "chunk", "{accepted}");
    assert_eq!(accepted["reprocess"]["chunk_max_tokens"], 64);

    let (status, body) = reprocess(&app, &alice.key, &id, json!({})).await;
    assert_eq!(status.as_u16(), 409, "one reprocessing at a time: {body}");
    // Still searchable, with its old chunks, while the new set is being made.
    let response = app
        .request(reqwest::Method::POST, &alice.key, "/v1/search")
        .json(&json!({"query": "keeper polished the lens", "mode": "text", "document_ids": [id]}))
        .send()
        .await
        .expect("search");
    let (status, found) = json_of(response).await;
    assert_eq!(status.as_u16(), 200, "{found}");
    assert!(!found["hits"].as_array().expect("hits").is_empty(), "{found}");

    let done = wait_until_reprocessed(&app, &alice.key, &id).await;
    assert_eq!(done["status"], "ready");
    assert_eq!(done["chunk_max_tokens"], 64, "{done}");
    assert!(done["chunk_count"].as_i64().expect("chunks") > first_chunks, "{done}");
    let (_, chunks) = app
        .get_json(&alice.key, &format!("/v1/documents/{id}/chunks?limit=1000"))
        .await;
    let chunks = chunks["chunks"].as_array().expect("chunks").clone();
    assert_eq!(chunks.len() as i64, done["chunk_count"].as_i64().expect("count"));
    assert!(
        chunks
            .iter()
            .all(|c| c["token_count"].as_i64().is_some_and(|t| t <= 64))
    );

    // The owner asked, so the owner is charged: the event's origin is theirs.
    let origins: Vec<String> = sqlx::query_scalar("SELECT origin FROM usage_events ORDER BY created_at")
        .fetch_all(app.pool())
        .await
        .expect("usage");
    assert_eq!(origins, ["user", "user"]);

    // Bob cannot see it, so cannot reprocess it.
    let (status, body) = reprocess(&app, &bob.key, &id, json!({})).await;
    assert_eq!(status.as_u16(), 404, "{body}");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn bad_settings_are_422_and_an_exhausted_budget_is_429(pool: PgPool) {
    let app = TestApp::builder(pool)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    let doc = app.upload_one(&alice.key, "lighthouse.md", notes()).await;
    let id = doc["id"].as_str().expect("id").to_owned();
    app.wait_for_document(&alice.key, &id, Duration::from_secs(60)).await;

    for body in [
        json!({"chunk_max_tokens": 64, "chunk_overlap_tokens": 64}),
        json!({"chunk_max_tokens": 0}),
        json!({"embedding_model": "no-such-model"}),
    ] {
        let (status, error) = reprocess(&app, &alice.key, &id, body.clone()).await;
        assert_eq!(status.as_u16(), 422, "{body}: {error}");
        assert_eq!(error_code(&error), "invalid_setting");
    }
    let (status, error) = reprocess(&app, &alice.key, &id, json!({"chunk_size": 64})).await;
    assert_eq!(status.as_u16(), 400, "unknown fields are refused: {error}");
    let (status, error) = reprocess(&app, &alice.key, &id, json!({"stage": "polish"})).await;
    assert_eq!(status.as_u16(), 400, "{error}");

    quotas::set_user_budget(
        &app.store,
        alice.id,
        Quota::MonthlyTokens,
        UserBudget::Own(Limit::At(1)),
    )
    .await
    .expect("budget");
    let (status, error) = reprocess(&app, &alice.key, &id, json!({"stage": "embed"})).await;
    assert_eq!(status.as_u16(), 429, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget of 1")),
        "{error}"
    );
    let (_, doc) = app.get_json(&alice.key, &format!("/v1/documents/{id}")).await;
    assert!(
        doc["reprocess"].is_null(),
        "a refused request leaves nothing pending: {doc}"
    );
    app.shutdown().await;
}
