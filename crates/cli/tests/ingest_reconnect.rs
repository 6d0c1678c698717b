//! `ragpipe ingest` whose database connections are terminated while it waits for its
//! documents: it retries, prints its summary, exits 0, every document is ready, and the vector
//! index it left out during the load (the model had no chunks) is built and valid.

use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const DOCUMENTS: usize = 6;
/// Rounds of terminations (about 0.4 s each): enough to hit its polls many times over, few
/// enough that its workers, restarted after each, still get the documents done.
const ROUNDS: u32 = 12;

/// Terminates the `ragpipe` process's connections to the test database (the test's own pool is
/// not one of them): with `busy_only`, those running a statement or inside a transaction.
async fn terminate(pool: &PgPool, busy_only: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'ragpipe' \
           AND pid <> pg_backend_pid() AND (NOT $1 OR state <> 'idle')",
    )
    .bind(busy_only)
    .fetch_one(pool)
    .await
    .expect("terminating backends")
}

/// A model server, the schema, and a user to ingest as.
async fn migrated_with_a_user(pool: &PgPool) -> (OpenAiServer, UserId) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let new_user = users::NewUser {
        email: "ingest@example.com".into(),
        ..Default::default()
    };
    let user = UserId(users::create(&store, &new_user).await.expect("user").id);
    (server, user)
}

#[sqlx::test(migrations = false)]
async fn ingest_survives_terminated_connections_while_it_polls(pool: PgPool) {
    let (server, user) = migrated_with_a_user(&pool).await;
    let endpoint = server.embedding_endpoint();
    let index = ragpipe_store::embedding_models::index_name(&endpoint.model, endpoint.dim);
    let index_oid = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT to_regclass($1)::oid::int8")
            .bind(&index)
            .fetch_one(&pool)
            .await
            .expect("index oid")
    };
    let empty_index = index_oid().await.expect("the model's index after migrate");

    let dir = std::env::temp_dir().join(format!("ragpipe-ingest-reconnect-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for i in 0..DOCUMENTS {
        let text = format!("Document {i} is about dropped connections and retries. ").repeat(150);
        std::fs::write(dir.join(format!("doc-{i}.txt")), text).expect("write document");
    }
    // Each embedding call takes a while, so the command spends seconds polling.
    server.inject(
        Route::Embeddings,
        Fault::Delay(Duration::from_millis(700)),
        DOCUMENTS * 2,
    );

    let child = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["ingest", "--user", &user.0.to_string()])
        .arg(&dir)
        .env("DATABASE_URL", database_url(&pool))
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &endpoint.model)
        .env("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string())
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ragpipe ingest");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());

    // Once its uploads are committed, terminate its connections in rounds while it waits for
    // its documents: each round spins for a moment on the busy connections (a progress poll,
    // the local workers' polls), then terminates all of them (the listening ones included),
    // then lets it work for a while; `ROUNDS` rounds, or until it exits.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let uploaded: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
            .fetch_one(&pool)
            .await
            .expect("count");
        if uploaded == DOCUMENTS as i64 || output.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut terminated = 0;
    let mut rounds = 0;
    while !output.is_finished() && Instant::now() < deadline && rounds < ROUNDS {
        rounds += 1;
        let spin = Instant::now() + Duration::from_millis(60);
        while Instant::now() < spin {
            terminated += terminate(&pool, true).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        terminated += terminate(&pool, false).await;
        tokio::time::sleep(Duration::from_millis(340)).await;
    }
    while !output.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !output.is_finished() {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let output = output.await.expect("join").expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(terminated > 0, "no connection was terminated");
    assert!(
        output.status.success(),
        "ragpipe ingest failed ({:?}) after {terminated} terminated connections\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("{DOCUMENTS} of {DOCUMENTS} documents ready")),
        "the summary is printed:\n{stdout}\nstderr:\n{stderr}"
    );
    let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE status = 'ready'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(ready, DOCUMENTS as i64, "every document is ready");
    // The model had no chunks: its index was left out while they were written, and built once
    // at the end, valid, whatever connections were cut.
    let built = index_oid().await.expect("the model's index after the ingest");
    assert_ne!(built, empty_index, "the index was built again after the load");
    let valid: bool = sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = $1::int8::oid")
        .bind(built)
        .fetch_one(&pool)
        .await
        .expect("validity");
    assert!(valid, "the built index is valid");
    assert!(stdout.contains("vector index of"), "the build is reported:\n{stdout}");
    eprintln!("{terminated} connections terminated in {rounds} rounds while `ragpipe ingest` waited");
}

/// A document deleted (by another client) while `ragpipe ingest` follows it: the command ends,
/// reports that document as deleted and the others as they are, and exits 0.
#[sqlx::test(migrations = false)]
async fn ingest_reports_a_document_deleted_while_it_follows(pool: PgPool) {
    let (server, user) = migrated_with_a_user(&pool).await;
    let dir = std::env::temp_dir().join(format!("ragpipe-ingest-deleted-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("kept.txt"), "A document that stays. ".repeat(40)).expect("write document");
    std::fs::write(dir.join("gone.txt"), "A document that is deleted. ".repeat(40)).expect("write document");

    // No workers anywhere: both documents stay queued, and the command follows them.
    let endpoint = server.embedding_endpoint();
    let child = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["ingest", "--no-local-workers", "--json", "--user", &user.0.to_string()])
        .arg(&dir)
        .env("DATABASE_URL", database_url(&pool))
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &endpoint.model)
        .env("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ragpipe ingest");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids: Vec<(uuid::Uuid, String)> = loop {
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, filename FROM documents")
            .fetch_all(&pool)
            .await
            .expect("documents");
        if rows.len() == 2 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids.len(), 2, "both documents were uploaded");
    let gone = ids.iter().find(|(_, name)| name == "gone.txt").expect("gone.txt").0;
    let kept = ids.iter().find(|(_, name)| name == "kept.txt").expect("kept.txt").0;
    // Let it poll a few times, then delete one and make the other fail, as a worker would.
    tokio::time::sleep(Duration::from_millis(600)).await;
    sqlx::query("DELETE FROM documents WHERE id = $1")
        .bind(gone)
        .execute(&pool)
        .await
        .expect("deleting");
    sqlx::query("UPDATE documents SET status = 'ready', progress = 1 WHERE id = $1")
        .bind(kept)
        .execute(&pool)
        .await
        .expect("finishing");
    while !output.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !output.is_finished() {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let output = output.await.expect("join").expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "ragpipe ingest ended ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON summary");
    let status = |name: &str| {
        summary
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i["path"].as_str().is_some_and(|p| p.ends_with(name)))
            })
            .map(|i| i["status"].clone())
    };
    assert_eq!(status("gone.txt"), Some(serde_json::json!("deleted")), "{stdout}");
    assert_eq!(status("kept.txt"), Some(serde_json::json!("ready")), "{stdout}");
}
