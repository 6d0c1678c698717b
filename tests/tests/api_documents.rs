//! The documents API as a client sees it: real HTTP against the real router, a fresh
//! PostgreSQL database per test (`#[sqlx::test]`; DATABASE_URL names the server).

use ragpipe_core::{Config, DocumentId};
use ragpipe_store::chunks::{self, ChunkSetInfo, NewChunk};
use ragpipe_store::documents;
use ragpipe_tests::app::{TestApp, UploadFile, error_code, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// A small plain-text document, distinct per `n` (identical bytes would be deduplicated).
fn text(n: usize) -> Vec<u8> {
    format!("Document number {n}.\n\nIt talks about invoices, shipping and the weather in spring.\n").into_bytes()
}

/// The first bytes of a PNG image.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00";

fn id_of(doc: &Value) -> String {
    doc["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {doc}"))
        .to_owned()
}

/// Asserts the one error shape and returns the body.
fn assert_error(status: StatusCode, body: &Value, expected_status: StatusCode, expected_code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(error_code(body), expected_code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the error has a message: {body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only `error` at the top: {body}"
    );
}

async fn ingest_jobs(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT convert_from(job, 'UTF8')::jsonb ->> 'document_id' FROM apalis.jobs \
         WHERE job_type = 'ragpipe.ingest' ORDER BY run_at",
    )
    .fetch_all(pool)
    .await
    .expect("reading ingest jobs")
}

