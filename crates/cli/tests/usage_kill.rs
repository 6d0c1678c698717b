//! The ledger against the provider's bill when a worker process is killed between two model
//! calls, while ingesting or answering: every call the model server counted is in
//! `usage_events` once, and none of it is recorded as cached.

use ragpipe_core::{Config, ConversationId, DocumentId, UserId};
use ragpipe_store::{Store, conversations, documents, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{CHAT_MODEL, Fault, OpenAiServer, Route};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A worker process, killed when dropped (so a failing test leaves none behind).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker embedding two chunks per request, one request at a time, chunks of 64 tokens.
fn worker(url: &str, server: &OpenAiServer) -> Worker {
    let endpoint = server.embedding_endpoint();
    Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &endpoint.model)
        .env("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string())
        .env("RAGPIPE_EMBEDDING_BATCH_SIZE", "2")
        .env("RAGPIPE_EMBEDDING_CONCURRENCY", "1")
        .env("RAGPIPE_EMBEDDING_TIMEOUT_SECS", "300")
        .env("RAGPIPE_CHUNK_MAX_TOKENS", "64")
        .env("RAGPIPE_CHUNK_OVERLAP_TOKENS", "0")
        .env("RAGPIPE_CHAT_BASE_URL", server.base_url())
        .env("RAGPIPE_CHAT_MODEL", CHAT_MODEL)
        .env("RAGPIPE_CHAT_TIMEOUT_SECS", "300")
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Worker)
        .expect("start worker")
}

async fn ledger(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(cached_tokens), 0)::bigint \
         FROM usage_events",
    )
    .fetch_one(pool)
    .await
    .expect("reading the ledger")
}

async fn status(store: &Store, user: UserId, id: DocumentId) -> String {
    let mut tx = store.user_tx(user).await.expect("tx");
    documents::get(&mut tx, id).await.expect("doc").status
}

/// A migrated database with one user and one queued document of `text`.
async fn queued(pool: &PgPool, server: &OpenAiServer, text: &str) -> (Store, UserId, DocumentId) {
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "killed@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );
    let bytes = text.as_bytes();
    let mut tx = store.user_tx(user).await.expect("tx");
    let stored = documents::create(
        &mut tx,
        &documents::NewDocument {
            filename: "ledger.txt",
            content_type: "text/plain",
            bytes,
            sha256: Sha256::digest(bytes).into(),
            metadata: serde_json::json!({}),
        },
        8,
    )
    .await
    .expect("upload");
    tx.commit().await.expect("commit");
    (store, user, DocumentId(stored.document.id))
}

async fn wait_for_document(store: &Store, user: UserId, id: DocumentId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(store, user, id).await;
        if s == "ready" || s == "failed" {
            assert_eq!(s, "ready");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the document is still {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_worker_killed_between_model_calls_leaves_the_ledger_equal_to_the_bill(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let text: String = (0..16)
        .map(|i| {
            format!(
                "Paragraph {i}: ledger line {} balances account {} on day {}.\n\n",
                i * 3,
                i * 5,
                i * 7
            )
        })
        .collect::<String>()
        .repeat(3);
    let (store, user, id) = queued(&pool, &server, &text).await;
    // Two calls answer, the third is held until long after the kill.
    server.inject(Route::Embeddings, Fault::Pass, 2);
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(120)), 1);

    let url = database_url(&pool);
    let mut first = worker(&url, &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.requests_to(Route::Embeddings).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never made its third call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The third call is held by the server; give the second call's record time to commit.
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while ledger(&pool).await.0 < 2 && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reap");
    let billed_before = server.billed(Route::Embeddings).prompt_tokens;
    assert!(billed_before > 0);
    assert_eq!(
        ledger(&pool).await.1 as u64,
        billed_before,
        "the two calls the killed worker made are in the ledger"
    );

    let second = worker(&url, &server);
    wait_for_document(&store, user, id).await;
    drop(second);

    let billed = server.billed(Route::Embeddings).prompt_tokens;
    let (_, prompt, cached) = ledger(&pool).await;
    assert_eq!(prompt as u64, billed, "the ledger equals the provider's count");
    assert_eq!(cached, 0, "nothing a model call produced is recorded as cached");
    // The retry did not send again what the killed attempt had embedded.
    let inputs: Vec<String> = server
        .requests_to(Route::Embeddings)
        .iter()
        .filter(|r| r.usage.is_some())
        .flat_map(|r| {
            r.body["input"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = inputs.iter().collect();
    assert_eq!(distinct.len(), inputs.len(), "each text was embedded once");
}

#[sqlx::test(migrations = false)]
async fn an_agent_worker_killed_after_the_query_embedding_leaves_the_ledger_equal_to_the_bill(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let (store, user, id) = queued(
        &pool,
        &server,
        "Embedding requests are batched by input count and by total tokens, and retried with backoff.",
    )
    .await;
    let url = database_url(&pool);
    let first = worker(&url, &server);
    wait_for_document(&store, user, id).await;

    // The question's first chat call is held: the worker is killed after its query embedding.
    server.inject(Route::ChatCompletions, Fault::Delay(Duration::from_secs(120)), 1);
    let mut tx = store.user_tx(user).await.expect("tx");
    let conversation = conversations::create(&mut tx, None).await.expect("conversation");
    let asked = conversations::ask(
        &mut tx,
        ConversationId(conversation.id),
        "How are embedding requests batched?",
        &conversations::AskSettings {
            model: CHAT_MODEL,
            retrieval_mode: None,
            k: None,
            max_attempts: 3,
        },
    )
    .await
    .expect("ask");
    tx.commit().await.expect("commit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.requests_to(Route::ChatCompletions).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never asked the model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = first;
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reap");

    let second = worker(&url, &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let message = loop {
        let mut tx = store.user_tx(user).await.expect("tx");
        let m = conversations::message(&mut tx, ragpipe_core::MessageId(asked.assistant_message.id))
            .await
            .expect("message");
        tx.commit().await.expect("commit");
        if m.status != "streaming" {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "the answer was not taken over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(second);
    assert_eq!(message.status, "complete", "{message:?}");

    let (query_events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM usage_events WHERE kind = 'embedding' AND idempotency_key LIKE 'agent:%:query:%'",
    )
    .fetch_one(&pool)
    .await
    .expect("query events");
    assert_eq!(query_events, 2, "the killed attempt's query embedding and the retry's");
    let (embedding, chat): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens) FILTER (WHERE kind = 'embedding'), 0)::bigint, \
                coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE kind = 'chat'), 0)::bigint \
         FROM usage_events",
    )
    .fetch_one(&pool)
    .await
    .expect("ledger");
    assert_eq!(embedding as u64, server.billed(Route::Embeddings).prompt_tokens);
    let billed = server.billed(Route::ChatCompletions);
    assert_eq!(chat as u64, billed.prompt_tokens + billed.completion_tokens);
    assert_eq!(ledger(&pool).await.2, 0, "nothing recorded as cached");
}
