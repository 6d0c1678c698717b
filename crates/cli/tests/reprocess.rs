//! `ragpipe reprocess`, the real binary against a real database: re-chunking with search
//! running throughout, moving to an embedding model of another dimension (with the new model's
//! vector index built once at the end while search answers), an interrupted run continued, the
//! dry run, and the embedding cache paying once per text.

use ragpipe_agent::{Retriever, SearchMode, SearchRequest};
use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_ingest_worker::{IngestContext, Outcome, ingest_document};
use ragpipe_llm::Embedders;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::reprocess::{Pending, Stage};
use ragpipe_store::{Store, documents, users};
use ragpipe_tests::database_url;
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const WORDS: &[&str] = &[
    "river", "copper", "lantern", "harbor", "meadow", "signal", "granite", "orchard", "compass", "timber", "falcon",
    "glacier", "prairie", "beacon", "canyon", "willow", "ember", "summit", "quarry", "delta", "thistle", "cobalt",
    "monsoon", "pylon", "saddle", "tundra", "vessel", "zephyr", "basalt", "cedar",
];

/// A Markdown document of `sections` sections with text drawn from `WORDS` by `seed`, and one
/// word no other document has (`marker(seed)`), so a search can aim at it.
fn document_text(seed: u64, sections: usize) -> String {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut text = format!("# Field notes {seed}\n\n{} opens the notes.\n\n", marker(seed));
    for s in 0..sections {
        text.push_str(&format!("## Section {s}\n\n"));
        for _ in 0..6 {
            let sentence: Vec<&str> = (0..14).map(|_| WORDS[next() % WORDS.len()]).collect();
            text.push_str(&sentence.join(" "));
            text.push_str(".\n");
        }
        text.push('\n');
    }
    text
}

fn marker(seed: u64) -> String {
    format!("zqmarker{seed}")
}

/// A migrated database, a user, and `n` documents ingested with `config` (ready).
async fn corpus(
    pool: &PgPool,
    config: &Config,
    n: u64,
    sections: impl Fn(u64) -> usize,
) -> (Store, UserId, Vec<DocumentId>) {
    let store = Store::from_pool(pool.clone());
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "reprocess@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );
    let ctx = IngestContext::new(store.clone(), Arc::new(config.clone())).expect("context");
    let mut ids = Vec::new();
    for seed in 0..n {
        let bytes = document_text(seed, sections(seed)).into_bytes();
        let mut tx = store.user_tx(user).await.expect("tx");
        let stored = documents::create(
            &mut tx,
            &documents::NewDocument {
                filename: &format!("notes-{seed}.md"),
                content_type: "text/markdown",
                bytes: &bytes,
                sha256: Sha256::digest(&bytes).into(),
                metadata: serde_json::json!({}),
            },
            3,
        )
        .await
        .expect("upload");
        tx.commit().await.expect("commit");
        let id = DocumentId(stored.document.id);
        let outcome = ingest_document(&ctx, &IngestJob::upload(user, id), &format!("first-{seed}"))
            .await
            .expect("ingest");
        assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
        ids.push(id);
    }
    // The upload jobs are still queued; their documents are ready, so a worker skips them.
    (store, user, ids)
}

