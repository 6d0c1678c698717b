//! The chaos suite: `ragpipe worker` processes SIGKILLed in the middle of ingests and answers,
//! every process's database connections terminated in rounds, and a flaky model server (429
//! with Retry-After, 500, bodies cut with and without a length, stalls past the timeout, a 400
//! for one input), while documents are ingested by `ragpipe ingest`, questions are answered and
//! documents are deleted. When the faults stop, the system must reach the state a clean run
//! reaches:
//! - every document has its reference chunk set (the same texts and vectors as a run without
//!   faults), and the one the model refuses is `failed` with the reason;
//! - every answer is complete, once;
//! - no worker stopped for good: every process is alive and ready, and new work completes;
//! - the usage ledger equals the tokens the model server counted;
//! - no job ran for a document after it was deleted.
//!
//! The small form runs in CI. `RAGPIPE_CHAOS=full` runs the larger form by hand (figures in
//! RELIABILITY.md); `RAGPIPE_CHAOS_SEED=N` replays a schedule.

use ragpipe_core::{ConversationId, DocumentId, UserId};
use ragpipe_store::conversations::{self, AskSettings};
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{Fault, Framing, OpenAiServer, Route, ScriptedReply};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How much chaos: the CI form and the by-hand form.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Documents the chaos user ingests (one of them the model refuses).
    documents: usize,
    /// Of those, deleted while the chaos runs.
    deleted: usize,
    /// Questions asked while the chaos runs.
    questions: usize,
    /// Worker processes.
    workers: usize,
    /// Chaos rounds: each may kill a worker, terminates every connection, injects faults.
    rounds: usize,
    /// Time between rounds.
    round: Duration,
    /// Paragraphs per document (about 60 tokens each).
    paragraphs: usize,
}

fn scale() -> Scale {
    match std::env::var("RAGPIPE_CHAOS").as_deref() {
        Ok("full") => Scale {
            documents: 60,
            deleted: 6,
            questions: 24,
            workers: 3,
            rounds: 40,
            round: Duration::from_millis(1500),
            paragraphs: 40,
        },
        _ => Scale {
            documents: 12,
            deleted: 2,
            questions: 6,
            workers: 2,
            rounds: 8,
            round: Duration::from_millis(1200),
            paragraphs: 16,
        },
    }
}

/// A small deterministic generator, so that a failing schedule can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "queue",
    "worker",
    "chunk",
    "vector",
    "index",
    "token",
    "model",
    "answer",
    "retry",
    "backoff",
    "ledger",
    "postgres",
    "listener",
    "heartbeat",
    "snapshot",
    "replica",
    "segment",
    "payload",
    "cursor",
    "lease",
    "partition",
    "checkpoint",
    "manifest",
    "compaction",
    "latency",
    "throughput",
    "budget",
    "tenant",
];

/// The words only document `index` holds.
fn marker(index: usize) -> String {
    format!("marker zqx{index}q")
}

/// A document's text: paragraphs of plain words with a marker no other document has.
fn document_text(index: usize, paragraphs: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1));
    let mut text = String::new();
    for p in 0..paragraphs {
        text.push_str(&format!("Section {p} of manual {index} ({}).\n", marker(index)));
        for _ in 0..40 {
            text.push_str(WORDS[rng.below(WORDS.len())]);
            text.push(' ');
        }
        text.push_str("\n\n");
    }
    text
}

/// How long before a SIGKILL a billed call may have been answered without its record having
/// committed (the time from the response to the commit, with room for a slow machine).
const KILL_WINDOW: Duration = Duration::from_secs(1);

/// The marker the model server refuses (400): it is in one document only.
const REFUSED_MARKER: &str = "zqx-refused-input";

/// The answer every question gets from the model; the assistant message must hold it once.
fn scripted_answer() -> ScriptedReply {
    ScriptedReply::deltas([
        "Workers ",
        "restart ",
        "after ",
        "their ",
        "connection ",
        "drops, ",
        "and ",
        "jobs ",
        "finish [1].",
    ])
}

