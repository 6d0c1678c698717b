//! A worker process killed with SIGKILL in the middle of a job: after a new worker starts, the
//! document still ends `ready` with exactly one chunk set.

use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

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

async fn status(store: &Store, user: UserId, id: uuid::Uuid) -> documents::Document {
    let mut tx = store.user_tx(user).await.expect("tx");
    documents::get(&mut tx, ragpipe_core::DocumentId(id))
        .await
        .expect("doc")
}

#[sqlx::test(migrations = false)]
async fn a_killed_workers_job_is_finished_by_the_next_worker(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "crash@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );

    let bytes = "Workers die; jobs survive them. ".repeat(300).into_bytes();
    let mut tx = store.user_tx(user).await.expect("tx");
    let stored = documents::create(
        &mut tx,
        &documents::NewDocument {
            filename: "crash.txt",
            content_type: "text/plain",
            bytes: &bytes,
            sha256: Sha256::digest(&bytes).into(),
            metadata: serde_json::json!({}),
        },
        8,
    )
    .await
    .expect("upload");
    tx.commit().await.expect("commit");
    let id = stored.document.id;

    // The first worker hangs in the embeddings call; kill it there.
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(30)), 1);
    let url = database_url(&pool);
    let mut first = worker(&url, &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&store, user, id).await.status != "embedding" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker never reached the embedding stage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    assert_eq!(
        status(&store, user, id).await.status,
        "embedding",
        "the job was mid-flight when the worker died"
    );

    let mut second = worker(&url, &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let doc = loop {
        let doc = status(&store, user, id).await;
        if doc.status().is_terminal() {
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
            .bind(id)
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
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "term@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );
    let bytes = "Graceful shutdown finishes what it started. ".repeat(200).into_bytes();
    let mut tx = store.user_tx(user).await.expect("tx");
    let stored = documents::create(
        &mut tx,
        &documents::NewDocument {
            filename: "term.txt",
            content_type: "text/plain",
            bytes: &bytes,
            sha256: Sha256::digest(&bytes).into(),
            metadata: serde_json::json!({}),
        },
        8,
    )
    .await
    .expect("upload");
    tx.commit().await.expect("commit");
    let id = stored.document.id;

    // The embedding call takes 3 s: SIGTERM arrives while it is in flight.
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(3)), 1);
    let mut child = worker(&database_url(&pool), &server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&store, user, id).await.status != "embedding" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never reached the embedding stage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let doc = status(&store, user, id).await;
    assert_eq!(
        doc.status, "ready",
        "the job in flight was finished before exiting: {:?}",
        doc.error
    );
}
