//! `POST /v1/search` over real HTTP: finds the caller's chunks, never another user's.

use ragpipe_tests::app::TestApp;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test(migrations = false)]
async fn search_over_http_finds_the_callers_chunks_only(pool: PgPool) {
    let app = TestApp::builder(pool)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let a = app.create_user("a@example.com").await;
    let b = app.create_user("b@example.com").await;
    let doc = app
        .upload_one(
            &a.key,
            "zeppelins.md",
            "# Airships\n\nThe Hindenburg zeppelin was filled with hydrogen and crossed the Atlantic in 1936.\n",
        )
        .await;
    let id = doc["id"].as_str().expect("id").to_owned();
    let ready = app.wait_for_document(&a.key, &id, Duration::from_secs(60)).await;
    assert_eq!(ready["status"], "ready", "{ready}");

    for mode in ["hybrid", "vector", "text"] {
        let response = app
            .request(reqwest::Method::POST, &a.key, "/v1/search")
            .json(&json!({"query": "which gas filled the zeppelin", "mode": mode, "k": 3}))
            .send()
            .await
            .expect("search");
        let (status, body) = ragpipe_tests::app::json_of(response).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        let hits = body.as_array().or_else(|| body["hits"].as_array()).expect("hits");
        assert_eq!(
            hits.first().map(|h| h["filename"].clone()),
            Some(json!("zeppelins.md")),
            "{mode}: {body}"
        );
    }

    let response = app
        .request(reqwest::Method::POST, &b.key, "/v1/search")
        .json(&json!({"query": "zeppelin hydrogen"}))
        .send()
        .await
        .expect("search");
    let (status, body) = ragpipe_tests::app::json_of(response).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let hits = body.as_array().or_else(|| body["hits"].as_array()).expect("hits");
    assert!(hits.is_empty(), "user B found A's chunks: {body}");

    let anonymous = app
        .client
        .post(app.url("/v1/search"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .expect("search");
    assert_eq!(anonymous.status().as_u16(), 401);
    app.shutdown().await;
}