/// `ragpipe reprocess ARGS --json` against the test database, with `env` on top.
fn reprocess_command(pool: &PgPool, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragpipe"));
    command
        .arg("reprocess")
        .args(args)
        .arg("--json")
        .env("DATABASE_URL", database_url(pool))
        .env("RAGPIPE_WORKER_HEARTBEAT_SECS", "1")
        .env("RUST_LOG", "warn");
    // Without an embeddings server, the hashed embedder, pinned: with the local model installed
    // it would be the default.
    if !env.iter().any(|(k, _)| *k == "RAGPIPE_EMBEDDING_BASE_URL") {
        command.env("RAGPIPE_EMBEDDING_PROVIDER", "hashed");
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

async fn run_reprocess(pool: &PgPool, args: &[&str], env: &[(&str, String)]) -> (Output, Value) {
    let mut command = reprocess_command(pool, args, env);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run ragpipe reprocess");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, json)
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "ragpipe reprocess failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn doc(store: &Store, user: UserId, id: DocumentId) -> documents::Document {
    let mut tx = store.user_tx(user).await.expect("tx");
    let d = documents::get(&mut tx, id).await.expect("document");
    tx.commit().await.expect("commit");
    d
}

/// (rows, distinct chunk indexes, largest token count, models) of a document's chunks.
async fn chunk_stats(store: &Store, user: UserId, id: DocumentId) -> (i64, i64, i32, Vec<String>) {
    let mut tx = store.user_tx(user).await.expect("tx");
    let row: (i64, i64, i32, Vec<String>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT chunk_index), coalesce(max(token_count), 0), \
                coalesce(array_agg(DISTINCT embedding_model) FILTER (WHERE embedding_model IS NOT NULL), '{}') \
         FROM document_chunks WHERE document_id = $1",
    )
    .bind(id.0)
    .fetch_one(tx.conn())
    .await
    .expect("chunk stats");
    tx.commit().await.expect("commit");
    row
}

/// Usage events of origin `reprocess` per document.
async fn reprocess_events(store: &Store, user: UserId) -> std::collections::HashMap<uuid::Uuid, i64> {
    let mut tx = store.user_tx(user).await.expect("tx");
    let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        // Jobs, not events: a job records each model call as an event of its own, keyed
        // `ingest:{job}:call:{uuid}`, and what the cache served as `ingest:{job}`.
        "SELECT document_id, count(DISTINCT split_part(idempotency_key, ':', 2)) FROM usage_events \
         WHERE origin = 'reprocess' GROUP BY document_id",
    )
    .fetch_all(tx.conn())
    .await
    .expect("usage");
    tx.commit().await.expect("commit");
    rows.into_iter().collect()
}

/// Searches every document by its marker word, restricted to that document, until `stop`;
/// returns (searches, searches that found nothing, with which document).
fn search_throughout(
    retriever: Retriever,
    user: UserId,
    ids: Vec<DocumentId>,
    mode: SearchMode,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let searches = AtomicU64::new(0);
        let mut empty = Vec::new();
        loop {
            let last_round = stop.load(Ordering::SeqCst);
            for (seed, id) in ids.iter().enumerate() {
                let request = SearchRequest {
                    mode,
                    k: 3,
                    document_ids: vec![id.0],
                    ..SearchRequest::new(format!("{} notes", marker(seed as u64)))
                };
                match retriever.search(user, &request).await {
                    Ok(hits) if hits.is_empty() => empty.push(format!("document {seed} found nothing")),
                    Ok(_) => {}
                    Err(e) => empty.push(format!("document {seed}: {e}")),
                }
                searches.fetch_add(1, Ordering::Relaxed);
            }
            if last_round {
                break;
            }
        }
        (searches.into_inner(), empty)
    })
}