/// A `ragpipe worker` process, its ops address and the API key it sends (which tells the
/// model server's log which process made a request).
struct WorkerProcess {
    child: Child,
    ops: String,
    key: String,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A failed assertion must not leave workers behind on the test database.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn ragpipe(url: &str, server: &OpenAiServer) -> Command {
    let embedding = server.embedding_endpoint();
    let chat = server.chat_endpoint();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragpipe"));
    command
        .env("DATABASE_URL", url)
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &embedding.model)
        .env("RAGPIPE_EMBEDDING_DIM", embedding.dim.to_string())
        .env("RAGPIPE_EMBEDDING_TIMEOUT_SECS", "3")
        .env("RAGPIPE_EMBEDDING_MAX_RETRIES", "2")
        .env("RAGPIPE_CHAT_BASE_URL", server.base_url())
        .env("RAGPIPE_CHAT_MODEL", &chat.model)
        .env("RAGPIPE_CHAT_TIMEOUT_SECS", "3")
        .env("RAGPIPE_CHAT_MAX_RETRIES", "2")
        .env("RAGPIPE_CHUNK_MAX_TOKENS", "200")
        .env("RAGPIPE_CHUNK_OVERLAP_TOKENS", "20")
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .env("RAGPIPE_WORKER_MAX_ATTEMPTS", "50")
        .env("RUST_LOG", "warn");
    command
}

fn start_worker(url: &str, server: &OpenAiServer, logs: &Path, n: usize) -> WorkerProcess {
    let ops = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(logs.join(format!("worker-{n}.log"))).expect("worker log");
    let key = format!("chaos-worker-{n}");
    let child = ragpipe(url, server)
        .env("RAGPIPE_EMBEDDING_API_KEY", &key)
        .env("RAGPIPE_CHAT_API_KEY", &key)
        .args(["worker", "--metrics-listen", &ops])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting ragpipe worker");
    WorkerProcess { child, ops, key }
}

/// Terminates every backend of the test database but the test's own.
async fn terminate_connections(test: &PgPool, database: &str) -> u64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name <> 'ragpipe-chaos-test') t",
    )
    .bind(database)
    .fetch_one(test)
    .await
    .map(|n| n as u64)
    .unwrap_or(0)
}

/// A fault for the next request to a route, drawn from the flaky server's repertoire.
fn random_fault(rng: &mut Rng) -> Fault {
    match rng.below(9) {
        0 => Fault::RateLimited {
            retry_after_secs: Some(1),
        },
        1 => Fault::server_error(),
        2 => Fault::CutAfter { deltas: 2 },
        3 => Fault::Delay(Duration::from_secs(5)),
        4 => Fault::StallAfter {
            deltas: 1,
            pause: Duration::from_secs(5),
        },
        5 => Fault::Truncated {
            framing: Framing::ContentLength,
        },
        6 => Fault::Truncated {
            framing: Framing::Chunked,
        },
        7 => Fault::Truncated {
            framing: Framing::UntilClose,
        },
        _ => Fault::Pass,
    }
}

/// A document's chunk set: (index, text, vector as text), in order.
async fn chunk_set(store: &Store, user: UserId, id: DocumentId) -> Vec<(i32, String, String)> {
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query_as(
        "SELECT chunk_index, content, embedding::text FROM document_chunks WHERE document_id = $1 ORDER BY chunk_index",
    )
    .bind(id.0)
    .fetch_all(tx.conn())
    .await
    .expect("reading chunks")
}

