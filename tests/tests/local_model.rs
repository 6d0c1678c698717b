//! The local embedding model through the real pipeline: documents uploaded, ingested by the
//! apalis worker on PostgreSQL, embedded in-process with all-MiniLM-L6-v2, then searched. A
//! paraphrase that shares no word with the question is found, where the hashed embedder (the
//! fallback without the model) ranks a lexical distractor first.
//!
//! Needs the model's files where `scripts/setup` installs them (or `RAGPIPE_EMBEDDING_LOCAL_DIR`);
//! like the database, part of the machine the suite runs on: without them this fails with the
//! command that fixes it.

use ragpipe_agent::{Retriever, SearchMode, SearchRequest};
use ragpipe_core::config::installed_local_model_dir;
use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_ingest_worker::IngestContext;
use ragpipe_llm::{Embedders, HashedEmbedder, cosine};
use ragpipe_store::{Store, documents, users};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const QUESTION: &str = "I can't remember my password";
const PARAPHRASE: &str = "To restore a forgotten login credential, open the account page and choose the option that \
                          emails a recovery link.";
const DOCUMENTS: &[(&str, &str)] = &[
    ("credentials.txt", PARAPHRASE),
    (
        "memories.txt",
        "My favourite memory is the summer I spent in Norway; I remember the fjords and my long walks.",
    ),
    (
        "bakery.txt",
        "The bakery opens at seven and sells rye bread with caraway seeds.",
    ),
    (
        "trains.txt",
        "Trains to the airport leave every twenty minutes from platform four.",
    ),
];

fn model_dir() -> PathBuf {
    installed_local_model_dir(|n| std::env::var(n).ok()).unwrap_or_else(|why| panic!("{why}"))
}

async fn upload(store: &Store, user: UserId, name: &str, bytes: &[u8]) -> DocumentId {
    ragpipe_tests::upload_inline(store, user, name, bytes)
        .await
        .expect("a text document")
}

