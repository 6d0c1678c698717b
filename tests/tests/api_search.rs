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

/// The same text uploaded twice (as plain text and as a second version in Markdown) is one
/// result, the other listed in its `also_in`, and `k` results are `k` different passages.
#[sqlx::test(migrations = false)]
async fn duplicate_passages_are_one_result_with_also_in(pool: PgPool) {
    let app = TestApp::builder(pool)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let a = app.create_user("a@example.com").await;
    let policy = "Expense reports are due within thirty days of the trip. Receipts above twenty \
                  euros must be attached to the report, and the hotel limit is one hundred and \
                  eighty euros per night in Berlin.";
    let files = [
        ("expenses.txt", format!("{policy}\n")),
        // A second version: same words, other case and spacing.
        (
            "expenses-v2.md",
            format!("{}\n", policy.replace("Berlin", "BERLIN").replace(". ", ".  ")),
        ),
        (
            "travel.md",
            "Book trains rather than flights for trips under four hours; the hotel in Berlin is \
             booked through the travel desk, and expense reports go to finance."
                .to_owned(),
        ),
        (
            "laptops.md",
            "Laptops are replaced every three years; report a lost laptop to the help desk within a day.".to_owned(),
        ),
    ];
    let mut ids = Vec::new();
    for (name, text) in &files {
        let doc = app.upload_one(&a.key, name, text.clone().into_bytes()).await;
        let id = doc["id"].as_str().expect("id").to_owned();
        let ready = app.wait_for_document(&a.key, &id, Duration::from_secs(60)).await;
        assert_eq!(ready["status"], "ready", "{ready}");
        ids.push(id);
    }

    for mode in ["hybrid", "text"] {
        let response = app
            .request(reqwest::Method::POST, &a.key, "/v1/search")
            .json(&json!({"query": "expense reports hotel limit Berlin", "mode": mode, "k": 3}))
            .send()
            .await
            .expect("search");
        let (status, body) = ragpipe_tests::app::json_of(response).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        let hits = body["hits"].as_array().expect("hits");
        assert_eq!(hits.len(), 3, "{mode}: {body}");
        let contents: std::collections::HashSet<String> = hits
            .iter()
            .map(|h| {
                h["content"]
                    .as_str()
                    .expect("content")
                    .to_lowercase()
                    .split_whitespace()
                    .collect()
            })
            .collect();
        assert_eq!(contents.len(), 3, "{mode}: three results, three passages: {body}");
        let top = &hits[0];
        let versions = ["expenses.txt", "expenses-v2.md"];
        let top_name = top["filename"].as_str().expect("filename");
        assert!(versions.contains(&top_name), "{mode}: {body}");
        let also = top["also_in"].as_array().expect("also_in");
        assert_eq!(also.len(), 1, "{mode}: {body}");
        let other = versions.iter().find(|v| **v != top_name).expect("the other version");
        assert_eq!(also[0]["filename"], json!(other), "{mode}: {body}");
        let other_id = &ids[versions.iter().position(|v| v == other).expect("index")];
        assert_eq!(also[0]["document_id"], json!(other_id), "{mode}: {body}");
        assert!(also[0]["chunk_id"].is_i64(), "{body}");
        for hit in &hits[1..] {
            assert!(
                !versions.contains(&hit["filename"].as_str().expect("filename")),
                "{mode}: {body}"
            );
            assert_eq!(hit["also_in"], json!([]), "{body}");
        }
    }
    app.shutdown().await;
}

/// With a reranker configured, `POST /v1/search` says what the rerank stage did: applied, or,
/// when the reranker fails, the fused order and why. Without one, the field is absent.
#[sqlx::test(migrations = false)]
async fn search_over_http_reports_the_rerank_stage(pool: PgPool) {
    let server = ragpipe_tests::openai_server::OpenAiServer::start().await;
    let rerank = server.rerank_endpoint();
    let app = TestApp::builder(pool)
        .config(move |c| c.rerank = rerank)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let a = app.create_user("a@example.com").await;
    for (name, text) in [
        (
            "zeppelins.md",
            "# Airships\n\nThe Hindenburg zeppelin was filled with hydrogen.\n",
        ),
        (
            "balloons.md",
            "# Balloons\n\nHot air balloons rise because warm air is lighter.\n",
        ),
    ] {
        let doc = app.upload_one(&a.key, name, text).await;
        let id = doc["id"].as_str().expect("id").to_owned();
        let ready = app.wait_for_document(&a.key, &id, Duration::from_secs(60)).await;
        assert_eq!(ready["status"], "ready", "{ready}");
    }
    let search = || async {
        let response = app
            .request(reqwest::Method::POST, &a.key, "/v1/search")
            .json(&json!({"query": "which gas filled the zeppelin", "k": 2}))
            .send()
            .await
            .expect("search");
        ragpipe_tests::app::json_of(response).await
    };
    let (status, body) = search().await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["rerank"]["applied"], true, "{body}");
    assert_eq!(body["hits"][0]["filename"], "zeppelins.md", "{body}");

    server.inject(
        ragpipe_tests::openai_server::Route::Rerank,
        ragpipe_tests::openai_server::Fault::server_error(),
        10,
    );
    let (status, body) = search().await;
    assert_eq!(status.as_u16(), 200, "the search answers without its reranker: {body}");
    assert_eq!(body["rerank"]["applied"], false, "{body}");
    assert!(body["rerank"]["reason"].is_string(), "{body}");
    assert_eq!(body["hits"].as_array().map(Vec::len), Some(2), "{body}");
}
