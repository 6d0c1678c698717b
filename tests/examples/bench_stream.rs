//! Streaming overhead: how long after the model sends its first token does the client of the
//! SSE endpoint see its first delta, and does every delta arrive when many answers stream at
//! once.
//!
//! ```text
//! cargo run --release -p ragpipe-tests --example bench_stream -- [--questions 100] [--concurrent 50] [--database ragpipe_bench_stream]
//! ```
//!
//! The whole system runs in this process against a fresh database on the configured server
//! (`DATABASE_URL`): the API on a local port, the ingest and agent workers, and the
//! OpenAI-compatible test server as the chat model, which records when it sent each answer's
//! first token. Per question: `overhead = client's first delta − server's first token`, which
//! excludes queueing, retrieval and the model's own time to first token, and includes the
//! worker's read of the model stream, the flush to the message row, the notification, the SSE
//! handler's read of the row and the HTTP hop to the client.
//!
//! Baseline, measured in the same run against the same server: the chat client alone
//! (`ChatModel::stream` in process), first token at the server → first delta out of the
//! client. The difference between the two is what ragpipe's streaming path adds.

use ragpipe_core::Config;
use ragpipe_llm::{ChatMessage, ChatModel, ChatRequest};
use ragpipe_tests::app::TestApp;
use ragpipe_tests::openai_server::{OpenAiServer, Route, ScriptedReply};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    questions: usize,
    concurrent: usize,
    database: String,
}

fn args() -> Args {
    let mut a = Args {
        questions: 100,
        concurrent: 50,
        database: "ragpipe_bench_stream".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--questions" => a.questions = value.parse().unwrap_or(a.questions),
            "--concurrent" => a.concurrent = value.parse().unwrap_or(a.concurrent),
            "--database" => a.database = value.replace('"', ""),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

/// The value at quantile `q` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (quantile(&ms, 0.5), quantile(&ms, 0.99));
    println!(
        "{name:<48} n={:<4} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   max {:>7.2} ms",
        ms.len(),
        ms.last().copied().unwrap_or(f64::NAN)
    );
    (p50, p99)
}

/// A histogram's cumulative bucket counts (`le`, count) and sum, from a `/metrics` scrape.
fn histogram(metrics: &str, name: &str) -> (Vec<(f64, f64)>, f64) {
    let mut buckets = Vec::new();
    let mut sum = 0.0;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, count) = rest.split_once("\"} ").unwrap_or_default();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            buckets.push((le, count.trim().parse().unwrap_or(0.0)));
        } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
            sum = v.trim().parse().unwrap_or(0.0);
        }
    }
    (buckets, sum)
}

/// What a histogram recorded between two scrapes: count, mean and p50/p99 in ms (interpolated
/// within buckets).
fn stage(before: &str, after: &str, name: &str) -> (f64, f64, f64, f64) {
    let (b, b_sum) = histogram(before, name);
    let (a, a_sum) = histogram(after, name);
    let counts: Vec<(f64, f64)> = a
        .iter()
        .map(|&(le, n)| (le, n - b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1)))
        .collect();
    let total = counts.last().map_or(0.0, |x| x.1);
    let at = |q: f64| {
        let target = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &counts {
            if n >= target {
                if !le.is_finite() {
                    return lower.0 * 1000.0;
                }
                let share = if n > lower.1 {
                    (target - lower.1) / (n - lower.1)
                } else {
                    0.0
                };
                return (lower.0 + share * (le - lower.0)) * 1000.0;
            }
            lower = (le, n);
        }
        f64::NAN
    };
    let mean = if total > 0.0 {
        (a_sum - b_sum) / total * 1000.0
    } else {
        f64::NAN
    };
    (total, mean, at(0.5), at(0.99))
}

/// This process's resident memory, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Peaks seen while the concurrent streams ran.
#[derive(Default)]
struct Peaks {
    rss: u64,
    pool_in_use: u32,
    server_connections: i64,
}

