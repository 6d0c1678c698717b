//! Worker processes and their jobs: a worker killed with SIGKILL mid-job is taken over by the
//! next one; SIGTERM lets the job in flight finish before the worker exits.

use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn worker(url: &str, server: &OpenAiServer) -> Child {
    let endpoint = server.embedding_endpoint();
    Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &endpoint.model)
        .env("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string())
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// A migrated database with one user and one queued text document; the embeddings server's
/// next call takes `embed_delay`.
async fn queued_document(pool: &PgPool, server: &OpenAiServer, embed_delay: Duration) -> (Store, UserId, DocumentId) {
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let new_user = users::NewUser {
        email: "worker@example.com".into(),
        ..Default::default()
    };
    let user = UserId(users::create(&store, &new_user).await.expect("user").id);
    let bytes = "Workers die; jobs survive them. ".repeat(300).into_bytes();
    let mut tx = store.user_tx(user).await.expect("tx");
    let new = documents::NewDocument {
        filename: "worker.txt",
        content_type: "text/plain",
        bytes: &bytes,
        sha256: Sha256::digest(&bytes).into(),
        metadata: serde_json::json!({}),
    };
    let stored = documents::create(&mut tx, &new, 8).await.expect("upload");
    tx.commit().await.expect("commit");
    server.inject(Route::Embeddings, Fault::Delay(embed_delay), 1);
    (store, user, DocumentId(stored.document.id))
}

async fn document(store: &Store, user: UserId, id: DocumentId) -> documents::Document {
    let mut tx = store.user_tx(user).await.expect("tx");
    documents::get(&mut tx, id).await.expect("doc")
}

async fn wait_for_stage(store: &Store, user: UserId, id: DocumentId, stage: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while document(store, user, id).await.status != stage {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never reached {stage}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_killed_workers_job_is_finished_by_the_next_worker(pool: PgPool) {
    let server = OpenAiServer::start().await;
    // The first worker hangs in the embeddings call; it is killed there.
    let (store, user, id) = queued_document(&pool, &server, Duration::from_secs(30)).await;
    let url = database_url(&pool);
    let mut first = worker(&url, &server);
    wait_for_stage(&store, user, id, "embedding").await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    assert_eq!(
        document(&store, user, id).await.status,
        "embedding",
        "the job was mid-flight when the worker died"
    );

    let mut second = worker(&url, &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let doc = loop {
        let doc = document(&store, user, id).await;
        if doc.status().expect("a known status").is_terminal() {
            break doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job was not taken over: {}",
            doc.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(doc.status, "ready", "{:?}", doc.error);
    let mut tx = store.user_tx(user).await.expect("tx");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT chunk_index) FROM document_chunks WHERE document_id = $1")
            .bind(id.0)
            .fetch_one(tx.conn())
            .await
            .expect("chunks");
    assert_eq!(rows, i64::from(doc.chunk_count));
    assert_eq!(rows, distinct, "exactly one chunk set");
    let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(tx.conn())
        .await
        .expect("usage");
    assert_eq!(usage, 1);
}

#[sqlx::test(migrations = false)]
async fn sigterm_lets_the_job_in_flight_finish_then_exits(pool: PgPool) {
    let server = OpenAiServer::start().await;
    // The embedding call takes 3 s: SIGTERM arrives while it is in flight.
    let (store, user, id) = queued_document(&pool, &server, Duration::from_secs(3)).await;
    let mut child = worker(&database_url(&pool), &server);
    wait_for_stage(&store, user, id, "embedding").await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "worker exit status {exit:?}");
    let doc = document(&store, user, id).await;
    assert_eq!(
        doc.status, "ready",
        "the job in flight was finished before exiting: {:?}",
        doc.error
    );
}
