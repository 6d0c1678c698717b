//! A fleet on one database: two `ragpipe serve --no-workers` processes and three `ragpipe
//! worker` processes, spoken to over real HTTP. Documents are uploaded and questions asked
//! through both API processes; a worker is sent SIGTERM in the middle of an ingest and an API
//! process in the middle of an answer's event stream. Afterwards:
//! - every job ran once (the queue's rows, and the model calls made for each document and
//!   question), and every document is ready with one complete chunk set;
//! - every answer's event stream is complete and the same whichever API process serves it,
//!   including a stream begun on one process and resumed on the other with `Last-Event-ID`;
//! - the processes sent SIGTERM exited cleanly, having lost nothing: the ingest in flight
//!   finished, the answer being streamed completed, and the usage ledger equals the tokens the
//!   model server counted.

use ragpipe_core::UserId;
use ragpipe_store::{Store, api_keys, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route, ScriptedReply};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Documents uploaded (half through each API process): more than the workers' six slots
/// (three processes, concurrency 2), so some wait in the queue while a worker is stopped.
const DOCUMENTS: usize = 8;
/// How long each document's embedding call takes: long enough to send SIGTERM during one.
const EMBED_DELAY: Duration = Duration::from_millis(1500);
/// A generous bound on any one wait; nothing here is a performance threshold.
const DEADLINE: Duration = Duration::from_secs(120);

/// The answer every question gets: 32 deltas, 200 ms apart, so that a stream is still going
/// when a process serving it is told to stop, for longer than the three heartbeats (1 s each
/// here) after which the queue hands a silent worker's job to another.
fn scripted_answer() -> ScriptedReply {
    ScriptedReply::deltas((0..32).map(|i| format!("fleet{i} "))).with_delta_delay(Duration::from_millis(200))
}

/// A `ragpipe` process of the fleet, killed if the test ends (or fails) before it exits.
struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the process is running")
    }

    /// Sends SIGTERM.
    fn signal_term(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM sent to {}", self.name);
    }

    /// Waits for the process to exit.
    async fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        let waited = tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .unwrap_or_else(|_| panic!("{} exited after SIGTERM", self.name));
        waited.expect("join").expect("wait")
    }

    /// Sends SIGTERM and waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.wait().await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `ragpipe` configured for the test database and the model server, logging to `{name}.log`
/// in `logs`; it sends the model server the API key `fleet-{name}`, so the server's log tells
/// which process made a call.
fn ragpipe(url: &str, server: &OpenAiServer, logs: &Path, name: &str) -> Command {
    let embedding = server.embedding_endpoint();
    let chat = server.chat_endpoint();
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("a log file");
    let key = format!("fleet-{name}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragpipe"));
    command
        .env("DATABASE_URL", url)
        .env("RAGPIPE_EMBEDDING_BASE_URL", server.base_url())
        .env("RAGPIPE_EMBEDDING_MODEL", &embedding.model)
        .env("RAGPIPE_EMBEDDING_DIM", embedding.dim.to_string())
        .env("RAGPIPE_EMBEDDING_API_KEY", &key)
        .env("RAGPIPE_CHAT_BASE_URL", server.base_url())
        .env("RAGPIPE_CHAT_MODEL", &chat.model)
        .env("RAGPIPE_CHAT_API_KEY", &key)
        .env("RAGPIPE_CHUNK_MAX_TOKENS", "200")
        .env("RAGPIPE_CHUNK_OVERLAP_TOKENS", "20")
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .env("RAGPIPE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    command
}

/// An API process and its base URL.
struct Api {
    process: Process,
    base: String,
}

fn start_api(url: &str, server: &OpenAiServer, logs: &Path, name: &str) -> Api {
    let listen = format!("127.0.0.1:{}", free_port());
    let ops = format!("127.0.0.1:{}", free_port());
    let child = ragpipe(url, server, logs, name)
        .args(["serve", "--no-workers", "--listen", &listen, "--ops-listen", &ops])
        .spawn()
        .expect("starting ragpipe serve");
    Api {
        process: Process {
            name: name.to_owned(),
            child: Some(child),
        },
        base: format!("http://{listen}"),
    }
}