#[sqlx::test(migrations = false)]
async fn rechunking_gives_every_document_chunks_of_the_new_size_and_search_never_loses_one(pool: PgPool) {
    let config = Config::defaults();
    let (store, user, ids) = corpus(&pool, &config, 8, |_| 10).await;
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for id in &ids {
            let (rows, _, max_tokens, _) = chunk_stats(&store, user, *id).await;
            assert!(max_tokens > 128, "the first chunking used larger chunks");
            v.push(rows);
        }
        v
    };
    let retriever = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedders"));
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = search_throughout(
        retriever.clone(),
        user,
        ids.clone(),
        SearchMode::Hybrid,
        Arc::clone(&stop),
    );
    let text_searcher = search_throughout(retriever, user, ids.clone(), SearchMode::Text, Arc::clone(&stop));
    // The run keeps at most --max-in-flight of its documents in the queue at once.
    let in_flight = {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut most = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE reprocess IS NOT NULL")
                    .fetch_one(&pool)
                    .await
                    .expect("pending");
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };

    let (output, result) = run_reprocess(
        &pool,
        &[
            "--all",
            "--chunk-tokens",
            "128",
            "--overlap",
            "16",
            "--max-in-flight",
            "2",
        ],
        &[],
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    assert_success(&output);
    assert_eq!(result["finished"], 8, "{result}");
    assert_eq!(result["failed"], serde_json::json!([]));
    let most_in_flight = in_flight.await.expect("sampler");
    assert!(
        (1..=2).contains(&most_in_flight),
        "at most --max-in-flight 2 documents queued at once, saw {most_in_flight}"
    );
    for handle in [searcher, text_searcher] {
        let (searches, empty) = handle.await.expect("searcher");
        assert!(searches >= 16, "searched {searches} times");
        assert!(
            empty.is_empty(),
            "a document vanished from search during the run: {empty:?}"
        );
    }

    for (i, id) in ids.iter().enumerate() {
        let d = doc(&store, user, *id).await;
        assert_eq!(d.status, "ready");
        assert_eq!((d.chunk_max_tokens, d.chunk_overlap_tokens), (Some(128), Some(16)));
        assert_eq!(d.reprocess, None, "no pending run is left");
        let (rows, distinct, max_tokens, models) = chunk_stats(&store, user, *id).await;
        assert!(max_tokens <= 128, "document {i} has a chunk of {max_tokens} tokens");
        assert!(
            rows > before[i],
            "document {i}: {rows} chunks now, {} before",
            before[i]
        );
        assert_eq!(
            (rows, distinct),
            (i64::from(d.chunk_count), rows),
            "one whole chunk set"
        );
        assert_eq!(models, vec![config.embedding.model.clone()]);
    }
    let events = reprocess_events(&store, user).await;
    assert_eq!(events.len(), 8);
    assert!(events.values().all(|n| *n == 1), "{events:?}");

    // The same command again: nothing left to do.
    let (output, again) = run_reprocess(&pool, &["--all", "--chunk-tokens", "128", "--overlap", "16"], &[]).await;
    assert_success(&output);
    assert_eq!(again["enqueued"], 0, "{again}");
    assert_eq!(reprocess_events(&store, user).await.values().sum::<i64>(), 8);
}

/// A corpus of `n` documents on the default model, and a 48-dimension model served by a test
/// server, recorded as `ragpipe migrate` with that configuration records it (its index exists,
/// empty): the server, the old and new configurations, and the corpus.
async fn corpus_and_a_new_model(
    pool: &PgPool,
    n: u64,
) -> (OpenAiServer, Config, Config, Store, UserId, Vec<DocumentId>) {
    let server = OpenAiServer::start().await;
    server.set_embedding_dim(48);
    let old = Config::defaults();
    let (store, user, ids) = corpus(pool, &old, n, |_| 4).await;
    let mut new = old.clone();
    new.embedding = server.embedding_endpoint();
    assert_ne!(new.embedding.model, old.embedding.model);
    ragpipe_store::embedding_models::ensure(&store, &new.embedding.model, 48, new.embedding.base_url.as_deref())
        .await
        .expect("record the new model");
    (server, old, new, store, user, ids)
}