/// Samples memory, the pool and the server's connections every 10 ms until `stop` is set.
async fn sample(app: Arc<TestApp>, admin: sqlx::PgPool, db: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Peaks {
    let mut peaks = Peaks::default();
    let mut tick = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        peaks.rss = peaks.rss.max(rss_bytes());
        let pool = app.pool();
        peaks.pool_in_use = peaks
            .pool_in_use
            .max(pool.size().saturating_sub(pool.num_idle() as u32));
        if tick.is_multiple_of(10) {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&db)
                .fetch_one(&admin)
                .await
                .unwrap_or(0);
            peaks.server_connections = peaks.server_connections.max(n);
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peaks
}

async fn scrape(app: &TestApp) -> String {
    app.client
        .get(app.ops_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// What one client saw of one answer.
struct Seen {
    question: String,
    sent_at: Instant,
    first_delta_at: Option<Instant>,
    text: String,
    gaps: usize,
    ended_with: String,
}

/// Asks `question` over HTTP with `Accept: text/event-stream` and reads the stream to its end.
async fn ask(app: &TestApp, key: &str, conversation: &str, question: String) -> Seen {
    let sent_at = Instant::now();
    let mut response = app
        .request(
            reqwest::Method::POST,
            key,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "content": question }))
        .send()
        .await
        .expect("POST messages");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let mut seen = Seen {
        question,
        sent_at,
        first_delta_at: None,
        text: String::new(),
        gaps: 0,
        ended_with: String::new(),
    };
    let mut buffer = String::new();
    let mut offset: usize = 0;
    while let Some(bytes) = response.chunk().await.expect("reading the stream") {
        let now = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse::<usize>().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            match event.as_str() {
                "delta" => {
                    seen.first_delta_at.get_or_insert(now);
                    let value: serde_json::Value = serde_json::from_str(&data).expect("delta JSON");
                    let text = value["text"].as_str().unwrap_or_default();
                    // The id is where the delta ends: it must start where the last one ended.
                    if id.map(|end| end - text.len()) != Some(offset) {
                        seen.gaps += 1;
                    }
                    offset = id.unwrap_or(offset + text.len());
                    seen.text.push_str(text);
                }
                "done" | "error" => seen.ended_with = event,
                _ => {}
            }
        }
    }
    seen
}

/// The server's first-token instant for the answer to `question`: the last chat request that
/// carried it (a follow-up question's standalone rewrite is a chat request of its own, made
/// before the answer's, and carries it too).
fn first_token(model: &OpenAiServer, question: &str) -> Option<Instant> {
    model
        .requests_to(Route::ChatCompletions)
        .into_iter()
        .filter(|r| {
            r.body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .is_some_and(|last| last.contains(question))
        })
        .filter_map(|r| r.first_token_at)
        .max()
}