/// Every document of `user` by file name: (id, status, error).
async fn documents_by_name(pool: &PgPool, user: UserId) -> BTreeMap<String, (DocumentId, String, Option<String>)> {
    let rows: Vec<(uuid::Uuid, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, filename, status, error FROM documents WHERE user_id = $1")
            .bind(user.0)
            .fetch_all(pool)
            .await
            .expect("listing documents");
    rows.into_iter()
        .map(|(id, name, status, error)| (name, (DocumentId(id), status, error)))
        .collect()
}

async fn create_user(store: &Store, email: &str) -> UserId {
    let new = users::NewUser {
        email: email.into(),
        ..Default::default()
    };
    UserId(users::create(store, &new).await.expect("creating a user").id)
}

async fn upload(store: &Store, user: UserId, name: &str, text: &str) -> DocumentId {
    let mut tx = store.user_tx(user).await.expect("tx");
    let new = documents::NewDocument {
        filename: name,
        content_type: "text/plain",
        bytes: text.as_bytes(),
        sha256: Sha256::digest(text.as_bytes()).into(),
        metadata: serde_json::json!({}),
    };
    let stored = documents::create(&mut tx, &new, 50).await.expect("upload");
    tx.commit().await.expect("commit");
    DocumentId(stored.document.id)
}

/// Asks `question` in a new conversation of `user`; returns the assistant message id.
async fn ask(store: &Store, user: UserId, question: &str) -> uuid::Uuid {
    let mut tx = store.user_tx(user).await.expect("tx");
    let conversation = conversations::create(&mut tx, None).await.expect("conversation");
    let settings = AskSettings {
        model: ragpipe_tests::openai_server::CHAT_MODEL,
        retrieval_mode: None,
        k: None,
        max_attempts: 50,
    };
    let asked = conversations::ask(&mut tx, ConversationId(conversation.id), question, &settings)
        .await
        .expect("asking");
    tx.commit().await.expect("commit");
    asked.assistant_message.id
}

/// Waits until `done` holds, or panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match done().await {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what} within {limit:?}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[sqlx::test(migrations = false)]
async fn the_system_reaches_its_reference_state_through_kills_terminations_and_a_flaky_model(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let scale = scale();
    let seed: u64 = std::env::var("RAGPIPE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    eprintln!("chaos: {scale:?}, RAGPIPE_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let database = connect.get_database().unwrap_or("postgres").to_owned();
    // The test's own connections are named, so that the terminations spare them.
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(connect.application_name("ragpipe-chaos-test"))
        .await
        .expect("connecting to the test database");
    let url = database_url(&pool);
    let server = OpenAiServer::start().await;
    server.set_default_reply(scripted_answer());
    // The model refuses one input, every time: the document holding it fails, with the reason.
    server.refuse_embedding_inputs_containing(Some(REFUSED_MARKER));
    let store = Store::from_pool(pool.clone());
    let mut config = ragpipe_core::Config::defaults();
    config.embedding = server.embedding_endpoint();
    store.migrate(&config.embedding).await.expect("migrate");
    let logs = tempdir("chaos-logs");
    eprintln!("chaos: worker logs in {}", logs.display());

    // The reference: the same documents ingested and one question answered with no faults.
    let reference = create_user(&store, "reference@example.com").await;
    let chaos = create_user(&store, "chaos@example.com").await;
    let mut workers: Vec<WorkerProcess> = (0..scale.workers)
        .map(|n| start_worker(&url, &server, &logs, n))
        .collect();
    let mut started = scale.workers;
    let texts: Vec<(String, String)> = (0..scale.documents)
        .map(|i| {
            let mut text = document_text(i, scale.paragraphs);
            if i == 0 {
                text.push_str(&format!("A line the model refuses: {REFUSED_MARKER}.\n"));
            }
            (format!("manual-{i:03}.txt"), text)
        })
        .collect();
    for (name, text) in texts.iter().skip(1) {
        upload(&store, reference, name, text).await;
    }
    let reference_answer = ask(&store, reference, "How do workers survive a dropped connection?").await;
    wait_until(Duration::from_secs(120), "the reference run finished", || async {
        let docs = documents_by_name(&pool, reference).await;
        let pending: Vec<_> = docs.iter().filter(|(_, (_, s, _))| s != "ready").collect();
        if docs.len() == scale.documents - 1 && pending.is_empty() {
            Ok(())
        } else {
            Err(format!("{} documents, not ready: {pending:?}", docs.len()))
        }
    })
    .await;
    wait_until(Duration::from_secs(60), "the reference answer completed", || {
        message_state(&pool, reference_answer)
    })
    .await;
    let reference_docs = documents_by_name(&pool, reference).await;
    let mut reference_chunks = BTreeMap::new();
    for (name, (id, _, _)) in &reference_docs {
        reference_chunks.insert(name.clone(), chunk_set(&store, reference, *id).await);
    }
    let reference_content = message_content(&pool, reference_answer).await;
    assert_eq!(reference_content, scripted_answer().full_text());

    // The chaos: `ragpipe ingest` uploads the documents and follows them while workers are
    // killed, connections terminated and the model misbehaves.
    let input = tempdir("chaos-input");
    for (name, text) in &texts {
        std::fs::write(input.join(name), text).expect("writing an input document");
    }
    let markers: BTreeMap<String, String> = (0..scale.documents)
        .map(|i| (format!("manual-{i:03}.txt"), marker(i)))
        .collect();
    let ingest_log = std::fs::File::create(logs.join("ingest.log")).expect("ingest log");
    let mut ingest = ragpipe(&url, &server);
    ingest
        .args(["ingest", "--no-local-workers", "--json", "--user", &chaos.0.to_string()])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(ingest_log);
    let ingest = tokio::process::Command::from(ingest)
        .kill_on_drop(true)
        .spawn()
        .expect("starting ragpipe ingest");
    let mut answers = Vec::new();
    let mut deleted: Vec<(String, DocumentId, Instant)> = Vec::new();
    let mut killed: Vec<(String, Instant)> = Vec::new();
    let (mut kills, mut terminated, mut faults) = (0usize, 0u64, 0usize);
    let started_at = Instant::now();
    for round in 0..scale.rounds {
        tokio::time::sleep(scale.round).await;
        if round < scale.questions {
            // Questions arrive during the chaos, a few per round.
            for _ in 0..scale.questions.div_ceil(scale.rounds.min(scale.questions)) {
                if answers.len() < scale.questions {
                    answers.push(ask(&store, chaos, "How do workers survive a dropped connection?").await);
                }
            }
        }
        if rng.below(3) > 0 {
            let victim = rng.below(workers.len());
            // Dropping the process kills it (SIGKILL).
            killed.push((format!("Bearer {}", workers[victim].key), Instant::now()));
            workers[victim] = start_worker(&url, &server, &logs, started);
            started += 1;
            kills += 1;
        }
        terminated += terminate_connections(&pool, &database).await;
        for route in [Route::Embeddings, Route::ChatCompletions] {
            for _ in 0..1 + rng.below(3) {
                server.inject(route, random_fault(&mut rng), 1);
                faults += 1;
            }
        }
        if round == scale.rounds / 2 {
            // Delete some documents mid-flight (by name: skip the refused one).
            let docs = documents_by_name(&pool, chaos).await;
            for (name, (id, _, _)) in docs.iter().filter(|(n, _)| *n != "manual-000.txt").take(scale.deleted) {
                let mut tx = store.user_tx(chaos).await.expect("tx");
                documents::delete(&mut tx, *id).await.expect("deleting a document");
                tx.commit().await.expect("commit");
                deleted.push((name.clone(), *id, Instant::now()));
            }
        }
    }
    let chaos_secs = started_at.elapsed().as_secs_f64();

    // Quiet: no more faults (those still queued are dropped); everything must settle.
    server.clear_faults();
    let settle = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(300), ingest.wait_with_output())
        .await
        .expect("ragpipe ingest ended within 300 s")
        .expect("waiting for ragpipe ingest");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    assert!(
        summary.is_array(),
        "ragpipe ingest printed its summary through the chaos (exit {:?}); see {}",
        output.status,
        logs.join("ingest.log").display()
    );
    wait_until(Duration::from_secs(300), "every document settled", || async {
        let docs = documents_by_name(&pool, chaos).await;
        let pending: Vec<_> = docs
            .iter()
            .filter(|(_, (_, s, _))| s != "ready" && s != "failed")
            .map(|(n, (_, s, _))| format!("{n}: {s}"))
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.join(", "))
        }
    })
    .await;
    for &answer in &answers {
        wait_until(Duration::from_secs(300), "every answer settled", || {
            message_state(&pool, answer)
        })
        .await;
    }
    let settle_secs = settle.elapsed().as_secs_f64();

    // Every document is in its reference state.
    let docs = documents_by_name(&pool, chaos).await;
    for (name, (id, status, error)) in &docs {
        if name == "manual-000.txt" {
            assert_eq!(status, "failed", "the refused document failed");
            let error = error.as_deref().unwrap_or_default();
            assert!(!error.is_empty(), "the refused document says why");
            continue;
        }
        assert_eq!(status, "ready", "{name}: {error:?}");
        let chunks = chunk_set(&store, chaos, *id).await;
        assert_eq!(
            chunks, reference_chunks[name],
            "{name}: the same chunk texts and vectors as the reference run"
        );
    }
    // Deleted documents are gone, and no model call was made for them after their deletion.
    for (name, id, at) in &deleted {
        assert!(!docs.contains_key(name) || docs[name].0 != *id, "{name} was deleted");
        let marker = &markers[name];
        let late: Vec<_> = server
            .requests_to(Route::Embeddings)
            .into_iter()
            .filter(|r| r.received_at > *at + Duration::from_secs(2) && r.body.to_string().contains(marker.as_str()))
            .collect();
        assert!(
            late.is_empty(),
            "{name}: {} embedding calls after it was deleted",
            late.len()
        );
    }
    // Every answer is complete, once.
    for &answer in &answers {
        assert_eq!(
            message_content(&pool, answer).await,
            reference_content,
            "answer {answer}"
        );
    }
    let assistant_messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM copilot_messages WHERE user_id = $1 AND role = 'assistant'")
            .bind(chaos.0)
            .fetch_one(&pool)
            .await
            .expect("counting answers");
    assert_eq!(assistant_messages as usize, answers.len());

    // The ledger equals what the model server counted, over both users and every call.
    let (embedding, chat): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens) FILTER (WHERE kind = 'embedding'), 0)::bigint, \
                coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE kind = 'chat'), 0)::bigint \
         FROM usage_events",
    )
    .fetch_one(&pool)
    .await
    .expect("summing the ledger");
    // A call answered in the instant before its process was SIGKILLed, before the transaction
    // that records it committed, is billed and cannot be recorded (no process is left to do
    // it): only such calls may be missing, and nothing may be recorded that was not billed.
    let at_risk = |route: Route| -> (u64, usize) {
        let mut tokens = 0;
        let mut calls = 0;
        for r in server.requests_to(route) {
            let Some(usage) = r.usage else { continue };
            let died_then = killed.iter().any(|(key, at)| {
                r.authorization.as_deref() == Some(key.as_str())
                    && r.received_at <= *at
                    && at.duration_since(r.received_at) < KILL_WINDOW
            });
            if died_then {
                tokens += usage.prompt_tokens + usage.completion_tokens;
                calls += 1;
            }
        }
        (tokens, calls)
    };
    let billed_embedding = server.billed(Route::Embeddings).prompt_tokens;
    let billed_chat = server.billed(Route::ChatCompletions);
    let billed_chat = billed_chat.prompt_tokens + billed_chat.completion_tokens;
    let (embedding_risk, embedding_risk_calls) = at_risk(Route::Embeddings);
    let (chat_risk, chat_risk_calls) = at_risk(Route::ChatCompletions);
    for (what, ledger, billed, risk) in [
        ("embedding", embedding as u64, billed_embedding, embedding_risk),
        ("chat", chat as u64, billed_chat, chat_risk),
    ] {
        assert!(
            ledger <= billed && billed - ledger <= risk,
            "{what} tokens: the ledger has {ledger}, the provider billed {billed}; calls answered just before a kill \
             account for at most {risk}"
        );
    }
    let ledger_figures = format!(
        "ledger/billed: embedding {embedding}/{billed_embedding} ({embedding_risk_calls} calls answered within \
         {KILL_WINDOW:?} of a kill, {embedding_risk} tokens), chat {chat}/{billed_chat} ({chat_risk_calls} calls, \
         {chat_risk} tokens)"
    );

    // No worker stopped for good: every process is alive and ready, and new work completes.
    for w in &mut workers {
        assert!(
            w.child.try_wait().expect("worker status").is_none(),
            "a worker process exited"
        );
    }
    // Ready again within a few heartbeats of the last fault (a worker restarted by the last
    // termination round may still be coming up when everything has settled).
    let client = reqwest::Client::new();
    let ready_wait = Instant::now();
    for w in &workers {
        let client = &client;
        wait_until(Duration::from_secs(30), "every worker process ready", || async move {
            let ready = client
                .get(format!("http://{}/readyz", w.ops))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match ready.status().as_u16() {
                200 => Ok(()),
                status => Err(format!(
                    "{}: {status} {}",
                    w.ops,
                    ready.text().await.unwrap_or_default()
                )),
            }
        })
        .await;
    }
    eprintln!(
        "chaos: every worker ready {:.1} s after the work settled",
        ready_wait.elapsed().as_secs_f64()
    );
    terminated += terminate_connections(&pool, &database).await;
    let late_doc = upload(&store, chaos, "after-the-chaos.txt", &document_text(999, 4)).await;
    let late_answer = ask(&store, chaos, "How do workers survive a dropped connection?").await;
    wait_until(Duration::from_secs(120), "work after the chaos completed", || async {
        let docs = documents_by_name(&pool, chaos).await;
        match docs.get("after-the-chaos.txt") {
            Some((id, s, _)) if *id == late_doc && s == "ready" => message_state(&pool, late_answer).await,
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let workers_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.workers")
        .fetch_one(&pool)
        .await
        .expect("counting worker rows");
    eprintln!(
        "chaos figures: seed {seed}; {} documents ({} deleted, 1 refused), {} questions; {} rounds in {chaos_secs:.1} s; \
         {kills} worker kills, {terminated} connections terminated, {faults} model faults injected; settled in \
         {settle_secs:.1} s; {} embedding and {} chat requests; apalis.workers rows at the end: {workers_rows} \
         ({} processes started); {ledger_figures}",
        scale.documents,
        deleted.len(),
        answers.len(),
        scale.rounds,
        server.requests_to(Route::Embeddings).len(),
        server.requests_to(Route::ChatCompletions).len(),
        started,
    );
    drop(workers);
}

/// `Ok` once the assistant message is complete; its state otherwise.
async fn message_state(pool: &PgPool, id: uuid::Uuid) -> Result<(), String> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM copilot_messages WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
    match status.as_deref() {
        Some("complete") => Ok(()),
        // Terminal: waiting longer changes nothing.
        Some(terminal @ ("failed" | "interrupted" | "cancelled")) => {
            let error: Option<String> = sqlx::query_scalar("SELECT error FROM copilot_messages WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .map_err(|e| e.to_string())?;
            panic!("answer {id} ended {terminal}: {error:?}")
        }
        other => Err(format!("message {id}: {other:?}")),
    }
}

async fn message_content(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT content FROM copilot_messages WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("reading an answer")
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ragpipe-{prefix}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}
