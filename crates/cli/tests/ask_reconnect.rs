//! `ragpipe ask` whose connections following the answer (the follower's reads of the message
//! row, the message feed's LISTEN connection) are terminated while the answer streams: it
//! prints the whole answer exactly once and exits 0, and the answer is complete.

use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{OpenAiServer, ScriptedReply};
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Terminates the `ragpipe` process's connections that follow the answer: with `reads`, those
/// in the middle of a follower's read of the message row; otherwise the message feed's LISTEN
/// connection. (Not the agent worker's: an answer whose own write fails mid-stream is ended
/// as interrupted by design, which is not what this test is about.)
async fn terminate(pool: &PgPool, reads: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'ragpipe' \
           AND pid <> pg_backend_pid() \
           AND CASE WHEN $1 THEN state <> 'idle' AND query LIKE '%octet_length(m.content) > $2%' \
                    ELSE query LIKE 'LISTEN%ragpipe_message_events%' END",
    )
    .bind(reads)
    .fetch_one(pool)
    .await
    .expect("terminating backends")
}

#[sqlx::test(migrations = false)]
async fn ask_survives_terminated_connections_while_the_answer_streams(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let new_user = users::NewUser {
        email: "ask@example.com".into(),
        ..Default::default()
    };
    let user = UserId(users::create(&store, &new_user).await.expect("user").id);
    // About four seconds of streaming, forty deltas.
    let reply =
        ScriptedReply::deltas((0..40).map(|i| format!("word{i} "))).with_delta_delay(Duration::from_millis(100));
    let full_text = reply.full_text();
    server.set_default_reply(reply);

    let embedding = server.embedding_endpoint();
    let chat = server.chat_endpoint();
    let child = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["ask", "--user", &user.0.to_string(), "What do the words say?"])
        .env("DATABASE_URL", database_url(&pool))
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &embedding.model)
        .env("RAGPIPE_EMBEDDING_DIM", embedding.dim.to_string())
        .env("RAGPIPE_CHAT_BASE_URL", server.base_url())
        .env("RAGPIPE_CHAT_MODEL", &chat.model)
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ragpipe ask");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());

    // Once the answer has begun, terminate the follower's connections in rounds until it exits.
    // Each round holds the messages table's lock for a moment, ends the feed's LISTEN
    // connection (after which the follower reads the row again) and ends the follower's reads
    // while they wait for the lock; then lets the answer go on. A reader in the writer's process
    // takes the text from memory and reads the row only at a few moments, each of which takes
    // a millisecond: the lock is what makes them wait where they can be caught. The writer's
    // appends wait for it too, and are not terminated.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let begun: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM copilot_messages WHERE role = 'assistant' AND content <> '')",
        )
        .fetch_one(&pool)
        .await
        .expect("answer begun");
        if begun || output.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut terminated = 0;
    let mut reads = 0;
    let mut rounds = 0;
    while !output.is_finished() && Instant::now() < deadline {
        rounds += 1;
        let mut lock = pool.begin().await.expect("begin");
        sqlx::query("LOCK TABLE copilot_messages IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .expect("lock the messages");
        terminated += terminate(&pool, false).await;
        let spin = Instant::now() + Duration::from_millis(200);
        while Instant::now() < spin {
            reads += terminate(&pool, true).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lock.commit().await.expect("release the messages");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !output.is_finished() {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let output = output.await.expect("join").expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(terminated > 0, "the feed's connection was never terminated");
    assert!(reads > 0, "no read was terminated");
    let terminated = terminated + reads;
    let retries = stderr.matches("retrying").count();
    assert!(
        output.status.success(),
        "ragpipe ask failed ({:?}) after {terminated} terminated connections\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(
        stdout.matches(full_text.trim_end()).count(),
        1,
        "the whole answer, exactly once:\n{stdout}\nstderr:\n{stderr}"
    );
    let (status, content): (String, String) =
        sqlx::query_as("SELECT status, content FROM copilot_messages WHERE role = 'assistant'")
            .fetch_one(&pool)
            .await
            .expect("answer");
    assert_eq!((status.as_str(), content.as_str()), ("complete", full_text.as_str()));
    eprintln!(
        "{terminated} connections terminated ({reads} mid-read) in {rounds} rounds while the \
         answer streamed ({retries} retries logged)"
    );
}