/// A labelled counter's value in a `/metrics` scrape (0 when absent).
fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{{label}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn print_stages(before: &str, after: &str) {
    for (what, name) in [
        (
            "writing streamed text (append transaction)",
            ragpipe_agent::answer::APPEND_SECONDS,
        ),
        (
            "a reader's read of the row after a signal",
            ragpipe_agent::follow::READ_SECONDS,
        ),
    ] {
        let (n, mean, p50, p99) = stage(before, after, name);
        println!("    {what:<46} n={n:<5} mean {mean:>6.2} ms   p50 {p50:>6.2} ms   p99 {p99:>6.2} ms");
    }
    let signals: Vec<String> = ["memory", "nothing_new", "awaiting_handover", "read"]
        .iter()
        .map(|outcome| {
            let label = format!("outcome=\"{outcome}\"");
            let name = ragpipe_agent::follow::SIGNALS_TOTAL;
            format!(
                "{outcome} {}",
                counter(after, name, &label) - counter(before, name, &label)
            )
        })
        .collect();
    println!("    signals readers took: {}", signals.join(", "));
}

/// What one burst of concurrent questions gave.
struct Burst {
    label: &'static str,
    overheads: Vec<f64>,
    to_first_delta: Vec<f64>,
    lost_streams: usize,
    lost_bytes: usize,
    gaps: usize,
    wall: Duration,
    peaks: Peaks,
    rss_before: u64,
    metrics_before: String,
    metrics_after: String,
}

/// Asks `n` questions at once, each in a new conversation, and reads every stream to its end.
#[allow(clippy::too_many_arguments)]
async fn burst(
    app: &Arc<TestApp>,
    key: &str,
    model: &OpenAiServer,
    admin: &sqlx::PgPool,
    db: &str,
    n: usize,
    label: &'static str,
    full: &str,
) -> Burst {
    let mut conversations = Vec::new();
    for _ in 0..n {
        let response = app
            .request(reqwest::Method::POST, key, "/v1/conversations")
            .send()
            .await
            .expect("conversation");
        let body: serde_json::Value = response.json().await.expect("JSON");
        conversations.push(body["id"].as_str().expect("id").to_owned());
    }
    let metrics_before = scrape(app).await;
    let rss_before = rss_bytes();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample(Arc::clone(app), admin.clone(), db.to_owned(), Arc::clone(&stop)));
    let started = Instant::now();
    let tasks: Vec<_> = conversations
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let app = Arc::clone(app);
            let key = key.to_owned();
            let question = format!("{label}, question {i}: how are requests batched?");
            tokio::spawn(async move { ask(&app, &key, &c, question).await })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("client task"));
    }
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peaks = sampler.await.expect("sampler");
    let metrics_after = scrape(app).await;
    let mut b = Burst {
        label,
        overheads: Vec::new(),
        to_first_delta: Vec::new(),
        lost_streams: 0,
        lost_bytes: 0,
        gaps: 0,
        wall,
        peaks,
        rss_before,
        metrics_before,
        metrics_after,
    };
    for s in &seen {
        if s.text != full || s.ended_with != "done" {
            b.lost_streams += 1;
            b.lost_bytes += full.len().saturating_sub(s.text.len());
        }
        b.gaps += s.gaps;
        if let (Some(at), Some(token)) = (s.first_delta_at, first_token(model, &s.question)) {
            b.overheads.push(at.duration_since(token).as_secs_f64() * 1000.0);
            b.to_first_delta
                .push(at.duration_since(s.sent_at).as_secs_f64() * 1000.0);
        }
    }
    b
}