#[sqlx::test(migrations = false)]
async fn the_local_model_finds_a_paraphrase_the_hashed_embedder_misses(pool: PgPool) {
    let mut config = Config::defaults();
    config.embedding.provider = Some("local".into());
    config.embedding.local_dir = Some(model_dir());
    config.embedding.model = "all-MiniLM-L6-v2".into();
    config.embedding.local_threads = 2;
    let store = Store::from_pool(pool);
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "local@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );

    // The real worker, on the job queue.
    let config = Arc::new(config);
    let ctx = Arc::new(IngestContext::new(store.clone(), Arc::clone(&config)).expect("context"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(ragpipe_ingest_worker::run(ctx, async move {
        let _ = stopped.await;
    }));
    let mut ids = Vec::new();
    for (name, text) in DOCUMENTS {
        ids.push(upload(&store, user, name, text.as_bytes()).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut tx = store.user_tx(user).await.expect("tx");
        let mut ready = 0;
        for id in &ids {
            let d = documents::get(&mut tx, *id).await.expect("doc");
            assert_ne!(d.status, "failed", "{:?}", d.error);
            ready += usize::from(d.status == "ready");
        }
        if ready == ids.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "documents not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let _ = worker.await;

    // Every chunk carries the model's name; the usage events count its word pieces at no cost.
    let mut tx = store.user_tx(user).await.expect("tx");
    let models: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT embedding_model, count(*) FROM document_chunks GROUP BY embedding_model")
            .fetch_all(tx.conn())
            .await
            .expect("chunk models");
    assert_eq!(
        models,
        vec![(Some("all-MiniLM-L6-v2".to_owned()), DOCUMENTS.len() as i64)]
    );
    let (tokens, cost): (i64, f64) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(cost), 0)::float8 FROM usage_events \
         WHERE kind = 'embedding'",
    )
    .fetch_one(tx.conn())
    .await
    .expect("usage");
    drop(tx);
    let embedders = Embedders::new(&config.embedding).expect("local embedder");
    let model = embedders.configured().local_model().expect("the local model").clone();
    let word_pieces: usize = DOCUMENTS
        .iter()
        .map(|(_, t)| model.count_tokens(t).expect("tokenised"))
        .sum();
    assert_eq!((tokens, cost), (word_pieces as i64, 0.0));

    // Vector search with the local model: the paraphrase first.
    let retriever = Retriever::new(store.clone(), embedders);
    let mut request = SearchRequest::new(QUESTION);
    request.mode = SearchMode::Vector;
    request.k = 4;
    let searched = retriever
        .search_ranked(user, &request, &ragpipe_agent::retrieve::QueryUsage::search())
        .await
        .expect("search");
    assert!(!searched.query_truncated);
    assert_eq!(
        searched.hits.first().map(|h| h.filename.as_str()),
        Some("credentials.txt"),
        "{:?}",
        searched.hits
    );

    // A query longer than the model reads (256 word pieces) is still searched: embedded from
    // its head, the paraphrase still first. Query calls to the local model are recorded like
    // any model's: its word pieces (the limit), at no cost.
    let long = format!("{QUESTION}. {}", "Please help me get back into my account. ".repeat(40));
    assert!(long.len() < 4096 && model.count_tokens(&long).expect("tokenised") > 256);
    let mut request = SearchRequest::new(&long);
    request.mode = SearchMode::Vector;
    request.k = 4;
    let searched = retriever
        .search_ranked(user, &request, &ragpipe_agent::retrieve::QueryUsage::search())
        .await
        .expect("a long query is searched");
    assert!(searched.query_truncated, "the caller is told the query was cut");
    assert_eq!(
        searched.hits.first().map(|h| h.filename.as_str()),
        Some("credentials.txt"),
        "{:?}",
        searched.hits
    );
    let mut tx = store.user_tx(user).await.expect("tx");
    let queries: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT prompt_tokens::bigint, cost::float8 FROM usage_events WHERE kind = 'embedding' \
         AND document_id IS NULL ORDER BY created_at",
    )
    .fetch_all(tx.conn())
    .await
    .expect("query usage");
    drop(tx);
    let first = model.count_tokens(QUESTION).expect("tokenised") as i64;
    assert_eq!(queries, vec![(first, 0.0), (256, 0.0)]);

    // The hashed embedder ranks the lexical distractor above it.
    let hashed = HashedEmbedder::new(384);
    let q = hashed.embed(QUESTION);
    let best = DOCUMENTS
        .iter()
        .max_by(|a, b| cosine(&q, &hashed.embed(a.1)).total_cmp(&cosine(&q, &hashed.embed(b.1))))
        .map(|(name, _)| *name);
    assert_eq!(best, Some("memories.txt"));
}

#[tokio::test]
async fn chunks_of_a_real_manual_fit_the_local_model_whole() {
    let mut config = Config::defaults();
    config.embedding.provider = Some("local".into());
    config.embedding.local_dir = Some(model_dir());
    config.embedding.model = "all-MiniLM-L6-v2".into();
    let embedders = Embedders::new(&config.embedding).expect("local embedder");
    let embedder = embedders.configured();
    let model = embedder.local_model().expect("the local model").clone();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/eval-unseen/documents/apache-caching.html"
    );
    let bytes = std::fs::read(path).expect("fixture");
    let doc = ragpipe_ingest::extract(&bytes, &ragpipe_ingest::Limits::default()).expect("extracted");
    let settings = ragpipe_ingest::ChunkSettings::from_config(&config.chunking);
    let plain = ragpipe_ingest::Chunker::new(settings.clone()).expect("chunker");
    let count = |t: &str| model.count_tokens(t).expect("tokenised");
    // At the configured 512 tiktoken tokens, chunks are longer than the model reads...
    assert!(
        plain
            .chunk(&doc)
            .iter()
            .any(|c| count(&c.content) > model.max_input_tokens())
    );
    // ...so ingest's chunker for the local model holds them to its 256 word pieces.
    let limit = ragpipe_ingest_worker::model_limit(embedder).expect("a limit for the local model");
    assert_eq!(limit.max_tokens, 256);
    let chunks = ragpipe_ingest_worker::chunker_for(settings, embedder)
        .expect("chunker")
        .chunk(&doc);
    assert!(chunks.len() > 5);
    let longest = chunks.iter().map(|c| count(&c.content)).max().unwrap_or(0);
    assert!(longest <= 256, "a chunk of {longest} word pieces");
    assert!(longest > 200, "chunks use the room there is, the longest has {longest}");
    let texts: Vec<String> = chunks.into_iter().map(|c| c.content).collect();
    let out = embedder.embed(&texts).await.expect("embedded");
    assert_eq!(out.vectors.len(), texts.len());
    assert_eq!(out.truncated, 0, "every chunk is embedded whole");
    // The plain chunker's long chunks would have been cut: the count says so.
    let long: Vec<String> = plain.chunk(&doc).into_iter().map(|c| c.content).collect();
    let over = long.iter().filter(|t| count(t) > 256).count();
    let cut = embedder.embed(&long).await.expect("embedded, long ones cut");
    assert_eq!(cut.truncated as usize, over);
}
