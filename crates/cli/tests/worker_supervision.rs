//! A `ragpipe worker` process whose database connections are terminated: its queue workers
//! and its message feed are restarted (and say so on `/metrics`), and documents and a question
//! enqueued afterwards complete; while the database refuses it, `/readyz` names the dead
//! component, and the process comes back by itself once the database does.

use ragpipe_core::{Config, ConversationId, DocumentId, UserId};
use ragpipe_store::conversations::{self, AskSettings};
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::OpenAiServer;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// A running `ragpipe worker` with its ops listener; killed on drop.
struct WorkerProcess {
    child: Child,
    ops: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WorkerProcess {
    fn start(url: &str, server: &OpenAiServer) -> WorkerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let ops = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("ragpipe-worker-supervision-{}.log", Uuid::new_v4().simple()));
        let endpoint = server.embedding_endpoint();
        let child = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
            .args(["worker", "--metrics-listen", &ops])
            .env("DATABASE_URL", url)
            .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
            .env("RAGPIPE_EMBEDDING_MODEL", &endpoint.model)
            .env("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string())
            .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start worker");
        WorkerProcess {
            child,
            ops,
            log,
            client: reqwest::Client::new(),
        }
    }

    /// The end of the process's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log.floor_char_boundary(start)..].to_owned()
    }

    /// `/readyz`'s status and body (none while the listener is not up yet).
    async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let response = self
            .client
            .get(format!("http://{}/readyz", self.ops))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        ))
    }

    /// Waits until `/readyz` says ready (which it does only when its components, the two
    /// queue workers and the message feed, are running).
    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.readyz().await;
            if let Some((200, body)) = &last {
                let components = body["components"].as_array().map_or(3, Vec::len);
                assert_eq!(components, 3, "{body}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the worker never became ready: {last:?}\n{}", self.log_tail());
    }

    /// The value of the metric line `name{labels}` on `/metrics`.
    async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.ops))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn restarts(&self) -> [f64; 3] {
        [
            self.metric(
                "ragpipe_worker_restarts_total",
                "component=\"ingest\",queue=\"ragpipe.ingest\"",
            )
            .await
            .unwrap_or(0.0),
            self.metric(
                "ragpipe_worker_restarts_total",
                "component=\"agent\",queue=\"ragpipe.agent\"",
            )
            .await
            .unwrap_or(0.0),
            self.metric("ragpipe_worker_restarts_total", "component=\"message_feed\"")
                .await
                .unwrap_or(0.0),
        ]
    }
}

/// Terminates the worker process's connections to the test database (`application_name`
/// `ragpipe`; the test's own pool is not one of them): with `busy_only`, those running a
/// statement or inside a transaction (a poll, a heartbeat); otherwise all, the listening ones
/// included. Returns how many.
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

async fn setup(pool: &PgPool, server: &OpenAiServer) -> (Store, UserId) {
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let new_user = users::NewUser {
        email: "supervision@example.com".into(),
        ..Default::default()
    };
    let user = UserId(users::create(&store, &new_user).await.expect("user").id);
    (store, user)
}

async fn upload(store: &Store, user: UserId, name: &str, text: &str) -> DocumentId {
    let bytes = text.as_bytes();
    let mut tx = store.user_tx(user).await.expect("tx");
    let new = documents::NewDocument {
        filename: name,
        content_type: "text/plain",
        bytes,
        sha256: Sha256::digest(bytes).into(),
        metadata: serde_json::json!({}),
    };
    let stored = documents::create(&mut tx, &new, 8).await.expect("upload");
    tx.commit().await.expect("commit");
    DocumentId(stored.document.id)
}

async fn ask(store: &Store, user: UserId, question: &str) -> Uuid {
    let mut tx = store.user_tx(user).await.expect("tx");
    let conversation = ConversationId(conversations::create(&mut tx, None).await.expect("conversation").id);
    let settings = AskSettings {
        model: &Config::defaults().chat.model,
        retrieval_mode: None,
        k: None,
        max_attempts: 8,
    };
    let asked = conversations::ask(&mut tx, conversation, question, &settings)
        .await
        .expect("ask");
    tx.commit().await.expect("commit");
    asked.assistant_message.id
}