/// A worker process and its operations address.
struct Worker {
    process: Process,
    ops: String,
    /// The `Authorization` header it sends to the model server.
    authorization: String,
}

fn start_worker(url: &str, server: &OpenAiServer, logs: &Path, name: &str) -> Worker {
    let ops = format!("127.0.0.1:{}", free_port());
    let child = ragpipe(url, server, logs, name)
        .args(["worker", "--metrics-listen", &ops])
        .spawn()
        .expect("starting ragpipe worker");
    Worker {
        process: Process {
            name: name.to_owned(),
            child: Some(child),
        },
        ops,
        authorization: format!("Bearer fleet-{name}"),
    }
}

/// Waits until `url` answers 200.
async fn wait_ok(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == reqwest::StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The words only document `index` holds.
fn marker(index: usize) -> String {
    format!("fleetmark{index}x")
}

fn document_text(index: usize) -> String {
    let mut text = String::new();
    for p in 0..6 {
        text.push_str(&format!(
            "Part {p} of fleet manual {index} ({}). Workers take jobs from one queue; \
             API processes follow answers through the database and stream them to clients. \
             A process told to stop finishes what it holds.\n\n",
            marker(index)
        ));
    }
    text
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Reads an event stream incrementally (the stream is UTF-8; events end with a blank line).
struct SseReader {
    response: reqwest::Response,
    pending: Vec<u8>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), reqwest::StatusCode::OK, "an event stream");
        SseReader {
            response,
            pending: Vec::new(),
            buffer: String::new(),
        }
    }

    /// The next event, or None when the stream ended (cleanly or not).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Some(event);
                }
                continue;
            }
            match tokio::time::timeout(DEADLINE, self.response.chunk()).await {
                Err(_) => panic!("no event within {DEADLINE:?}"),
                Ok(Ok(Some(bytes))) => {
                    self.pending.extend_from_slice(&bytes);
                    let valid = match std::str::from_utf8(&self.pending) {
                        Ok(_) => self.pending.len(),
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(e) => panic!("the event stream is not UTF-8: {e}"),
                    };
                    let done: Vec<u8> = self.pending.drain(..valid).collect();
                    let text = String::from_utf8(done).expect("checked to be UTF-8 above");
                    self.buffer.push_str(&text.replace("\r\n", "\n"));
                }
                Ok(Ok(None)) | Ok(Err(_)) => return None,
            }
        }
    }

    async fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn delta_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.json()["text"].as_str().expect("delta text").to_owned())
        .collect()
}

/// The events other than deltas, as (name, id, data): what every replay must agree on.
fn framing(events: &[SseEvent]) -> Vec<(String, Option<String>, Value)> {
    events
        .iter()
        .filter(|e| e.event != "delta")
        .map(|e| (e.event.clone(), e.id.clone(), e.json()))
        .collect()
}

/// The HTTP client of one user against the API processes.
struct Client {
    http: reqwest::Client,
    key: String,
}