#[sqlx::test(migrations = false)]
async fn an_upload_is_queued_listed_at_once_and_has_its_ingest_job(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;

    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![
                UploadFile::new("notes.txt", text(1)).metadata(json!({"team": "billing", "year": 2026})),
                UploadFile::new("readme.md", b"# Title\n\nSome *markdown* text.\n".to_vec()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let docs = body["documents"].as_array().expect("documents array");
    assert_eq!(docs.len(), 2, "{body}");
    assert!(
        docs.iter().all(|d| d["status"] == "queued" && d["created"] == true),
        "{body}"
    );
    assert_eq!(docs[0]["filename"], "notes.txt");
    assert_eq!(docs[0]["content_type"], "text/plain");
    assert_eq!(docs[0]["metadata"], json!({"team": "billing", "year": 2026}));
    assert_eq!(docs[0]["byte_size"], text(1).len());
    assert_eq!(docs[1]["content_type"], "text/markdown");
    assert_eq!(docs[1]["metadata"], json!({}));

    // Listed the moment the upload returns, and readable one by one.
    let (status, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let mut listed: Vec<String> = list["documents"].as_array().expect("array").iter().map(id_of).collect();
    let mut uploaded: Vec<String> = docs.iter().map(id_of).collect();
    listed.sort();
    uploaded.sort();
    assert_eq!(listed, uploaded);
    let (status, one) = app
        .get_json(&alice.key, &format!("/v1/documents/{}", id_of(&docs[0])))
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["status"], "queued");
    assert_eq!(one["progress"], 0.0);
    assert_eq!(one["chunk_count"], 0);
    assert_eq!(one["error"], Value::Null);

    // One ingest job per document, on the ingest queue, committed with the rows.
    let mut jobs = ingest_jobs(app.pool()).await;
    jobs.sort();
    assert_eq!(jobs, uploaded);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_duplicate_upload_returns_the_existing_document_and_queues_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let first = app.upload_one(&alice.key, "a.txt", text(1)).await;

    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("renamed.txt", text(1))])
        .await;
    assert_eq!(status, StatusCode::OK, "not all new: 200, not 201: {body}");
    assert_eq!(body["documents"][0]["id"], first["id"]);
    assert_eq!(body["documents"][0]["created"], false);
    assert_eq!(
        body["documents"][0]["filename"], "a.txt",
        "the existing document, as it was"
    );

    // A request mixing new and known files: 200, each entry saying which it is.
    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![
                UploadFile::new("b.txt", text(2)),
                UploadFile::new("a-again.txt", text(1)),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["documents"][0]["created"], true);
    assert_eq!(body["documents"][1]["created"], false);
    assert_eq!(body["documents"][1]["id"], first["id"]);

    assert_eq!(ingest_jobs(app.pool()).await.len(), 2, "one job per distinct document");
    let (_, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(list["documents"].as_array().map(Vec::len), Some(2));

    // Another user uploading the same bytes gets a document of their own.
    let bob = app.create_user("bob@example.com").await;
    let (status, body) = app.upload_json(&bob.key, vec![UploadFile::new("a.txt", text(1))]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["documents"][0]["id"], first["id"]);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_file_over_the_per_file_limit_is_413_and_nothing_is_stored(pool: PgPool) {
    let app = TestApp::builder(pool)
        .config(|c| {
            c.limits.max_file_bytes = 1000;
            c.limits.max_request_bytes = 100_000;
        })
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;

    let big = "All work and no play makes a dull document.\n".repeat(30).into_bytes();
    assert!(big.len() > 1000);
    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![UploadFile::new("small.txt", text(1)), UploadFile::new("big.txt", big)],
        )
        .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("big.txt") && message.contains("1000"), "{message}");

    // All or nothing: the small file of the same request was not stored either.
    let (_, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(list["documents"], json!([]));
    assert!(ingest_jobs(app.pool()).await.is_empty());

    // Exactly at the limit is fine.
    let exact = vec![b'a'; 1000];
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("exact.txt", exact)])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_request_over_the_per_request_limit_is_413(pool: PgPool) {
    let app = TestApp::builder(pool)
        .config(|c| {
            c.limits.max_file_bytes = 2000;
            c.limits.max_request_bytes = 3000;
        })
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;

    // Each file is within the per-file limit; together they are not.
    let files: Vec<UploadFile> = (0..3)
        .map(|n| UploadFile::new(&format!("{n}.txt"), format!("{n}").repeat(1500).into_bytes()))
        .collect();
    let (status, body) = app.upload_json(&alice.key, files).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().contains("3000"),
        "{body}"
    );
    let (_, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(list["documents"], json!([]));

    // A body far over the limit (the body limit itself) gets the same answer.
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("huge.txt", vec![b'x'; 6 << 20])])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        matches!(error_code(&body), "file_too_large" | "request_too_large"),
        "{body}"
    );
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn an_unsupported_format_is_415_naming_what_was_detected(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;

    // The file name and the client's content type are not trusted: the bytes decide.
    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![
                UploadFile::new("ok.txt", text(1)),
                UploadFile::new("report.pdf", PNG.to_vec()),
            ],
        )
        .await;
    assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("report.pdf") && message.contains("PNG image"),
        "{message}"
    );

    let random: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("blob.bin", random)])
        .await;
    assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("binary data"),
        "{body}"
    );

    // Nothing of either request was stored.
    let (_, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(list["documents"], json!([]));
    assert!(ingest_jobs(app.pool()).await.is_empty());

    // An empty file is refused as such.
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("empty.txt", Vec::new())])
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "empty_file");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn malformed_uploads_are_400_with_the_error_shape(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;

    // Not multipart at all.
    let response = app
        .request(reqwest::Method::POST, &alice.key, "/v1/documents")
        .json(&json!({"file": "x"}))
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    // Multipart without a file part.
    let form = reqwest::multipart::Form::new().text("metadata", "{}");
    let response = app
        .request(reqwest::Method::POST, &alice.key, "/v1/documents")
        .multipart(form)
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    // Metadata that is not a JSON object.
    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![UploadFile::new("a.txt", text(1)).metadata(json!([1, 2]))],
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_metadata");

    // An unknown part.
    let form = TestApp::upload_form(vec![UploadFile::new("a.txt", text(1))]).text("colour", "blue");
    let response = app
        .request(reqwest::Method::POST, &alice.key, "/v1/documents")
        .multipart(form)
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn missing_or_invalid_api_keys_are_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let doc = app.upload_one(&alice.key, "a.txt", text(1)).await;
    let doc_path = format!("/v1/documents/{}", id_of(&doc));

    for path in ["/v1/documents", doc_path.as_str(), &format!("{doc_path}/chunks")] {
        let response = app.client.get(app.url(path)).send().await.expect("GET");
        assert!(response.headers().contains_key("www-authenticate"));
        let (status, body) = json_of(response).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

        for bad in ["rp_not-a-real-key", "garbage", &alice.key[..alice.key.len() - 1]] {
            let (status, body) = app.get_json(bad, path).await;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let response = app
            .client
            .get(app.url(path))
            .header("authorization", format!("Basic {}", alice.key))
            .send()
            .await
            .expect("GET");
        let (status, body) = json_of(response).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // Uploads and deletes too; nothing happened.
    let response = app
        .client
        .post(app.url("/v1/documents"))
        .multipart(TestApp::upload_form(vec![UploadFile::new("b.txt", text(2))]))
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(response).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = app.delete("rp_wrong", &doc_path).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, _) = app.get_json(&alice.key, &doc_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ingest_jobs(app.pool()).await.len(), 1);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn another_users_document_is_404_never_403(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let mallory = app.create_user("mallory@example.com").await;
    let doc = app.upload_one(&alice.key, "secret.txt", text(1)).await;
    let path = format!("/v1/documents/{}", id_of(&doc));

    let (status, body) = app.get_json(&mallory.key, &path).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.get_json(&mallory.key, &format!("{path}/chunks")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.delete(&mallory.key, &path).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Exactly what an id that exists for nobody gets.
    let (status, nobody) = app
        .get_json(&mallory.key, &format!("/v1/documents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!((status, &nobody), (StatusCode::NOT_FOUND, &body));
    let (_, list) = app.get_json(&mallory.key, "/v1/documents").await;
    assert_eq!(list["documents"], json!([]));

    // Still there for its owner.
    let (status, body) = app.get_json(&alice.key, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // An id that is not a UUID is a 400, for anyone.
    let (status, body) = app.get_json(&alice.key, "/v1/documents/not-a-uuid").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app.delete(&alice.key, "/v1/documents/123/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "not_found");
    app.shutdown().await;
}

/// Gives a document a chunk set through the store, as the ingest worker would.
async fn give_chunks(app: &TestApp, user: ragpipe_core::UserId, id: &str, n: u32) {
    let config = Config::defaults();
    let chunks: Vec<NewChunk> = (0..n)
        .map(|i| NewChunk {
            index: i,
            content: format!("chunk number {i} about invoices"),
            token_count: 5,
            page_first: None,
            page_last: None,
            heading_path: vec!["Intro".to_owned()],
            byte_range: (i as usize * 10)..(i as usize * 10 + 10),
            embedding: vec![0.05; config.embedding.dim as usize],
        })
        .collect();
    let info = ChunkSetInfo {
        embedding_model: &config.embedding.model,
        max_tokens: 512,
        overlap_tokens: 64,
        tokenizer: "cl100k_base",
        extractor_version: "test",
        title: None,
        language: None,
        page_count: None,
        failed_pages: json!([]),
        warnings: json!([]),
        run: None,
    };
    let mut tx = app.store.user_tx(user).await.expect("tx");
    let id = DocumentId(id.parse().expect("uuid"));
    chunks::replace(&mut tx, id, &chunks, &info)
        .await
        .expect("replace chunks");
    tx.commit().await.expect("commit");
}

#[sqlx::test(migrations = false)]
async fn chunks_are_listed_in_pages_and_deleted_with_their_document(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let doc = app.upload_one(&alice.key, "a.txt", text(1)).await;
    let id = id_of(&doc);
    give_chunks(&app, alice.id, &id, 5).await;

    let (status, page) = app
        .get_json(&alice.key, &format!("/v1/documents/{id}/chunks?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 5);
    assert_eq!(page["document_id"], id.as_str());
    assert_eq!(page["next_offset"], 2);
    let indexes: Vec<i64> = page["chunks"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["chunk_index"].as_i64())
        .collect();
    assert_eq!(indexes, [0, 1]);
    assert_eq!(page["chunks"][0]["embedded"], true);
    assert_eq!(page["chunks"][0]["searchable"], true);
    assert_eq!(page["chunks"][0]["heading_path"], json!(["Intro"]));
    let (_, last) = app
        .get_json(&alice.key, &format!("/v1/documents/{id}/chunks?offset=4&limit=2"))
        .await;
    assert_eq!(last["chunks"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["next_offset"], Value::Null);
    let (status, body) = app
        .get_json(&alice.key, &format!("/v1/documents/{id}/chunks?limit=0"))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (_, doc) = app.get_json(&alice.key, &format!("/v1/documents/{id}")).await;
    assert_eq!(doc["status"], "ready");
    assert_eq!(doc["chunk_count"], 5);

    let (status, body) = app.delete(&alice.key, &format!("/v1/documents/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = app.get_json(&alice.key, &format!("/v1/documents/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = app.delete(&alice.key, &format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for table in ["documents", "document_blobs", "document_chunks"] {
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(app.pool())
            .await
            .expect("count");
        assert_eq!(left, 0, "{table} still has rows");
    }

    // The same bytes can be uploaded again afterwards, as a new document.
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("a.txt", text(1))])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["documents"][0]["id"], id.as_str());
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn documents_are_paginated_newest_first_and_filtered_by_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let mut uploaded = Vec::new();
    for n in 0..5 {
        uploaded.push(id_of(&app.upload_one(&alice.key, &format!("{n}.txt"), text(n)).await));
    }

    let mut seen = Vec::new();
    let mut path = "/v1/documents?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = app.get_json(&alice.key, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let docs = page["documents"].as_array().expect("array");
        assert!(docs.len() <= 2);
        seen.extend(docs.iter().map(id_of));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/documents?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // A full last page has no `next`.
    let (_, page) = app.get_json(&alice.key, "/v1/documents?limit=5").await;
    assert_eq!(page["documents"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["next"], Value::Null);

    // Status filter.
    let failed = DocumentId(uploaded[1].parse().expect("uuid"));
    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    documents::fail(&mut tx, failed, "the file is damaged")
        .await
        .expect("fail");
    tx.commit().await.expect("commit");
    let (_, page) = app.get_json(&alice.key, "/v1/documents?status=failed").await;
    let ids: Vec<String> = page["documents"].as_array().expect("array").iter().map(id_of).collect();
    assert_eq!(ids, [uploaded[1].clone()]);
    assert_eq!(page["documents"][0]["error"], "the file is damaged");
    let (_, page) = app.get_json(&alice.key, "/v1/documents?status=queued&limit=3").await;
    assert_eq!(page["documents"].as_array().map(Vec::len), Some(3));
    assert!(page["next"].is_string());
    let (_, page) = app.get_json(&alice.key, "/v1/documents?status=ready").await;
    assert_eq!(page["documents"], json!([]));

    for bad in [
        "status=done",
        "limit=0",
        "limit=201",
        "limit=x",
        "before=nope",
        "colour=blue",
    ] {
        let (status, body) = app.get_json(&alice.key, &format!("/v1/documents?{bad}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn metrics_show_queue_depth_and_documents_by_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    for n in 0..3 {
        app.upload_one(&alice.key, &format!("{n}.txt"), text(n)).await;
    }
    let bobs = app.upload_one(&bob.key, "b.txt", text(10)).await;
    let mut tx = app.store.user_tx(bob.id).await.expect("tx");
    documents::fail(&mut tx, DocumentId(id_of(&bobs).parse().expect("uuid")), "broken")
        .await
        .expect("fail");
    tx.commit().await.expect("commit");

    let scraped = app.metrics_text().await;
    let line = |prefix: &str| -> Option<f64> {
        scraped
            .lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.trim().parse().ok()))
    };
    assert_eq!(line("ragpipe_metrics_database_up "), Some(1.0), "{scraped}");
    assert_eq!(
        line("ragpipe_queue_depth{queue=\"ragpipe.ingest\"} "),
        Some(4.0),
        "{scraped}"
    );
    assert_eq!(
        line("ragpipe_queue_depth{queue=\"ragpipe.agent\"} "),
        Some(0.0),
        "{scraped}"
    );
    assert!(
        line("ragpipe_queue_oldest_job_age_seconds{queue=\"ragpipe.ingest\"} ").is_some_and(|s| s >= 0.0),
        "{scraped}"
    );
    // Across users: alice's three queued, bob's one failed.
    assert_eq!(line("ragpipe_documents{status=\"queued\"} "), Some(3.0), "{scraped}");
    assert_eq!(line("ragpipe_documents{status=\"failed\"} "), Some(1.0), "{scraped}");
    assert_eq!(line("ragpipe_documents{status=\"ready\"} "), Some(0.0), "{scraped}");
    assert!(scraped.contains("# TYPE ragpipe_documents gauge"), "{scraped}");
    // Facade metrics recorded by the API itself.
    assert!(scraped.contains("ragpipe_http_requests_total{"), "{scraped}");
    assert!(
        scraped.contains("ragpipe_uploads_total{outcome=\"created\"}"),
        "{scraped}"
    );

    // The counts stay service-wide aggregates: no user transaction can read other users'
    // documents, even though the counting function sees them all.
    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(tx.conn())
        .await
        .expect("count");
    assert_eq!(visible, 3);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn health_readiness_and_unknown_routes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (status, body) = json_of(app.client.get(app.url("/healthz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    let (status, spec) = json_of(app.client.get(app.url("/openapi.json")).send().await.expect("GET")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["paths"]["/v1/documents"]["post"].is_object(), "{spec}");

    let (status, body) = json_of(app.client.get(app.url("/v1/nothing")).send().await.expect("GET")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = json_of(app.client.put(app.url("/v1/documents")).send().await.expect("PUT")).await;
    assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    app.shutdown().await;
}