/// Waits until every document and the answer are finished; returns their statuses.
async fn wait_finished(
    store: &Store,
    user: UserId,
    docs: &[DocumentId],
    message: Uuid,
    within: Duration,
) -> (Vec<String>, String) {
    let deadline = Instant::now() + within;
    loop {
        let mut tx = store.user_tx(user).await.expect("tx");
        let mut statuses = Vec::new();
        for id in docs {
            statuses.push(documents::get(&mut tx, *id).await.expect("document").status);
        }
        let answer: String = sqlx::query_scalar("SELECT status FROM copilot_messages WHERE id = $1")
            .bind(message)
            .fetch_one(tx.conn())
            .await
            .expect("answer");
        drop(tx);
        let done = statuses.iter().all(|s| s == "ready" || s == "failed") && answer != "streaming";
        if done || Instant::now() >= deadline {
            return (statuses, answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_worker_process_survives_terminated_connections(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let (store, user) = setup(&pool, &server).await;
    let worker = WorkerProcess::start(&database_url(&pool), &server);
    worker.wait_ready(Duration::from_secs(60)).await;

    // Rounds of terminations: each spins on the connections that are busy (a poll, a
    // heartbeat, in flight), which is what ends an apalis worker, then terminates every
    // connection, the listening ones (the queues' and the message feed's) included. The rounds
    // go on until each component has been hit (at most 40 s: the old code reports nothing).
    let started = Instant::now();
    let mut rounds = 0;
    let mut terminated = 0;
    loop {
        rounds += 1;
        let spin = Instant::now() + Duration::from_secs(1);
        while Instant::now() < spin {
            terminated += terminate(&pool, true).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        terminated += terminate(&pool, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarts = worker.restarts().await;
        if (rounds >= 5 && restarts.iter().all(|r| *r >= 1.0)) || started.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    eprintln!("{rounds} rounds, {terminated} connections terminated");

    // The queues still work: documents and a question enqueued now complete.
    let docs = [
        upload(&store, user, "a.txt", &"Supervisors restart workers. ".repeat(200)).await,
        upload(&store, user, "b.txt", &"Backoff has a cap and jitter. ".repeat(200)).await,
        upload(&store, user, "c.txt", &"Heartbeats prove liveness. ".repeat(200)).await,
    ];
    let message = ask(&store, user, "What do supervisors do?").await;
    let (statuses, answer) = wait_finished(&store, user, &docs, message, Duration::from_secs(90)).await;
    assert!(
        statuses.iter().all(|s| s == "ready") && answer == "complete",
        "documents {statuses:?}, answer {answer} after {rounds} rounds of terminations\n{}",
        worker.log_tail()
    );

    let [ingest, agent, feed] = worker.restarts().await;
    assert!(
        ingest >= 1.0 && agent >= 1.0 && feed >= 1.0,
        "every component was restarted at least once: ingest {ingest}, agent {agent}, feed {feed}\n{}",
        worker.log_tail()
    );
    worker.wait_ready(Duration::from_secs(30)).await;
}

#[sqlx::test(migrations = false)]
async fn readyz_names_a_dead_worker_while_the_database_refuses_it(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let (_store, _user) = setup(&pool, &server).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("database name");
    let worker = WorkerProcess::start(&database_url(&pool), &server);
    worker.wait_ready(Duration::from_secs(60)).await;

    // The database stops accepting the worker's connections: every restart fails. (A database
    // cannot be altered so from a connection to itself.)
    let admin_options = (*pool.connect_options()).clone().database("postgres");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect_with(&admin_options)
        .await
        .expect("connecting to the postgres database");
    let allow = async |admin: &mut sqlx::PgConnection, allow: bool| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS {allow}"
        )))
        .execute(admin)
        .await
        .expect("ALTER DATABASE ... ALLOW_CONNECTIONS");
    };
    allow(&mut admin, false).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'ragpipe'",
        )
        .bind(&database)
        .execute(&mut admin)
        .await
        .expect("terminating backends");
        last = worker.readyz().await;
        if let Some((503, body)) = &last
            && body["error"]["code"] == "component_down"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("ingest worker (ragpipe.ingest) is dead"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = worker
        .metric("ragpipe_worker_up", "component=\"ingest\",queue=\"ragpipe.ingest\"")
        .await;
    let restarts = worker.restarts().await;
    allow(&mut admin, true).await;

    let Some((503, body)) = &last else {
        panic!(
            "/readyz did not report the dead worker: {last:?}\n{}",
            worker.log_tail()
        );
    };
    assert_eq!(body["error"]["code"], "component_down", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ingest worker (ragpipe.ingest) is dead"),
        "{message}\n{}",
        worker.log_tail()
    );
    assert_eq!(up, Some(0.0), "ragpipe_worker_up for the dead ingest worker");
    assert!(restarts[0] >= 1.0, "the ingest worker's restarts moved: {restarts:?}");

    // Once the database accepts connections again, the process recovers by itself.
    worker.wait_ready(Duration::from_secs(90)).await;
}
