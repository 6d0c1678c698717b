//! Usage that matches the bill: the ledger (`usage_events`) against the tokens the model server
//! counted (its request log), when model responses are cut, when a job fails after some
//! successful calls, and when the cache serves texts; and the embedding cache per user, so that
//! what a user sees and is charged does not depend on what another user embedded.

mod agent_support;

use agent_support::{BATCHING_DOC, QUESTION, RETRIES_DOC, System};
use ragpipe_core::Config;
use ragpipe_tests::app::{TestApp, TestUser};
use ragpipe_tests::openai_server::{Fault, Framing, OpenAiServer, Route, ScriptedReply};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::time::Duration;

/// The API with in-process ingest and agent workers, both models served by `server`.
async fn system(pool: PgPool, server: &OpenAiServer, edit: impl FnOnce(&mut Config)) -> TestApp {
    let (embedding, chat) = (server.embedding_endpoint(), server.chat_endpoint());
    TestApp::builder(pool)
        .config(move |c| {
            c.embedding = embedding;
            c.embedding.max_retries = 2;
            c.chat = chat;
            c.worker.max_attempts = 3;
            edit(c);
        })
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .with_task("agent worker", ragpipe_agent_worker::spawn)
        .start()
        .await
}

async fn wide_pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    agent_support::pool(options, connect).await
}

/// Paragraphs with distinct words, so that chunks differ from each other.
fn document(seed: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|i| {
            format!(
                "Section {i} of the {seed} report. The {seed} pipeline stage {i} moves records number {} \
                 through queue {} and writes batch {} to shelf {}; it is retried on failure {i}.\n\n",
                i * 7,
                i * 11,
                i * 13,
                i * 17
            )
        })
        .collect()
}

/// The ledger's embedding tokens: (prompt tokens, cached tokens, requests).
async fn embedding_ledger(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(cached_tokens), 0)::bigint, \
                coalesce(sum(requests), 0)::bigint \
         FROM usage_events WHERE kind = 'embedding'",
    )
    .fetch_one(pool)
    .await
    .expect("reading the ledger")
}

/// The ledger's chat tokens: (prompt tokens, completion tokens).
async fn chat_ledger(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(completion_tokens), 0)::bigint \
         FROM usage_events WHERE kind = 'chat'",
    )
    .fetch_one(pool)
    .await
    .expect("reading the ledger")
}

async fn upload_and_wait(app: &TestApp, user: &TestUser, name: &str, text: &str) -> Value {
    let doc = app.upload_one(&user.key, name, text.as_bytes().to_vec()).await;
    let id = doc["id"].as_str().expect("document id").to_owned();
    app.wait_for_document(&user.key, &id, Duration::from_secs(90)).await
}

