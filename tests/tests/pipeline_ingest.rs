//! The ingest pipeline on real parts (apalis on PostgreSQL, the real worker): retries,
//! idempotency and deletion races. Fixture documents over HTTP: `pipeline_http.rs`.

use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_ingest_worker::IngestContext;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util_shim::Shutdown;

/// A oneshot-based stop signal for the in-process worker.
mod tokio_util_shim {
    pub struct Shutdown(pub Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Shutdown {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
}

async fn setup(pool: PgPool, config: &Config) -> (Store, UserId) {
    let store = Store::from_pool(pool);
    store.migrate(&config.embedding).await.expect("migrate");
    let user = users::create(
        &store,
        &users::NewUser {
            email: "pipeline@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .expect("user");
    (store, UserId(user.id))
}

fn start_worker(store: &Store, config: Config) -> Shutdown {
    let ctx = Arc::new(IngestContext::new(store.clone(), Arc::new(config)).expect("context"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = ragpipe_ingest_worker::run(ctx, async move {
            let _ = rx.await;
        })
        .await
        {
            panic!("worker stopped: {e}");
        }
    });
    Shutdown(Some(tx))
}

/// Uploads like the API and CLI do: detect, hash, then the row, bytes and job in one transaction.
async fn upload(store: &Store, user: UserId, name: &str, bytes: &[u8]) -> Result<DocumentId, String> {
    ragpipe_tests::upload_inline(store, user, name, bytes).await
}

async fn wait_terminal(store: &Store, user: UserId, ids: &[DocumentId]) -> Vec<documents::Document> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let mut tx = store.user_tx(user).await.expect("tx");
        let mut docs = Vec::new();
        for id in ids {
            docs.push(documents::get(&mut tx, *id).await.expect("doc"));
        }
        if docs.iter().all(|d| d.status().expect("a known status").is_terminal()) {
            return docs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "documents still running: {:?}",
            docs.iter().map(|d| (&d.filename, &d.status)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (chunk rows, rows with an embedding, rows with a non-empty tsvector, distinct indexes)
async fn chunk_stats(store: &Store, user: UserId, id: DocumentId) -> (i64, i64, i64, i64) {
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query_as(
        "SELECT count(*), count(embedding), count(*) FILTER (WHERE length(search_vector) > 0), count(DISTINCT chunk_index) \
         FROM document_chunks WHERE document_id = $1",
    )
    .bind(id.0)
    .fetch_one(tx.conn())
    .await
    .expect("stats")
}

async fn usage_events(store: &Store, user: UserId) -> Vec<(String, i64, String)> {
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query_as("SELECT kind, prompt_tokens, idempotency_key FROM usage_events ORDER BY created_at")
        .fetch_all(tx.conn())
        .await
        .expect("usage")
}

#[sqlx::test(migrations = false)]
async fn rate_limited_embeddings_still_end_ready_with_one_usage_set(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let (store, user) = setup(pool, &config).await;
    server.inject(
        Route::Embeddings,
        Fault::RateLimited {
            retry_after_secs: Some(1),
        },
        2,
    );
    let _worker = start_worker(&store, config.clone());

    let id = upload(
        &store,
        user,
        "notes.md",
        b"# Rate limits\n\nThe embeddings server answers 429 twice before it succeeds.\n",
    )
    .await
    .expect("upload");
    let docs = wait_terminal(&store, user, &[id]).await;
    assert_eq!(docs[0].status, "ready", "{:?}", docs[0].error);
    let embedding_requests = server.requests_to(Route::Embeddings);
    assert_eq!(embedding_requests.len(), 3, "two 429s, then the request that succeeded");
    let events = usage_events(&store, user).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "embedding");
    assert!(events[0].1 > 0);
}

#[sqlx::test(migrations = false)]
async fn running_a_job_twice_leaves_one_chunk_set_and_one_usage_event(pool: PgPool) {
    let config = Config::defaults();
    let (store, user) = setup(pool, &config).await;
    let ctx = IngestContext::new(store.clone(), Arc::new(config.clone())).expect("context");
    let id = upload(
        &store,
        user,
        "a.txt",
        "Idempotent handlers run twice. ".repeat(400).as_bytes(),
    )
    .await
    .expect("upload");
    let job = IngestJob::upload(user, id);
    let first = ragpipe_ingest_worker::ingest_document(&ctx, &job, "job-1")
        .await
        .expect("first run");
    // At-least-once delivery: the same job again, as after a crash between commit and ack.
    let mut tx = store.user_tx(user).await.expect("tx");
    documents::set_stage(&mut tx, id, ragpipe_core::DocumentStatus::Queued, 0.0)
        .await
        .expect("requeue");
    tx.commit().await.expect("commit");
    let second = ragpipe_ingest_worker::ingest_document(&ctx, &job, "job-1")
        .await
        .expect("second run");
    assert_eq!(first, second);
    let (rows, _, _, distinct) = chunk_stats(&store, user, id).await;
    assert!(rows > 1);
    assert_eq!(rows, distinct);
    assert_eq!(usage_events(&store, user).await.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_document_deleted_mid_ingest_is_skipped_cleanly(pool: PgPool) {
    let config = Config::defaults();
    let (store, user) = setup(pool, &config).await;
    let ctx = IngestContext::new(store.clone(), Arc::new(config)).expect("context");
    let id = upload(&store, user, "gone.txt", b"soon deleted").await.expect("upload");
    let mut tx = store.user_tx(user).await.expect("tx");
    documents::delete(&mut tx, id).await.expect("delete");
    tx.commit().await.expect("commit");
    let outcome = ragpipe_ingest_worker::ingest_document(&ctx, &IngestJob::upload(user, id), "j")
        .await
        .expect("run");
    assert_eq!(outcome, ragpipe_ingest_worker::Outcome::Skipped);
}

/// A job that fails for a transient reason is handed back to the queue with its next attempt
/// scheduled later (`run_at` moved past the failure, by at least the first retry's 0.25 s),
/// instead of the worker sleeping in the job and holding its slot; the retry then succeeds.
#[sqlx::test(migrations = false)]
async fn a_transient_failure_is_retried_later_through_the_queue(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    // One 503 fails the job's attempt (the client does not retry it itself).
    config.embedding.max_retries = 0;
    let (store, user) = setup(pool.clone(), &config).await;
    server.inject(
        Route::Embeddings,
        Fault::Status {
            status: 503,
            body: r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into(),
        },
        1,
    );
    let _worker = start_worker(&store, config.clone());

    let enqueued: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&pool)
        .await
        .expect("now");
    let id = upload(
        &store,
        user,
        "notes.md",
        b"# Retries\n\nThe first embedding call fails with 503.\n",
    )
    .await
    .expect("upload");
    let docs = wait_terminal(&store, user, &[id]).await;
    assert_eq!(docs[0].status, "ready", "{:?}", docs[0].error);
    assert_eq!(
        server.requests_to(Route::Embeddings).len(),
        2,
        "the 503, then the retry"
    );

    let run_at: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at)::float8 FROM apalis.jobs \
         WHERE job_type = $1 AND convert_from(job, 'UTF8')::jsonb ->> 'document_id' = $2",
    )
    .bind(ragpipe_store::jobs::INGEST_QUEUE)
    .bind(id.0.to_string())
    .fetch_one(&pool)
    .await
    .expect("the job's row");
    let delayed = run_at - enqueued;
    assert!(
        delayed >= 0.25,
        "the retry was scheduled {delayed:.3} s after the upload: not delayed through the queue"
    );
}