/// The environment of a `ragpipe` process configured with `config`'s embedding model, served
/// by `server`.
fn model_env(server: &OpenAiServer, config: &Config) -> [(&'static str, String); 3] {
    [
        ("RAGPIPE_EMBEDDING_BASE_URL", server.base_url().to_owned()),
        ("RAGPIPE_EMBEDDING_MODEL", config.embedding.model.clone()),
        ("RAGPIPE_EMBEDDING_DIM", config.embedding.dim.to_string()),
    ]
}

#[sqlx::test(migrations = false)]
async fn moving_to_a_model_of_another_dimension_keeps_both_searchable_then_only_the_new_one_remains(pool: PgPool) {
    let (server, old, new, store, user, ids) = corpus_and_a_new_model(&pool, 6).await;
    let new_model = new.embedding.model.clone();

    // Half the documents move first (as a run's jobs would, one by one)...
    let ctx = IngestContext::new(store.clone(), Arc::new(new.clone())).expect("context");
    for id in &ids[..3] {
        let pending = Pending {
            run: "halfway".into(),
            stage: Stage::Embed,
            chunk_max_tokens: old.chunking.max_tokens,
            chunk_overlap_tokens: old.chunking.overlap_tokens,
            embedding_model: new_model.clone(),
            by_owner: false,
            error: None,
        };
        ragpipe_store::reprocess::mark_many(&store, user, &[(*id, pending)], 3)
            .await
            .expect("mark");
        let job = IngestJob {
            user_id: user,
            document_id: *id,
            reprocess: Some("halfway".into()),
        };
        let outcome = ingest_document(&ctx, &job, &format!("half-{}", id.0))
            .await
            .expect("re-embed");
        assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
    }
    // ...and in the middle of the migration both models' chunks are found by vector search,
    // each ranked with the query embedded by its own model, whichever model a process is
    // configured with.
    for config in [&old, &new] {
        let retriever = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedders"))
            .with_models_refresh(Duration::ZERO);
        for (seed, id) in ids.iter().enumerate() {
            let (_, _, _, models) = chunk_stats(&store, user, *id).await;
            let expected = if seed < 3 { &new_model } else { &old.embedding.model };
            assert_eq!(&models, &vec![expected.clone()]);
            let request = SearchRequest {
                mode: SearchMode::Vector,
                k: 2,
                document_ids: vec![id.0],
                ..SearchRequest::new(marker(seed as u64))
            };
            let hits = retriever.search(user, &request).await.expect("search");
            assert!(
                !hits.is_empty(),
                "document {seed} ({expected}) not found by a {} process",
                config.embedding.model
            );
            assert!(hits.iter().all(|h| h.vector_similarity.is_some()));
        }
    }

    // The rest through the command, configured with the new model: it leaves no chunk on the old.
    let env = model_env(&server, &new);
    let (output, result) = run_reprocess(&pool, &["--all"], &env).await;
    assert_success(&output);
    assert_eq!(
        result["enqueued"], 3,
        "the three documents already moved are skipped: {result}"
    );
    assert_eq!(
        chunks_not_on(&pool, &new_model).await,
        0,
        "chunks left on the old model"
    );
    let dims: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT vector_dims(embedding) FROM document_chunks")
        .fetch_all(&pool)
        .await
        .expect("dims");
    assert_eq!(dims, vec![48]);
    // Re-embedding kept every chunk: same texts, same count, search statistics untouched.
    for id in &ids {
        let d = doc(&store, user, *id).await;
        assert_eq!(d.embedding_model.as_deref(), Some(new_model.as_str()));
    }

    // Hybrid search, even from a process still configured with the old model, now ranks the new
    // model's vectors.
    let retriever = Retriever::new(store.clone(), Embedders::new(&old.embedding).expect("embedders"))
        .with_models_refresh(Duration::ZERO);
    let hits = retriever
        .search(user, &SearchRequest::new(format!("{} notes", marker(4))))
        .await
        .expect("search");
    assert_eq!(hits[0].document_id, ids[4].0);
    assert!(
        hits.iter().any(|h| h.vector_rank.is_some()),
        "the vector leg ranked nothing"
    );
    let embedded_queries = server
        .requests_to(Route::Embeddings)
        .iter()
        .filter(|r| {
            r.body["input"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0].as_str().is_some_and(|t| t.contains("zqmarker4")))
        })
        .count();
    assert!(embedded_queries >= 1, "the query was embedded by the new model");
}

