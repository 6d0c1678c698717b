//! Against real models, when they run (`scripts/real-models`; README, "Real models"): the eval
//! documents uploaded over HTTP and ingested by the in-process worker with all-MiniLM-L6-v2
//! embeddings, searched over HTTP, and a question answered by SmolLM2-135M-Instruct through
//! llama.cpp's OpenAI-compatible server, streamed over SSE.
//!
//! Ignored by default (the models are not running in an ordinary test run); run it with
//! `cargo nextest run -p ragpipe-tests --test real_models --run-ignored only` after exporting
//! what `scripts/real-models` prints (`RAGPIPE_REAL_EMBEDDING_BASE_URL`,
//! `RAGPIPE_REAL_CHAT_BASE_URL`, and optionally `RAGPIPE_REAL_EMBEDDING_MODEL` and
//! `RAGPIPE_REAL_CHAT_MODEL`). Asked for without those variables, it fails and says why; it
//! never passes without having run. Everything else here is the product as deployed: the real API,
//! queue, workers, HTTP clients and the models' own servers.

mod agent_support;

use agent_support::{SseClient, SseEvent, delta_text, shape};
use ragpipe_agent::eval::{EvalQuestion, parse_questions};
use ragpipe_core::config::ModelEndpoint;
use ragpipe_tests::app::{TestApp, TestUser, UploadFile, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// MiniLM's vectors.
const EMBEDDING_DIM: u32 = 384;
/// MiniLM reads at most 256 word pieces; 200 cl100k tokens stay within that for English prose
/// (shared/FACTS.md: a longer input is embedded from its beginning only, silently).
const EMBEDDING_MAX_INPUT_TOKENS: u32 = 200;
/// Vector-mode recall@5 over the paraphrase questions that MiniLM must reach. They share few
/// words with their documents, which is where a semantic model earns its place: the offline
/// hashed embedder (lexical) reaches 0.739 on them (BENCHMARKS.md, "Search").
const PARAPHRASE_RECALL_FLOOR: f64 = 0.8;
/// The question answered, and its gold document.
const QUESTION: &str = "What should a client do after being told it is sending too many requests?";
const QUESTION_DOCUMENT: &str = "api-rate-limits.md";

/// The model servers, from the environment.
struct RealModels {
    embedding: ModelEndpoint,
    chat: ModelEndpoint,
}

impl RealModels {
    /// The endpoints, or why the test is skipped.
    fn from_env() -> Result<RealModels, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (Some(embedding_url), Some(chat_url)) = (
            var("RAGPIPE_REAL_EMBEDDING_BASE_URL"),
            var("RAGPIPE_REAL_CHAT_BASE_URL"),
        ) else {
            return Err(
                "RAGPIPE_REAL_EMBEDDING_BASE_URL and RAGPIPE_REAL_CHAT_BASE_URL are not both set \
                 (start the models with scripts/real-models and export what it prints)"
                    .into(),
            );
        };
        let defaults = ragpipe_core::Config::defaults();
        let mut embedding = defaults.embedding;
        embedding.base_url = Some(embedding_url);
        embedding.model = var("RAGPIPE_REAL_EMBEDDING_MODEL").unwrap_or_else(|| "all-MiniLM-L6-v2".into());
        embedding.dim = EMBEDDING_DIM;
        embedding.max_input_tokens = EMBEDDING_MAX_INPUT_TOKENS;
        // One CPU-bound server: concurrent requests only queue there.
        embedding.concurrency = 1;
        embedding.timeout_secs = 120;
        let mut chat = defaults.chat;
        chat.base_url = Some(chat_url);
        chat.model = var("RAGPIPE_REAL_CHAT_MODEL").unwrap_or_else(|| "SmolLM2-135M-Instruct".into());
        // SmolLM2's window is 8,192 of its own tokens; prompts are budgeted in cl100k tokens,
        // so leave room for the difference.
        chat.max_input_tokens = 4096;
        chat.max_output_tokens = 200;
        chat.timeout_secs = 300;
        Ok(RealModels { embedding, chat })
    }
}

fn eval_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/eval")
}

fn questions() -> Vec<EvalQuestion> {
    let text = std::fs::read_to_string(eval_dir().join("questions.jsonl")).expect("fixtures/eval/questions.jsonl");
    parse_questions(&text).expect("the question set parses")
}