impl Client {
    fn request(&self, method: reqwest::Method, api: &Api, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", api.base))
            .bearer_auth(&self.key)
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
        let response = request.send().await.expect("an HTTP answer");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Uploads one text file through `api`; returns the new document's id.
    async fn upload(&self, api: &Api, name: &str, text: &str) -> String {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(text.as_bytes().to_vec()).file_name(name.to_owned()),
        );
        let (status, body) = self
            .json(
                self.request(reqwest::Method::POST, api, "/v1/documents")
                    .multipart(form),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        body["documents"][0]["id"].as_str().expect("a document id").to_owned()
    }

    async fn document(&self, api: &Api, id: &str) -> Value {
        let (status, body) = self
            .json(self.request(reqwest::Method::GET, api, &format!("/v1/documents/{id}")))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        body
    }

    async fn conversation(&self, api: &Api) -> String {
        let (status, body) = self
            .json(
                self.request(reqwest::Method::POST, api, "/v1/conversations")
                    .json(&serde_json::json!({})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("a conversation id").to_owned()
    }

    /// Asks through `api` with `Accept: text/event-stream`; returns the stream and the answer's
    /// message id (from its first event, which is read).
    async fn ask_stream(&self, api: &Api, conversation: &str, question: &str) -> (SseReader, Vec<SseEvent>, String) {
        let response = self
            .request(
                reqwest::Method::POST,
                api,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .header("accept", "text/event-stream")
            .json(&serde_json::json!({ "content": question }))
            .send()
            .await
            .expect("POST messages");
        let mut sse = SseReader::new(response);
        let first = sse.next().await.expect("a first event");
        assert_eq!(first.event, "message", "{first:?}");
        let message = first.json()["message_id"].as_str().expect("message id").to_owned();
        (sse, vec![first], message)
    }

    /// `GET /v1/messages/{id}/events` through `api`, after `last_event_id` when given.
    async fn events(&self, api: &Api, message: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = self
            .request(reqwest::Method::GET, api, &format!("/v1/messages/{message}/events"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        SseReader::new(request.send().await.expect("GET events"))
    }
}

/// Reads events until `n` deltas have arrived (or the stream ends).
async fn read_deltas(sse: &mut SseReader, events: &mut Vec<SseEvent>, n: usize) {
    while events.iter().filter(|e| e.event == "delta").count() < n {
        match sse.next().await {
            Some(e) => events.push(e),
            None => return,
        }
    }
}

/// Checks a whole stream: message, context, deltas, usage, done (complete), with `text`.
fn assert_complete(events: &[SseEvent], text: &str, what: &str) {
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|n| *n != "delta")
        .collect();
    assert_eq!(names, ["message", "context", "usage", "done"], "{what}: {events:#?}");
    assert_eq!(
        events.last().map(|e| e.json()["status"].clone()),
        Some("complete".into()),
        "{what}"
    );
    assert_eq!(delta_text(events), text, "{what}: the answer's text, whole and once");
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ragpipe-{prefix}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

/// Waits for `check` to return `Ok`, polling; panics with its last state at the deadline.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check().await {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The queue's rows: (queue, status, attempts, worker that ran it) by job id.
async fn jobs(pool: &PgPool) -> BTreeMap<String, (String, String, i32, Option<String>)> {
    let rows: Vec<(String, String, String, i32, Option<String>)> =
        sqlx::query_as("SELECT id::text, job_type, status, attempts, lock_by FROM apalis.jobs")
            .fetch_all(pool)
            .await
            .expect("reading the queue");
    rows.into_iter()
        .map(|(id, queue, status, attempts, by)| (id, (queue, status, attempts, by)))
        .collect()
}

/// The process id in a worker name (`{kind}-{pid}-{suffix}`, `jobs::worker_name`).
fn worker_pid(name: &str) -> Option<u32> {
    name.split('-').nth(1).and_then(|p| p.parse().ok())
}

#[sqlx::test(migrations = false)]
async fn a_fleet_runs_every_job_once_streams_every_answer_whole_and_loses_nothing_to_sigterm(pool: PgPool) {
    let server = OpenAiServer::start().await;
    server.set_default_reply(scripted_answer());
    let full_text = scripted_answer().full_text();
    let store = Store::from_pool(pool.clone());
    let mut config = ragpipe_core::Config::defaults();
    config.embedding = server.embedding_endpoint();
    store.migrate(&config.embedding).await.expect("migrate");
    let user = users::create(
        &store,
        &users::NewUser {
            email: "fleet@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .expect("creating a user");
    let user = UserId(user.id);
    let key = api_keys::create(&store, user, Some("fleet")).await.expect("an API key");
    let client = Client {
        http: reqwest::Client::new(),
        key: key.key,
    };

    let url = database_url(&pool);
    let logs = tempdir("fleet-logs");
    eprintln!("fleet: process logs in {}", logs.display());
    let mut apis = [
        start_api(&url, &server, &logs, "api-a"),
        start_api(&url, &server, &logs, "api-b"),
    ];
    let mut workers: Vec<Worker> = (0..3)
        .map(|n| start_worker(&url, &server, &logs, &format!("worker-{n}")))
        .collect();
    // Ready as a load balancer asks it: an API-only process has no workers to wait for.
    for api in &apis {
        wait_ok(&client.http, &format!("{}/readyz", api.base)).await;
    }
    for w in &workers {
        wait_ok(&client.http, &format!("http://{}/readyz", w.ops)).await;
    }

    // Ingest: every document's embedding call is slow, so the workers are mid-ingest for a
    // while; half the documents go through each API process.
    server.inject(Route::Embeddings, Fault::Delay(EMBED_DELAY), DOCUMENTS);
    let mut documents = Vec::new();
    for i in 0..DOCUMENTS {
        let api = &apis[i % 2];
        let id = client.upload(api, &format!("manual-{i}.txt"), &document_text(i)).await;
        documents.push((i, id));
    }
    // SIGTERM the first worker seen inside an embedding call.
    let deadline = Instant::now() + DEADLINE;
    let (victim, in_flight) = loop {
        let calls = server.requests_to(Route::Embeddings);
        let found = calls.iter().find_map(|r| {
            let w = workers
                .iter()
                .position(|w| r.authorization.as_deref() == Some(w.authorization.as_str()))?;
            let i = (0..DOCUMENTS).find(|i| r.body.to_string().contains(&marker(*i)))?;
            r.usage.is_none().then_some((w, i))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            calls.len() < DOCUMENTS && Instant::now() < deadline,
            "no worker was seen inside an embedding call: {} calls",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim_pid = workers[victim].process.pid();
    let exit = workers[victim].process.terminate().await;
    assert!(
        exit.success(),
        "the worker sent SIGTERM mid-ingest exited cleanly: {exit:?}"
    );
    eprintln!("fleet: worker-{victim} (pid {victim_pid}) stopped while embedding manual-{in_flight}");

    for (i, id) in &documents {
        let api = &apis[(i + 1) % 2];
        wait_until(&format!("manual-{i} ready"), || async {
            let doc = client.document(api, id).await;
            match doc["status"].as_str() {
                Some("ready") => Ok(()),
                Some("failed") => panic!("manual-{i} failed: {doc}"),
                _ => Err(doc.to_string()),
            }
        })
        .await;
    }

    // Questions. First: asked through A, read whole from A, replayed whole from B.
    let conversation = client.conversation(&apis[0]).await;
    let (mut sse, mut first, first_message) = client
        .ask_stream(&apis[0], &conversation, "How do workers share the queue?")
        .await;
    first.extend(sse.rest().await);
    assert_complete(&first, &full_text, "an answer streamed by A");
    let replayed = client.events(&apis[1], &first_message, None).await.rest().await;
    assert_complete(&replayed, &full_text, "the same answer replayed by B");
    assert_eq!(
        framing(&replayed),
        framing(&first),
        "the same events from either process"
    );

    // Second: asked through B, resumed mid-answer on A with Last-Event-ID.
    let conversation = client.conversation(&apis[1]).await;
    let (mut sse, mut begun, second_message) = client
        .ask_stream(&apis[1], &conversation, "What does a stopping process do?")
        .await;
    read_deltas(&mut sse, &mut begun, 3).await;
    drop(sse);
    let last = begun.last().and_then(|e| e.id.clone()).expect("an event id");
    let resumed = client.events(&apis[0], &second_message, Some(&last)).await.rest().await;
    let mut second = begun.clone();
    second.extend(resumed);
    assert_complete(&second, &full_text, "an answer begun on B and resumed on A");
    let replayed = client.events(&apis[1], &second_message, None).await.rest().await;
    assert_eq!(
        framing(&replayed),
        framing(&second),
        "the same events from either process"
    );
    assert_eq!(delta_text(&replayed), full_text);

    // Third: asked through A, which is sent SIGTERM mid-stream; the client resumes on B.
    let conversation = client.conversation(&apis[0]).await;
    let (mut sse, mut begun, third_message) = client
        .ask_stream(&apis[0], &conversation, "How do API processes follow answers?")
        .await;
    read_deltas(&mut sse, &mut begun, 3).await;
    apis[0].process.signal_term();
    begun.extend(sse.rest().await);
    let exit = apis[0].process.wait().await;
    assert!(
        exit.success(),
        "the API process sent SIGTERM mid-stream exited cleanly: {exit:?}"
    );
    assert!(
        !begun.iter().any(|e| e.event == "done"),
        "the stream on the stopping process ended before the answer did: {begun:#?}"
    );
    let last = begun.last().and_then(|e| e.id.clone()).expect("an event id");
    let resumed = client.events(&apis[1], &third_message, Some(&last)).await.rest().await;
    let mut third = begun.clone();
    third.extend(resumed);
    assert_complete(&third, &full_text, "an answer begun on A (stopped) and resumed on B");

    // Fourth: asked through B; the worker streaming the answer is sent SIGTERM mid-answer, and
    // finishes the answer before it exits.
    let conversation = client.conversation(&apis[1]).await;
    let (mut sse, mut fourth, _) = client
        .ask_stream(&apis[1], &conversation, "Who finishes an answer?")
        .await;
    read_deltas(&mut sse, &mut fourth, 3).await;
    let writer = server
        .requests_to(Route::ChatCompletions)
        .iter()
        .rev()
        .filter(|r| r.usage.is_none())
        .find_map(|r| {
            workers
                .iter()
                .position(|w| w.process.child.is_some() && r.authorization.as_deref() == Some(w.authorization.as_str()))
        })
        .expect("a running worker is streaming the answer");
    let writer_pid = workers[writer].process.pid();
    workers[writer].process.signal_term();
    fourth.extend(sse.rest().await);
    let exit = workers[writer].process.wait().await;
    assert!(
        exit.success(),
        "the worker sent SIGTERM mid-answer exited cleanly: {exit:?}"
    );
    assert_complete(
        &fourth,
        &full_text,
        "an answer whose worker was sent SIGTERM mid-answer",
    );
    eprintln!("fleet: worker-{writer} (pid {writer_pid}) stopped while streaming an answer");

    // What is left of the fleet (one API process, one worker) still answers.
    let conversation = client.conversation(&apis[1]).await;
    let (mut sse, mut fifth, _) = client
        .ask_stream(&apis[1], &conversation, "Does the fleet lose anything?")
        .await;
    fifth.extend(sse.rest().await);
    assert_complete(&fifth, &full_text, "an answer after the stops");
    let questions = 5;

    // Every job ran once, to completion. An answer's job is run by one attempt. An ingest job
    // may count two: a worker fetches a batch of jobs (as many as its slots) and one of them can
    // still be waiting for a slot when the worker is stopped; the queue then hands it back
    // unstarted and counts that as an attempt. That it ran once is shown by what a run leaves:
    // each run writes its chunk set anew (new chunk ids, below) and each answer asks the model.
    let queue = jobs(&pool).await;
    let count = |q: &str| queue.values().filter(|(queue, ..)| queue == q).count();
    assert_eq!(count(ragpipe_store::jobs::INGEST_QUEUE), DOCUMENTS, "{queue:#?}");
    assert_eq!(count(ragpipe_store::jobs::AGENT_QUEUE), questions, "{queue:#?}");
    for (id, (q, status, attempts, _)) in &queue {
        let most = if q == ragpipe_store::jobs::AGENT_QUEUE { 1 } else { 2 };
        assert!(
            status == "Done" && (1..=most).contains(attempts),
            "job {id} of {q} succeeded at its first run: {queue:#?}"
        );
    }
    // The jobs the stopped workers were running finished there.
    for (pid, queue_name) in [
        (victim_pid, ragpipe_store::jobs::INGEST_QUEUE),
        (writer_pid, ragpipe_store::jobs::AGENT_QUEUE),
    ] {
        let finished_there = queue
            .values()
            .filter(|(q, _, _, by)| q == queue_name && by.as_deref().and_then(worker_pid) == Some(pid))
            .count();
        assert!(
            finished_there > 0,
            "the worker stopped mid-job (pid {pid}) finished its {queue_name} job: {queue:#?}"
        );
    }

    // One embedding call per document (its chunks fit one call), one chat call per question.
    let embedding_calls = server.requests_to(Route::Embeddings);
    for (i, _) in &documents {
        let calls = embedding_calls
            .iter()
            .filter(|r| r.body.to_string().contains(&marker(*i)))
            .count();
        assert_eq!(calls, 1, "manual-{i} was embedded once");
    }
    assert_eq!(server.requests_to(Route::ChatCompletions).len(), questions);

    // Every document has one complete chunk set.
    let chunk_sets: Vec<(String, i32, i64, i64, i32, i32, i64)> = sqlx::query_as(
        "SELECT d.filename, d.chunk_count, count(c.id), count(DISTINCT c.chunk_index), \
                coalesce(min(c.chunk_index), -1), coalesce(max(c.chunk_index), -1), count(c.embedding) \
         FROM documents d LEFT JOIN document_chunks c ON c.document_id = d.id \
         GROUP BY d.id, d.filename, d.chunk_count ORDER BY d.filename",
    )
    .fetch_all(&pool)
    .await
    .expect("reading chunk sets");
    assert_eq!(chunk_sets.len(), DOCUMENTS);
    for (name, chunk_count, rows, distinct, min, max, embedded) in &chunk_sets {
        assert!(*chunk_count > 0, "{name} has chunks");
        assert_eq!(
            (*rows, *distinct, *min, i64::from(*max) + 1, *embedded),
            (
                i64::from(*chunk_count),
                i64::from(*chunk_count),
                0,
                i64::from(*chunk_count),
                i64::from(*chunk_count)
            ),
            "{name}: chunks 0..{chunk_count}, each once, each embedded"
        );
    }
    // Chunk ids come from one sequence: every chunk set written once uses exactly as many ids
    // as there are chunks (a second run of an ingest job would write its chunk set again).
    let (ids_used, chunks): (Option<i64>, i64) = sqlx::query_as(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('document_chunks', 'id')::regclass), \
                (SELECT count(*) FROM document_chunks)",
    )
    .fetch_one(&pool)
    .await
    .expect("reading the chunk id sequence");
    assert_eq!(ids_used, Some(chunks), "each chunk set was written once");
    let index: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(chunks), 0)::bigint FROM search_corpus_stats), \
                (SELECT count(*) FROM document_chunks)",
    )
    .fetch_one(&pool)
    .await
    .expect("reading the search statistics");
    assert_eq!(index.0, index.1, "the search statistics count every chunk once");

    // Every answer is complete, once, in its message.
    let answers: Vec<(String, String)> =
        sqlx::query_as("SELECT status, content FROM copilot_messages WHERE role = 'assistant'")
            .fetch_all(&pool)
            .await
            .expect("reading answers");
    assert_eq!(answers.len(), questions);
    for (status, content) in &answers {
        assert_eq!((status.as_str(), content.as_str()), ("complete", full_text.as_str()));
    }

    // The ledger equals what the model server counted.
    let (embedding, chat): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens) FILTER (WHERE kind = 'embedding'), 0)::bigint, \
                coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE kind = 'chat'), 0)::bigint \
         FROM usage_events",
    )
    .fetch_one(&pool)
    .await
    .expect("summing the ledger");
    let billed_chat = server.billed(Route::ChatCompletions);
    assert_eq!(
        embedding as u64,
        server.billed(Route::Embeddings).prompt_tokens,
        "embedding tokens"
    );
    assert_eq!(
        chat as u64,
        billed_chat.prompt_tokens + billed_chat.completion_tokens,
        "chat tokens"
    );

    // The rest of the fleet stops as cleanly.
    for api in apis.iter_mut().filter(|a| a.process.child.is_some()) {
        let exit = api.process.terminate().await;
        assert!(exit.success(), "{} exited cleanly: {exit:?}", api.process.name);
    }
    for w in workers.iter_mut().filter(|w| w.process.child.is_some()) {
        let exit = w.process.terminate().await;
        assert!(exit.success(), "{} exited cleanly: {exit:?}", w.process.name);
    }
    let _ = std::fs::remove_dir_all(&logs);
}