/// Chunks whose vectors are not by `model`.
async fn chunks_not_on(pool: &PgPool, model: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM document_chunks WHERE embedding_model <> $1")
        .bind(model)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The OID of `model`'s vector index, if it has one.
async fn index_oid(pool: &PgPool, model: &str, dim: u32) -> Option<i64> {
    sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(ragpipe_store::embedding_models::index_name(model, dim))
        .fetch_one(pool)
        .await
        .expect("index oid")
}

#[sqlx::test(migrations = false)]
async fn a_corpus_moving_to_a_model_without_chunks_gets_its_index_built_once_and_search_answers_throughout(
    pool: PgPool,
) {
    // The new model is recorded as `ragpipe migrate` records it: its index exists, empty.
    let (server, old, new, store, user, _) = corpus_and_a_new_model(&pool, 8).await;
    let new_model = new.embedding.model.clone();
    let empty_index = index_oid(&pool, &new_model, 48).await.expect("the new model's index");
    let old_index = index_oid(&pool, &old.embedding.model, old.embedding.dim).await;

    // Unfiltered vector searches run all along, from a process configured with the new model:
    // while the new model has chunks and no index, its leg computes each distance.
    let stop = Arc::new(AtomicBool::new(false));
    let searching = {
        let retriever = Retriever::new(store.clone(), Embedders::new(&new.embedding).expect("embedders"))
            .with_models_refresh(Duration::ZERO);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut searches = 0u64;
            loop {
                let last_round = stop.load(Ordering::SeqCst);
                for seed in 0..8u64 {
                    let request = SearchRequest {
                        mode: SearchMode::Vector,
                        k: 3,
                        ..SearchRequest::new(format!("{} notes", marker(seed)))
                    };
                    match retriever.search(user, &request).await {
                        Ok(hits) if hits.is_empty() => failures.push(format!("{seed}: nothing found")),
                        Ok(_) => {}
                        Err(e) => failures.push(format!("{seed}: {e}")),
                    }
                    searches += 1;
                }
                if last_round {
                    break;
                }
            }
            (searches, failures)
        })
    };
    let env = model_env(&server, &new);
    let (output, result) = run_reprocess(&pool, &["--all", "--index-memory", "128MB"], &env).await;
    stop.store(true, Ordering::SeqCst);
    let (searches, failures) = searching.await.expect("searches");
    assert_success(&output);
    assert!(failures.is_empty(), "searches failed during the move: {failures:?}");
    assert!(searches >= 8, "{searches} searches");

    // The index was left out while the vectors were written and built once at the end: a new
    // index, valid, over every chunk.
    assert_eq!(result["index_deferred"], true, "{result}");
    assert!(result["index_build_seconds"].is_f64(), "{result}");
    let built = index_oid(&pool, &new_model, 48).await.expect("the index after the run");
    assert_ne!(built, empty_index, "the empty index was dropped and built again");
    assert_eq!(
        ragpipe_store::embedding_models::index_state(&store, &new_model, 48)
            .await
            .expect("state"),
        ragpipe_store::embedding_models::IndexState::Valid
    );
    assert_eq!(
        chunks_not_on(&pool, &new_model).await,
        0,
        "chunks left on the old model"
    );
    assert_eq!(
        index_oid(&pool, &old.embedding.model, old.embedding.dim).await,
        old_index,
        "the old model's index is kept"
    );
    // A second move, now that the model has chunks, keeps the index as it is.
    let (output, result) = run_reprocess(&pool, &["--all", "--stage", "embed"], &env).await;
    assert_success(&output);
    assert_eq!(result["index_deferred"], false, "{result}");
    assert_eq!(index_oid(&pool, &new_model, 48).await, Some(built));
}