/// Uploads every eval document in one request and waits until each is ready.
async fn ingest_eval_documents(app: &TestApp, user: &TestUser) -> Vec<String> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(eval_dir().join("documents"))
        .expect("fixtures/eval/documents")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in &entries {
        let name = path.file_name().and_then(|n| n.to_str()).expect("file name");
        files.push(UploadFile::new(name, std::fs::read(path).expect("reading a fixture")));
    }
    let (status, body) = app.upload_json(&user.key, files).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut names = Vec::new();
    for doc in body["documents"].as_array().expect("documents") {
        let id = doc["id"].as_str().expect("document id");
        // MiniLM on two cores embeds ~20 inputs/s; the set is a few dozen chunks.
        let done = app.wait_for_document(&user.key, id, Duration::from_secs(300)).await;
        assert_eq!(done["status"], "ready", "{done}");
        assert_eq!(done["embedding_model"], app.config.embedding.model.as_str(), "{done}");
        names.push(done["filename"].as_str().expect("filename").to_owned());
    }
    names
}

async fn search(app: &TestApp, user: &TestUser, query: &str, mode: &str, k: u32) -> Vec<Value> {
    let response = app
        .request(reqwest::Method::POST, &user.key, "/v1/search")
        .json(&json!({ "query": query, "mode": mode, "k": k }))
        .send()
        .await
        .expect("POST /v1/search");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["hits"].as_array().expect("hits").clone()
}

/// Every event of an answer's stream; a small model on a shared CPU may take a while before
/// its first token, so each event may take up to three minutes.
async fn all_events(sse: &mut SseClient) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        match sse.next_within(Duration::from_secs(180)).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return events,
            Err(()) => panic!("no event within 180 s; so far: {events:#?}"),
        }
    }
}