#[tokio::main]
async fn main() {
    let args = args();
    let base = Config::load(None).expect("configuration");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(base.database_url.parse::<PgConnectOptions>().expect("DATABASE_URL"))
        .await
        .expect("connecting");
    let db = &args.database;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("dropping the bench database");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&admin)
        .await
        .expect("creating the bench database");
    let options: PgConnectOptions = base.database_url.parse().expect("DATABASE_URL");
    let pool = PgPoolOptions::new()
        .max_connections(64)
        .connect_with(options.database(db))
        .await
        .expect("connecting to the bench database");

    let model = OpenAiServer::start().await;
    // A 40-delta answer, 5 ms between deltas: long enough that concurrent streams overlap.
    let words: Vec<String> = (0..40).map(|i| format!(" word{i}")).collect();
    let reply = ScriptedReply::deltas(words).with_delta_delay(Duration::from_millis(5));
    let full = reply.full_text();
    model.set_default_reply(reply);
    let chat = model.chat_endpoint();
    let app = TestApp::builder(pool)
        .config(move |c| {
            c.chat = chat;
            c.worker.concurrency = 2;
        })
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .with_task("agent worker", ragpipe_agent_worker::spawn)
        .start()
        .await;
    let user = app.create_user("bench@example.com").await;
    let doc = app
        .upload_one(
            &user.key,
            "batching.txt",
            b"Embedding requests are batched by input count and by total tokens.".to_vec(),
        )
        .await;
    let id = doc["id"].as_str().expect("id").to_owned();
    app.wait_for_document(&user.key, &id, Duration::from_secs(60)).await;
    let conversation = {
        let response = app
            .request(reqwest::Method::POST, &user.key, "/v1/conversations")
            .send()
            .await
            .expect("conversation");
        let body: serde_json::Value = response.json().await.expect("JSON");
        body["id"].as_str().expect("id").to_owned()
    };

    // Warm up (connections, tokenizer, caches): not measured.
    for i in 0..3 {
        ask(
            &app,
            &user.key,
            &conversation,
            format!("warm-up {i}: how are requests batched?"),
        )
        .await;
    }

    // Baseline: the chat client alone, in process, against the same server.
    let client = ChatModel::new(&app.config.chat).expect("chat model");
    let mut baseline = Vec::new();
    for i in 0..args.questions {
        let question = format!("baseline {i}: how are requests batched?");
        let mut stream = client
            .stream(ChatRequest {
                messages: vec![ChatMessage::user(question.clone())],
                max_tokens: 0,
                sources: vec![],
            })
            .await
            .expect("stream");
        use futures::StreamExt;
        let mut first = None;
        while let Some(event) = stream.next().await {
            if let Ok(ragpipe_llm::ChatEvent::Delta(_)) = event {
                first.get_or_insert(Instant::now());
            }
        }
        if let (Some(at), Some(token)) = (first, first_token(&model, &question)) {
            baseline.push(at.duration_since(token).as_secs_f64() * 1000.0);
        }
    }

    // Sequential: one question at a time.
    let metrics_start = scrape(&app).await;
    let mut overhead = Vec::new();
    let mut to_first_delta = Vec::new();
    let mut lost_sequential = 0;
    for i in 0..args.questions {
        let seen = ask(
            &app,
            &user.key,
            &conversation,
            format!("sequential {i}: how are requests batched?"),
        )
        .await;
        if seen.text != full || seen.gaps > 0 || seen.ended_with != "done" {
            lost_sequential += 1;
        }
        if let (Some(at), Some(token)) = (seen.first_delta_at, first_token(&model, &seen.question)) {
            overhead.push(at.duration_since(token).as_secs_f64() * 1000.0);
            to_first_delta.push(at.duration_since(seen.sent_at).as_secs_f64() * 1000.0);
        }
    }

    let metrics_sequential = scrape(&app).await;

    // Concurrent: `concurrent` questions at once, in as many conversations; twice, since the
    // first burst also grows the pool and prepares each new connection's statements.
    let app = Arc::new(app);
    let mut bursts = Vec::new();
    for round in ["first burst: new pool connections", "second burst: warm"] {
        bursts.push(burst(&app, &user.key, &model, &admin, db, args.concurrent, round, &full).await);
    }
    // The saved answers too: every message row holds the whole text.
    let incomplete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM copilot_messages WHERE role = 'assistant' AND (status <> 'complete' OR content <> $1) \
         AND id IN (SELECT assistant_message_id FROM agent_requests)",
    )
    .bind(&full)
    .fetch_one(app.pool())
    .await
    .expect("counting saved answers");

    println!();
    println!(
        "streaming overhead: {} questions sequentially, {} at once; answer of {} deltas, 5 ms apart",
        args.questions, args.concurrent, 40
    );
    let (b50, b99) = summary("baseline: chat client alone, token → delta", baseline);
    let (o50, o99) = summary("ragpipe: model token → client SSE delta", overhead);
    summary("  (question sent → first delta, for context)", to_first_delta);
    println!(
        "added by ragpipe's streaming path, one at a time: p50 {:.2} ms, p99 {:.2} ms; lost: {lost_sequential} stream(s)",
        o50 - b50,
        o99 - b99,
    );
    println!("stages, one at a time (from the app's /metrics):");
    print_stages(&metrics_start, &metrics_sequential);
    for b in bursts {
        println!();
        let (c50, c99) = summary(
            &format!("ragpipe, {} concurrent streams, {}", args.concurrent, b.label),
            b.overheads,
        );
        println!(
            "  added by ragpipe's streaming path: p50 {:.2} ms, p99 {:.2} ms; lost {} stream(s), {} byte(s), {} id gap(s); \
             wall time {:.2} s",
            c50 - b50,
            c99 - b99,
            b.lost_streams,
            b.lost_bytes,
            b.gaps,
            b.wall.as_secs_f64()
        );
        summary("  (question sent → first delta, for context)", b.to_first_delta);
        println!("  stages (from the app's /metrics):");
        print_stages(&b.metrics_before, &b.metrics_after);
        println!(
            "  resident memory {:.1} MB before, {:.1} MB at the peak ({:.1} KB a stream, client side included); \
             pool connections in use at most {} of {}; server connections at most {}",
            b.rss_before as f64 / 1e6,
            b.peaks.rss as f64 / 1e6,
            b.peaks.rss.saturating_sub(b.rss_before) as f64 / 1e3 / args.concurrent.max(1) as f64,
            b.peaks.pool_in_use,
            app.pool().options().get_max_connections(),
            b.peaks.server_connections,
        );
    }
    println!("saved answers not whole: {incomplete}");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.shutdown().await;
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}