#[sqlx::test(migrations = false)]
async fn an_interrupted_run_continues_where_it_stopped_without_doing_anything_twice(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let (store, user, ids) = corpus(&pool, &config, 10, |_| 4).await;
    // Each embedding call of the run now takes 300 ms, so it is still going when it is killed.
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_millis(300)), 1000);
    let endpoint = server.embedding_endpoint();
    let env = [
        ("RAGPIPE_EMBEDDING_BASE_URL", server.base_url().to_owned()),
        ("RAGPIPE_EMBEDDING_MODEL", endpoint.model.clone()),
        ("RAGPIPE_EMBEDDING_DIM", endpoint.dim.to_string()),
    ];
    let args = [
        "--all",
        "--chunk-tokens",
        "96",
        "--overlap",
        "8",
        "--max-in-flight",
        "2",
    ];
    let mut child = Reaped(
        reprocess_command(&pool, &args, &env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start"),
    );
    // Kill it once three documents are done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let done_before_kill = loop {
        let done: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM documents WHERE last_reprocess_run IS NOT NULL")
            .fetch_all(&pool)
            .await
            .expect("done");
        if done.len() >= 3 {
            child.0.kill().expect("SIGKILL");
            child.0.wait().expect("reap");
            break done;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done_at_kill: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE last_reprocess_run IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(done_at_kill < 10, "the run was interrupted before the end");
    let events_at_kill = reprocess_events(&store, user).await;

    let (output, result) = run_reprocess(&pool, &args, &env).await;
    assert_success(&output);
    assert!(
        result["enqueued"]
            .as_u64()
            .is_some_and(|n| n <= 10 - done_before_kill.len() as u64),
        "documents finished before the kill are not enqueued again: {result}"
    );
    let events = reprocess_events(&store, user).await;
    for (i, id) in ids.iter().enumerate() {
        let d = doc(&store, user, *id).await;
        assert_eq!(d.chunk_max_tokens, Some(96), "document {i}");
        assert_eq!(d.reprocess, None, "document {i}");
        let (rows, distinct, max_tokens, _) = chunk_stats(&store, user, *id).await;
        assert_eq!(
            (rows, distinct),
            (i64::from(d.chunk_count), rows),
            "document {i}: one chunk set"
        );
        assert!(max_tokens <= 96);
        let n = events.get(&id.0).copied().unwrap_or(0);
        if done_before_kill.contains(&id.0) {
            assert_eq!(n, 1, "document {i} was done before the kill and not processed again");
            assert_eq!(events_at_kill.get(&id.0), Some(&1));
        } else {
            // A job in flight when the worker died is done again by the next; nothing more.
            assert!((1..=2).contains(&n), "document {i} processed {n} times");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_dry_run_changes_nothing_and_its_estimate_counts_what_the_cache_does_not_have(pool: PgPool) {
    let config = Config::defaults();
    let (store, user, ids) = corpus(&pool, &config, 4, |_| 6).await;
    let snapshot = |pool: PgPool| async move {
        let docs: Vec<DocumentRow> = sqlx::query_as(
            "SELECT id, status, chunk_count, chunk_max_tokens, reprocess, last_reprocess_run FROM documents ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("documents");
        let chunks: Vec<i64> = sqlx::query_scalar("SELECT id FROM document_chunks ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("chunks");
        let counts: (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM apalis.jobs), (SELECT count(*) FROM usage_events), \
                    (SELECT count(*) FROM embedding_cache)",
        )
        .fetch_one(&pool)
        .await
        .expect("counts");
        (docs, chunks, counts)
    };
    let before = snapshot(pool.clone()).await;
    let (output, plan) = run_reprocess(
        &pool,
        &["--all", "--chunk-tokens", "200", "--overlap", "20", "--dry-run"],
        &[],
    )
    .await;
    assert_success(&output);
    assert_eq!(snapshot(pool.clone()).await, before, "the dry run changed something");
    assert_eq!(plan["selected"], 4, "{plan}");
    assert_eq!(plan["stages"]["chunk"]["documents"], 4, "{plan}");
    let to_embed = plan["stages"]["chunk"]["chunks_to_embed"].as_u64().expect("estimate");
    let chunks = plan["stages"]["chunk"]["chunks"].as_u64().expect("chunks");
    assert!(to_embed > 0 && to_embed <= chunks, "{plan}");
    assert!(plan["tokens_to_embed"].as_u64().is_some_and(|t| t > 0), "{plan}");

    // After the run, re-extracting with the same settings needs no model call: the estimate
    // says 0, and the run sends nothing, its usage events showing the tokens the cache served.
    let (output, _) = run_reprocess(&pool, &["--all", "--chunk-tokens", "200", "--overlap", "20"], &[]).await;
    assert_success(&output);
    let (output, plan) = run_reprocess(
        &pool,
        &[
            "--all",
            "--chunk-tokens",
            "200",
            "--overlap",
            "20",
            "--stage",
            "extract",
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert_success(&output);
    assert_eq!(plan["stages"]["extract"]["documents"], 4, "{plan}");
    assert_eq!(plan["stages"]["extract"]["chunks_to_embed"], 0, "{plan}");
    assert_eq!(plan["tokens_to_embed"], 0, "{plan}");
    let _ = (store, user, ids);
}

#[sqlx::test(migrations = false)]
async fn the_cache_sends_only_changed_chunk_texts_to_the_model_and_usage_shows_it(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    // Three short documents (one chunk at either size: their text survives the re-chunking)
    // and three long ones (every chunk changes).
    let (store, user, ids) = corpus(&pool, &config, 6, |seed| if seed < 3 { 1 } else { 12 }).await;
    let old_texts: std::collections::HashSet<String> = sqlx::query_scalar("SELECT content FROM document_chunks")
        .fetch_all(&pool)
        .await
        .expect("texts")
        .into_iter()
        .collect();
    let inputs_before = embedded_inputs(&server);
    let env = model_env(&server, &config);
    // Re-extracting with the same settings: every text is cached; nothing is sent.
    let (output, _) = run_reprocess(&pool, &["--all", "--stage", "extract"], &env).await;
    assert_success(&output);
    assert_eq!(
        embedded_inputs(&server),
        inputs_before,
        "a re-extraction sent cached texts"
    );
    let (prompt, cached): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens), 0)::int8, coalesce(sum(cached_tokens), 0)::int8 \
         FROM usage_events WHERE origin = 'reprocess'",
    )
    .fetch_one(&pool)
    .await
    .expect("usage");
    let stored_tokens: i64 = sqlx::query_scalar("SELECT sum(token_count)::int8 FROM document_chunks")
        .fetch_one(&pool)
        .await
        .expect("tokens");
    assert_eq!((prompt, cached), (0, stored_tokens));

    // Re-chunking: exactly the texts that are new are sent, each once.
    let (output, _) = run_reprocess(&pool, &["--all", "--chunk-tokens", "256", "--overlap", "0"], &env).await;
    assert_success(&output);
    let new_texts: std::collections::HashSet<String> = sqlx::query_scalar("SELECT content FROM document_chunks")
        .fetch_all(&pool)
        .await
        .expect("texts")
        .into_iter()
        .collect();
    let changed = new_texts.difference(&old_texts).count();
    let unchanged = new_texts.intersection(&old_texts).count();
    assert!(changed > 0 && unchanged > 0, "changed {changed}, unchanged {unchanged}");
    assert_eq!(
        embedded_inputs(&server) - inputs_before,
        changed,
        "inputs sent for the re-chunking"
    );
    let cached_now: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(cached_tokens), 0)::int8 FROM usage_events WHERE origin = 'reprocess'")
            .fetch_one(&pool)
            .await
            .expect("usage");
    assert!(
        cached_now > cached,
        "the re-chunking's usage events show the tokens the cache served"
    );
    let _ = (store, user, ids);
}

/// A document's state as the dry run must leave it: id, status, chunk count, chunk size,
/// pending run, last run.
type DocumentRow = (uuid::Uuid, String, i32, Option<i32>, Option<Value>, Option<String>);

/// A child process killed and reaped when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Inputs the test server has embedded so far.
fn embedded_inputs(server: &OpenAiServer) -> usize {
    server
        .requests_to(Route::Embeddings)
        .iter()
        .map(|r| r.body["input"].as_array().map_or(1, Vec::len))
        .sum()
}

/// `ragpipe reprocess` moves a corpus to the local model and back like any other model. Chunks
/// cut for the hashed embedder (512 cl100k tokens) are longer than MiniLM reads (256 word
/// pieces), so the move cuts them again for it rather than embed them cut; the way back
/// re-embeds them as they are. Usage records the model's word pieces at no cost.
#[sqlx::test(migrations = false)]
async fn a_corpus_moves_to_the_local_model_and_back(pool: PgPool) {
    let hashed = Config::defaults();
    let (store, user, ids) = corpus(&pool, &hashed, 3, |_| 12).await;
    let dir = ragpipe_core::config::installed_local_model_dir(|n| std::env::var(n).ok())
        .unwrap_or_else(|why| panic!("{why}"));
    let mut local = hashed.clone();
    local.embedding.provider = Some("local".into());
    local.embedding.local_dir = Some(dir.clone());
    local.embedding.model = "all-MiniLM-L6-v2".into();
    let embedders = Embedders::new(&local.embedding).expect("the local model");
    let model = embedders.configured().local_model().expect("local").clone();
    let word_pieces = |pool: &PgPool| {
        let pool = pool.clone();
        let model = model.clone();
        async move {
            let texts: Vec<String> = sqlx::query_scalar("SELECT content FROM document_chunks ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("chunks");
            texts
                .iter()
                .map(|t| model.count_tokens(t).expect("tokenised"))
                .collect::<Vec<usize>>()
        }
    };
    let before = word_pieces(&pool).await;
    assert!(
        before.iter().any(|&n| n > 256),
        "the hashed embedder's chunks must be too long for MiniLM for this test to mean anything: {before:?}"
    );

    let to_local = [
        ("RAGPIPE_EMBEDDING_PROVIDER", "local".to_owned()),
        ("RAGPIPE_EMBEDDING_LOCAL_DIR", dir.display().to_string()),
    ];
    let (output, result) = run_reprocess(&pool, &["--all"], &to_local).await;
    assert_success(&output);
    assert_eq!(result["enqueued"], 3, "{result}");
    for id in &ids {
        let (rows, _, _, models) = chunk_stats(&store, user, *id).await;
        assert!(rows > 0);
        assert_eq!(models, vec!["all-MiniLM-L6-v2".to_owned()]);
        assert_eq!(doc(&store, user, *id).await.status, "ready");
    }
    let after = word_pieces(&pool).await;
    assert!(
        after.iter().all(|&n| n <= 256),
        "a chunk over MiniLM's limit: {after:?}"
    );
    assert!(after.len() > before.len(), "cut again, into more chunks");
    let (tokens, cost): (i64, f64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(cost), 0)::float8 FROM usage_events \
         WHERE origin = 'reprocess' AND model = 'all-MiniLM-L6-v2'",
    )
    .fetch_one(&pool)
    .await
    .expect("usage");
    assert_eq!(
        (tokens, cost),
        (after.iter().sum::<usize>() as i64, 0.0),
        "every word piece embedded, at no cost"
    );
    // Found by the local model's vectors.
    let retriever = Retriever::new(store.clone(), embedders).with_models_refresh(Duration::ZERO);
    let request = SearchRequest {
        mode: SearchMode::Vector,
        k: 3,
        ..SearchRequest::new(format!("{} opens the notes", marker(1)))
    };
    let hits = retriever.search(user, &request).await.expect("search");
    assert!(hits.iter().all(|h| h.vector_similarity.is_some()) && !hits.is_empty());

    // And back to the hashed embedder: re-embedded as they are (they fit its cap).
    let (output, result) = run_reprocess(&pool, &["--all"], &[]).await;
    assert_success(&output);
    assert_eq!(result["enqueued"], 3, "{result}");
    for id in &ids {
        let (_, _, _, models) = chunk_stats(&store, user, *id).await;
        assert_eq!(models, vec![hashed.embedding.model.clone()]);
    }
    assert_eq!(word_pieces(&pool).await, after, "the same chunks, re-embedded");
}