#[sqlx::test(migrations = false)]
async fn embedding_responses_cut_with_or_without_a_length_are_retried_and_the_document_is_ready(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let server = OpenAiServer::start().await;
    let app = system(wide_pool(options, connect).await, &server, |_| {}).await;
    let user = app.create_user("cuts@example.com").await;
    for (i, framing) in [Framing::ContentLength, Framing::Chunked, Framing::UntilClose]
        .into_iter()
        .enumerate()
    {
        server.inject(Route::Embeddings, Fault::Truncated { framing }, 1);
        let doc = upload_and_wait(&app, &user, &format!("cut-{i}.txt"), &document(&format!("cut{i}"), 6)).await;
        assert_eq!(doc["status"], "ready", "{framing:?}: {doc}");
    }
    let cut = server
        .requests_to(Route::Embeddings)
        .iter()
        .filter(|r| matches!(r.fault, Some(Fault::Truncated { .. })))
        .count();
    assert_eq!(cut, 3, "each cut was served");
    // The cut responses were not counted by the server, and are not in the ledger.
    let (prompt, cached, _) = embedding_ledger(app.pool()).await;
    assert_eq!(prompt as u64, server.billed(Route::Embeddings).prompt_tokens);
    assert_eq!(cached, 0);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn chat_streams_cut_with_or_without_a_length_are_retried_and_the_answer_completes(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let server = OpenAiServer::start().await;
    let app = system(wide_pool(options, connect).await, &server, |_| {}).await;
    let alice = app.create_user("alice@example.com").await;
    for (name, text) in [("batching.txt", BATCHING_DOC), ("retries.txt", RETRIES_DOC)] {
        assert_eq!(upload_and_wait(&app, &alice, name, text).await["status"], "ready");
    }
    let system = System {
        app,
        model: Some(server),
        alice,
    };
    let conversation = system.conversation(&system.alice).await;
    for framing in [Framing::ContentLength, Framing::Chunked, Framing::UntilClose] {
        let reply = ScriptedReply::text("Batches hold at most sixty-four inputs [1].");
        system.model().push_reply(reply.clone());
        system.model().push_reply(reply.clone());
        system
            .model()
            .inject(Route::ChatCompletions, Fault::Truncated { framing }, 1);
        let asked = system.ask(&system.alice, &conversation, QUESTION).await;
        let id = asked["assistant_message"]["id"]
            .as_str()
            .expect("assistant message id")
            .to_owned();
        let message = system.wait_finished(&system.alice, &id).await;
        assert_eq!(message["status"], "complete", "{framing:?}: {message}");
        assert_eq!(message["content"], reply.full_text().as_str(), "{framing:?}");
    }
    let billed = system.model().billed(Route::ChatCompletions);
    assert_eq!(
        chat_ledger(system.app.pool()).await,
        (billed.prompt_tokens as i64, billed.completion_tokens as i64),
        "the ledger's chat tokens are the server's"
    );
    let (prompt, _, _) = embedding_ledger(system.app.pool()).await;
    assert_eq!(
        prompt as u64,
        system.model().billed(Route::Embeddings).prompt_tokens,
        "chunks and the questions' query embeddings are all in the ledger"
    );
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_job_failing_after_successful_embedding_calls_records_them(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let server = OpenAiServer::start().await;
    // Two inputs per request, one request at a time: the document takes several calls.
    let app = system(wide_pool(options, connect).await, &server, |c| {
        c.embedding.batch_size = 2;
        c.embedding.concurrency = 1;
        c.chunking.max_tokens = 64;
        c.chunking.overlap_tokens = 0;
    })
    .await;
    let user = app.create_user("partial@example.com").await;
    server.inject(Route::Embeddings, Fault::Pass, 2);
    server.inject(
        Route::Embeddings,
        Fault::Status {
            status: 400,
            body: r#"{"error":{"message":"input refused","type":"invalid_request_error","code":null}}"#.into(),
        },
        1,
    );
    let doc = upload_and_wait(&app, &user, "partial.txt", &document("partial", 12)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let billed = server.billed(Route::Embeddings);
    assert!(billed.prompt_tokens > 0, "two calls succeeded before the refusal");
    assert_eq!(
        server.requests_to(Route::Embeddings).len(),
        3,
        "no call after the refusal"
    );
    let (prompt, cached, requests) = embedding_ledger(app.pool()).await;
    assert_eq!(
        prompt as u64, billed.prompt_tokens,
        "the successful calls are in the ledger"
    );
    assert_eq!((cached, requests), (0, 2));
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn cached_tokens_are_only_the_texts_served_from_the_cache(options: PgPoolOptions, connect: PgConnectOptions) {
    let server = OpenAiServer::start().await;
    let app = system(wide_pool(options, connect).await, &server, |c| {
        c.chunking.max_tokens = 64;
        c.chunking.overlap_tokens = 0;
    })
    .await;
    let user = app.create_user("cache@example.com").await;
    let first = document("shared", 8);
    assert_eq!(
        upload_and_wait(&app, &user, "first.txt", &first).await["status"],
        "ready"
    );
    let (prompt, cached, _) = embedding_ledger(app.pool()).await;
    assert_eq!(cached, 0, "nothing was cached before");
    assert_eq!(prompt as u64, server.billed(Route::Embeddings).prompt_tokens);

    // The same text with more after it, twice: the chunks both documents have come from the
    // cache; a text repeated within the document is sent once and is not a cache saving.
    let fresh = document("fresh", 4);
    let second = format!("{first}{fresh}{fresh}");
    let doc = upload_and_wait(&app, &user, "second.txt", &second).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    let second_id: uuid::Uuid = doc["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
    let (shared_tokens, repeated): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(token_count), 0)::bigint, count(*) FROM \
           (SELECT DISTINCT c.content, c.token_count FROM document_chunks c WHERE c.document_id = $1 \
            AND c.content IN (SELECT content FROM document_chunks WHERE document_id <> $1)) AS shared",
    )
    .bind(second_id)
    .fetch_one(app.pool())
    .await
    .expect("shared chunks");
    assert!(repeated > 0, "the documents share chunks");
    let (chunks_in_second, distinct_in_second): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT content) FROM document_chunks WHERE document_id = $1")
            .bind(second_id)
            .fetch_one(app.pool())
            .await
            .expect("second's chunks");
    assert!(
        chunks_in_second > distinct_in_second,
        "the second document repeats a chunk"
    );
    let (prompt, cached, _) = embedding_ledger(app.pool()).await;
    assert_eq!(
        cached, shared_tokens,
        "cached: exactly the chunks the first upload embedded"
    );
    assert_eq!(prompt as u64, server.billed(Route::Embeddings).prompt_tokens);
    let sent: usize = server
        .requests_to(Route::Embeddings)
        .iter()
        .map(|r| r.body["input"].as_array().map_or(0, Vec::len))
        .sum();
    let (chunks,): (i64,) = sqlx::query_as("SELECT count(DISTINCT content) FROM document_chunks")
        .fetch_one(app.pool())
        .await
        .expect("chunks");
    assert_eq!(sent as i64, chunks, "each distinct text went to the model once");
    app.shutdown().await;
}

/// A fresh, empty database beside the test's own (dropped by [`drop_database`]).
async fn fresh_database(connect: &PgConnectOptions, name: &str) -> PgPool {
    let admin = connect
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("admin connection");
    let mut admin = admin;
    // `name` is made by the test from a uuid.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    PgPoolOptions::new()
        .max_connections(20)
        .connect_with(connect.clone().database(name))
        .await
        .expect("connect to the fresh database")
}

async fn drop_database(connect: &PgConnectOptions, name: &str) {
    if let Ok(mut admin) = connect.clone().database("postgres").connect().await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// What B sees after uploading `text` (and searching it), with A uploading the same text first
/// or not at all: B's `/v1/usage` (without its period bounds), B's usage events and B's search
/// hits; and whether B's transaction can see any of A's cache entries.
async fn b_view(
    pool: PgPool,
    a_first: bool,
    text: &str,
) -> (
    Value,
    Vec<(String, i64, i64, i64, String)>,
    Vec<String>,
    Result<i64, String>,
) {
    let server = OpenAiServer::start().await;
    let app = system(pool, &server, |_| {}).await;
    let a = app.create_user("a@example.com").await;
    let b = app.create_user("b@example.com").await;
    if a_first {
        assert_eq!(upload_and_wait(&app, &a, "a.txt", text).await["status"], "ready");
    }
    assert_eq!(upload_and_wait(&app, &b, "b.txt", text).await["status"], "ready");
    let (status, mut usage) = app.get_json(&b.key, "/v1/usage?group_by=kind").await;
    assert_eq!(status.as_u16(), 200, "{usage}");
    for bound in ["from", "to"] {
        usage.as_object_mut().map(|o| o.remove(bound));
    }
    let events: Vec<(String, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT kind, prompt_tokens, cached_tokens, requests::bigint, origin FROM usage_events \
         WHERE user_id = $1 ORDER BY kind, prompt_tokens, cached_tokens",
    )
    .bind(b.id.0)
    .fetch_all(app.pool())
    .await
    .expect("B's events");
    let response = app
        .request(reqwest::Method::POST, &b.key, "/v1/search")
        .json(&serde_json::json!({"query": "pipeline stage queue shelf", "k": 5}))
        .send()
        .await
        .expect("search");
    let (status, hits) = ragpipe_tests::app::json_of(response).await;
    assert_eq!(status.as_u16(), 200, "{hits}");
    let hits: Vec<String> = hits
        .as_array()
        .or_else(|| hits["hits"].as_array())
        .expect("hits")
        .iter()
        .map(|h| h["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    let store = ragpipe_store::Store::from_pool(app.pool().clone());
    let mut tx = store.user_tx(b.id).await.expect("B's transaction");
    // Checked by the caller after the comparisons (an error: the cache has no owner column).
    let foreign: Result<i64, String> =
        sqlx::query_scalar("SELECT count(*) FROM embedding_cache WHERE user_id IS DISTINCT FROM $1")
            .bind(b.id.0)
            .fetch_one(tx.conn())
            .await
            .map_err(|e| e.to_string());
    drop(tx);
    if a_first && foreign.is_ok() {
        let (a_entries,): (i64,) = sqlx::query_as("SELECT count(*) FROM embedding_cache WHERE user_id = $1")
            .bind(a.id.0)
            .fetch_one(app.pool())
            .await
            .expect("A's entries");
        assert!(a_entries > 0, "A has cache entries");
    }
    app.shutdown().await;
    (usage, events, hits, foreign)
}

#[sqlx::test(migrations = false)]
async fn what_b_sees_and_pays_does_not_depend_on_what_a_embedded(options: PgPoolOptions, connect: PgConnectOptions) {
    let text = document("tenant", 6);
    let alone_db = format!("ragpipe_ledger_alone_{}", uuid::Uuid::new_v4().simple());
    let alone = b_view(fresh_database(&connect, &alone_db).await, false, &text).await;
    drop_database(&connect, &alone_db).await;
    let after_a = b_view(wide_pool(options, connect).await, true, &text).await;
    assert_eq!(after_a.0, alone.0, "B's /v1/usage");
    assert_eq!(after_a.1, alone.1, "B's usage events");
    assert!(
        alone.1.iter().all(|e| e.2 == 0),
        "B was served nothing from a cache: {:?}",
        alone.1
    );
    assert_eq!(after_a.2, alone.2, "B's search hits");
    assert!(!after_a.2.is_empty());
    assert_eq!(after_a.3, Ok(0), "A's cache entries are invisible to B");
}

#[sqlx::test(migrations = false)]
async fn an_answer_retried_by_the_queue_records_the_query_embedding_of_every_attempt(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let server = OpenAiServer::start().await;
    let app = system(wide_pool(options, connect).await, &server, |c| c.chat.max_retries = 0).await;
    let alice = app.create_user("alice@example.com").await;
    for (name, text) in [("batching.txt", BATCHING_DOC), ("retries.txt", RETRIES_DOC)] {
        assert_eq!(upload_and_wait(&app, &alice, name, text).await["status"], "ready");
    }
    let embedded_for_documents = server.requests_to(Route::Embeddings).len();
    let system = System {
        app,
        model: Some(server),
        alice,
    };
    // The first attempt embeds the question, then the chat model fails: the queue retries the
    // job, which embeds the question again (a second call, billed again) and answers.
    system.model().inject(Route::ChatCompletions, Fault::server_error(), 1);
    let conversation = system.conversation(&system.alice).await;
    let asked = system.ask(&system.alice, &conversation, QUESTION).await;
    let id = asked["assistant_message"]["id"]
        .as_str()
        .expect("assistant message id")
        .to_owned();
    let message = system.wait_finished(&system.alice, &id).await;
    assert_eq!(message["status"], "complete", "{message}");
    let query_calls = system.model().requests_to(Route::Embeddings).len() - embedded_for_documents;
    assert_eq!(query_calls, 2, "one query embedding per attempt");

    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM usage_events WHERE kind = 'embedding' AND idempotency_key LIKE 'agent:%:query:%'",
    )
    .fetch_one(system.app.pool())
    .await
    .expect("query events");
    assert_eq!(events, 2, "both attempts' query embeddings are in the ledger");
    let (prompt, cached, _) = embedding_ledger(system.app.pool()).await;
    assert_eq!(prompt as u64, system.model().billed(Route::Embeddings).prompt_tokens);
    assert_eq!(cached, 0);
    let billed = system.model().billed(Route::ChatCompletions);
    assert_eq!(
        chat_ledger(system.app.pool()).await,
        (billed.prompt_tokens as i64, billed.completion_tokens as i64)
    );
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn upgrading_rebuilds_each_users_cache_from_their_chunks_and_drops_the_shared_rows(pool: PgPool) {
    // The schema before the per-user cache: a shared cache, and chunks of two users, both of
    // whom have the text "alpha".
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("queue schema");
    ragpipe_store::migrate::MIGRATOR
        .run_to(20261202000015, &pool)
        .await
        .expect("the older schema");
    sqlx::query("INSERT INTO embedding_models (model, dim, index_name) VALUES ('m', 3, 'document_chunks_m_idx')")
        .execute(&pool)
        .await
        .expect("model");
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let chunks = [
        (a, "alpha", "[1,0,0]"),
        (a, "beta", "[0,1,0]"),
        (a, "beta", "[0,1,0]"),
        (b, "alpha", "[1,0,0]"),
        (b, "gamma", "[0,0,1]"),
    ];
    for (user, email) in [(a, "a@example.com"), (b, "b@example.com")] {
        let doc = uuid::Uuid::now_v7();
        let (texts, vectors): (Vec<&str>, Vec<&str>) =
            chunks.iter().filter(|c| c.0 == user).map(|c| (c.1, c.2)).unzip();
        sqlx::query(
            "WITH u AS (INSERT INTO users (id, email) VALUES ($1, $3) RETURNING id),
                  d AS (INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256)
                        SELECT $2, id, 'old.txt', 'text/plain', 1, sha256($3::bytea) FROM u RETURNING id, user_id)
             INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start,
                                          byte_end, embedding, embedding_model)
             SELECT d.id, d.user_id, c.i - 1, c.content, 1, 0, length(c.content), c.vector::vector, 'm'
             FROM d, UNNEST($4::text[], $5::text[]) WITH ORDINALITY AS c(content, vector, i)",
        )
        .bind(user)
        .bind(doc)
        .bind(email)
        .bind(&texts)
        .bind(&vectors)
        .execute(&pool)
        .await
        .expect("chunks on the older schema");
    }
    sqlx::query(
        "INSERT INTO embedding_cache (model, dim, text_sha256, embedding)
         SELECT 'm', 3, sha256(convert_to(t, 'UTF8')), '[1,1,1]'::vector
         FROM UNNEST(ARRAY['alpha', 'beta', 'gamma', 'nobody holds this']) AS t",
    )
    .execute(&pool)
    .await
    .expect("shared cache rows");

    ragpipe_store::migrate::MIGRATOR.run(&pool).await.expect("upgrade");

    let rows: Vec<(uuid::Uuid, String, i32, String, Option<String>)> = sqlx::query_as(
        "SELECT e.user_id, t.text, e.dim, e.embedding::text, e.usage_key
         FROM embedding_cache e
         JOIN UNNEST(ARRAY['alpha', 'beta', 'gamma', 'nobody holds this']) AS t(text)
           ON sha256(convert_to(t.text, 'UTF8')) = e.text_sha256
         ORDER BY e.user_id, t.text",
    )
    .fetch_all(&pool)
    .await
    .expect("cache rows");
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let expected_for = |user: uuid::Uuid| -> Vec<(uuid::Uuid, String, i32, String, Option<String>)> {
        let mut rows: Vec<_> = chunks
            .iter()
            .filter(|c| c.0 == user)
            .map(|c| (user, c.1.to_owned(), 3, c.2.to_owned(), None))
            .collect();
        rows.dedup();
        rows
    };
    let expected: Vec<_> = expected_for(first).into_iter().chain(expected_for(second)).collect();
    assert_eq!(rows, expected, "one entry per user and text, with the chunk's vector");
    let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM embedding_cache")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 4, "the shared rows are gone");

    // And each user's transaction sees only their own entries.
    let store = ragpipe_store::Store::from_pool(pool.clone());
    for (user, own) in [(a, 2i64), (b, 2)] {
        let mut tx = store.user_tx(ragpipe_core::UserId(user)).await.expect("tx");
        let (seen,): (i64,) = sqlx::query_as("SELECT count(*) FROM embedding_cache")
            .fetch_one(tx.conn())
            .await
            .expect("the user's cache");
        assert_eq!(seen, own);
    }
}

#[sqlx::test(migrations = false)]
async fn a_search_records_its_query_embedding_as_the_users_usage(options: PgPoolOptions, connect: PgConnectOptions) {
    let server = OpenAiServer::start().await;
    let app = system(wide_pool(options, connect).await, &server, |_| {}).await;
    let user = app.create_user("searcher@example.com").await;
    assert_eq!(
        upload_and_wait(&app, &user, "doc.txt", &document("search", 3)).await["status"],
        "ready"
    );
    let before = server.billed(Route::Embeddings).prompt_tokens;
    for mode in ["hybrid", "vector", "text"] {
        let response = app
            .request(reqwest::Method::POST, &user.key, "/v1/search")
            .json(&serde_json::json!({"query": "which shelf holds the batch", "mode": mode}))
            .send()
            .await
            .expect("search");
        assert_eq!(response.status().as_u16(), 200, "{mode}");
    }
    let query_tokens = server.billed(Route::Embeddings).prompt_tokens - before;
    assert!(query_tokens > 0);
    let rows: Vec<(i64, i32, uuid::Uuid)> = sqlx::query_as(
        "SELECT prompt_tokens, requests, user_id FROM usage_events WHERE idempotency_key LIKE 'search:%'",
    )
    .fetch_all(app.pool())
    .await
    .expect("search events");
    assert_eq!(
        rows.len(),
        2,
        "hybrid and vector embed the query, text does not: {rows:?}"
    );
    assert_eq!(rows.iter().map(|r| r.0).sum::<i64>() as u64, query_tokens);
    assert!(rows.iter().all(|r| r.1 == 1 && r.2 == user.id.0));
    let (prompt, _, _) = embedding_ledger(app.pool()).await;
    assert_eq!(prompt as u64, server.billed(Route::Embeddings).prompt_tokens);
    app.shutdown().await;
}