#[sqlx::test(migrations = false)]
#[ignore = "needs the real models of scripts/real-models running and their variables exported"]
async fn minilm_embeddings_and_smollm2_answers_through_the_whole_system(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let models = RealModels::from_env().unwrap_or_else(|why| panic!("real_models cannot run: {why}"));
    let (embedding, chat) = (models.embedding.clone(), models.chat.clone());
    let app = TestApp::builder(agent_support::pool(options, connect).await)
        .config(move |c| {
            c.embedding = embedding;
            c.chat = chat;
            c.worker.max_attempts = 3;
        })
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .with_task("agent worker", ragpipe_agent_worker::spawn)
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;

    // Ingest: every chunk embedded by MiniLM, 384-d unit vectors, the tokens the server
    // reported recorded as usage.
    let names = ingest_eval_documents(&app, &alice).await;
    let (models_seen, dims, chunks): (Vec<String>, Vec<i32>, i64) = sqlx::query_as(
        "SELECT array_agg(DISTINCT embedding_model), array_agg(DISTINCT vector_dims(embedding)), count(*) \
         FROM document_chunks",
    )
    .fetch_one(app.pool())
    .await
    .expect("reading chunks");
    assert_eq!(models_seen, std::slice::from_ref(&models.embedding.model));
    assert_eq!(dims, [EMBEDDING_DIM as i32]);
    assert!(
        chunks >= names.len() as i64,
        "{chunks} chunks for {} documents",
        names.len()
    );
    let (norm_min, norm_max): (f64, f64) = sqlx::query_as(
        "SELECT min(vector_norm(embedding::vector(384))), max(vector_norm(embedding::vector(384))) FROM document_chunks",
    )
    .fetch_one(app.pool())
    .await
    .expect("reading norms");
    assert!(
        (0.99..=1.01).contains(&norm_min) && (0.99..=1.01).contains(&norm_max),
        "MiniLM's vectors are normalised: {norm_min}..{norm_max}"
    );
    let (embedding_tokens,): (Option<i64>,) =
        sqlx::query_as("SELECT sum(prompt_tokens)::bigint FROM usage_events WHERE kind = 'embedding' AND model = $1")
            .bind(&models.embedding.model)
            .fetch_one(app.pool())
            .await
            .expect("reading usage");
    assert!(embedding_tokens.unwrap_or(0) > 0, "embedding usage recorded");

    // Search: MiniLM finds the documents of questions that share few words with them.
    let paraphrases: Vec<EvalQuestion> = questions()
        .into_iter()
        .filter(|q| q.kind == "paraphrase" && q.documents.iter().any(|d| names.contains(d)))
        .collect();
    assert!(paraphrases.len() >= 10, "{} paraphrase questions", paraphrases.len());
    let mut found = 0;
    let mut missed = Vec::new();
    for q in &paraphrases {
        let hits = search(&app, &alice, &q.question, "vector", 5).await;
        assert!(!hits.is_empty(), "{}: no hits", q.id);
        for h in &hits {
            let similarity = h["vector_similarity"].as_f64().expect("vector similarity");
            assert!((-1.0..=1.0001).contains(&similarity), "{h}");
        }
        if hits
            .iter()
            .any(|h| q.documents.iter().any(|d| h["filename"] == d.as_str()))
        {
            found += 1;
        } else {
            missed.push(q.id.clone());
        }
    }
    let recall = found as f64 / paraphrases.len() as f64;
    eprintln!(
        "MiniLM vector recall@5 on {} paraphrase questions: {recall:.3} (missed {missed:?})",
        paraphrases.len()
    );
    assert!(
        recall >= PARAPHRASE_RECALL_FLOOR,
        "vector recall@5 {recall:.3} < {PARAPHRASE_RECALL_FLOOR}; missed {missed:?}"
    );
    let hybrid = search(&app, &alice, QUESTION, "hybrid", 5).await;
    assert_eq!(hybrid[0]["filename"], QUESTION_DOCUMENT, "{hybrid:#?}");
    assert!(
        hybrid
            .iter()
            .any(|h| h["vector_rank"].is_i64() && h["text_rank"].is_i64()),
        "some hit is ranked by both legs: {hybrid:#?}"
    );

    // Ask: SmolLM2 answers over SSE from the retrieved passages.
    let response = app
        .request(reqwest::Method::POST, &alice.key, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .expect("POST /v1/conversations");
    let (status, conversation) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{conversation}");
    let conversation = conversation["id"].as_str().expect("conversation id").to_owned();
    let response = app
        .request(
            reqwest::Method::POST,
            &alice.key,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .header("accept", "text/event-stream")
        .json(&json!({ "content": QUESTION, "k": 4 }))
        .send()
        .await
        .expect("POST messages");
    assert_eq!(response.status(), StatusCode::OK);
    let events = all_events(&mut SseClient::new(response)).await;
    assert_eq!(
        shape(&events),
        ["message", "context", "delta*", "usage", "done"],
        "{events:#?}"
    );
    let message_id = events[0].json()["message_id"].as_str().expect("message id").to_owned();
    let context = events[1].json();
    let sources = context["sources"].as_array().expect("sources");
    assert!(
        sources.iter().any(|s| s["filename"] == QUESTION_DOCUMENT),
        "the gold document is in the context: {context}"
    );
    let text = delta_text(&events);
    assert!(!text.trim().is_empty(), "an answer");
    eprintln!("SmolLM2 answered: {text}");

    let usage = events.iter().find(|e| e.event == "usage").expect("usage").json();
    assert_eq!(usage["model"], models.chat.model.as_str(), "{usage}");
    // llama.cpp sends no usage while streaming; ragpipe counts the tokens itself.
    assert!(usage["prompt_tokens"].as_i64().unwrap_or(0) > 0, "{usage}");
    assert!(usage["completion_tokens"].as_i64().unwrap_or(0) > 0, "{usage}");
    let done = events.last().expect("done").json();
    assert_eq!(done["status"], "complete", "{done}");
    assert!(
        ["stop", "length"].contains(&done["finish_reason"].as_str().unwrap_or_default()),
        "{done}"
    );

    // The saved message is the streamed text, its citations the sources it cited by number.
    let (status, message) = app.get_json(&alice.key, &format!("/v1/messages/{message_id}")).await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], text.as_str());
    assert_eq!(message["model"], models.chat.model.as_str());
    let citations = message["citations"].as_array().expect("citations");
    assert_eq!(done["citations"], message["citations"]);
    let cited: HashSet<i64> = ragpipe_agent::sources::cited_numbers(&text)
        .into_iter()
        .map(i64::from)
        .filter(|n| sources.iter().any(|s| s["n"] == *n))
        .collect();
    let recorded: HashSet<i64> = citations.iter().filter_map(|c| c["n"].as_i64()).collect();
    assert_eq!(
        recorded, cited,
        "citations are the [n] markers that name a source: {message}"
    );
    for c in citations {
        let source = sources.iter().find(|s| s["n"] == c["n"]).expect("a numbered source");
        assert_eq!(source["chunk_id"], c["chunk_id"], "{c}");
        assert_eq!(source["filename"], c["filename"], "{c}");
    }

    // One chat usage event for the question, with the counted tokens.
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT model, prompt_tokens, completion_tokens FROM usage_events WHERE kind = 'chat'")
            .fetch_all(app.pool())
            .await
            .expect("reading usage");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, models.chat.model);
    assert_eq!(Some(rows[0].1), usage["prompt_tokens"].as_i64());
    app.shutdown().await;
}
