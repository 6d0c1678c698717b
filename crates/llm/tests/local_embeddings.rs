//! The local embedding provider against sentence-transformers: the vectors of
//! `fixtures/embeddings/minilm-reference.json` (computed once by `scripts/embedding-reference.py`
//! with the Python package) must be reproduced, cosine ≥ 0.999, with the same word-piece counts.
//!
//! Needs the model's files where `scripts/setup` installs them (or `RAGPIPE_EMBEDDING_LOCAL_DIR`);
//! like the database, they are part of the machine the suite runs on, so their absence fails
//! these tests with the command that fixes it rather than skipping them.

use ragpipe_core::ErrorKind;
use ragpipe_core::config::{Config, installed_local_model_dir};
use ragpipe_llm::local::DEFAULT_BATCH_TOKENS;
use ragpipe_llm::{Embedder, LlmError, LocalRuntime, OverLimit, cosine};
use std::path::PathBuf;

#[derive(serde::Deserialize)]
struct Reference {
    model: String,
    max_seq_length: usize,
    inputs: Vec<ReferenceInput>,
}

#[derive(serde::Deserialize)]
struct ReferenceInput {
    text: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn model_dir() -> PathBuf {
    installed_local_model_dir(|n| std::env::var(n).ok()).unwrap_or_else(|why| panic!("{why}"))
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/embeddings/minilm-reference.json"
    );
    let text = std::fs::read_to_string(path).expect("the committed reference vectors");
    serde_json::from_str(&text).expect("reference JSON")
}

#[tokio::test]
async fn local_vectors_match_sentence_transformers() {
    let reference = reference();
    let runtime = LocalRuntime::start(&model_dir(), 2, DEFAULT_BATCH_TOKENS).expect("model loads");
    assert_eq!(reference.model, "all-MiniLM-L6-v2");
    assert_eq!(runtime.model().max_input_tokens(), reference.max_seq_length);
    assert_eq!(runtime.model().dim(), 384);
    let texts: Vec<String> = reference.inputs.iter().map(|i| i.text.clone()).collect();
    // All at once: batches of different lengths, padded, in sorted order.
    let batched = runtime.embed(&texts, OverLimit::Refuse).await.expect("embedded");
    assert_eq!(batched.vectors.len(), texts.len());
    let mut worst = 1.0f32;
    for (input, got) in reference.inputs.iter().zip(&batched.vectors) {
        let c = cosine(got, &input.vector);
        worst = worst.min(c);
        assert!(c >= 0.999, "cosine {c} for {:?}", input.text);
        assert_eq!(
            runtime.model().count_tokens(&input.text).expect("tokenised"),
            input.tokens,
            "word pieces of {:?}",
            input.text
        );
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    eprintln!("lowest cosine against sentence-transformers: {worst}");
    assert_eq!(
        batched.tokens,
        reference.inputs.iter().map(|i| i.tokens as u64).sum::<u64>()
    );
    // One at a time (no padding) gives the same vectors as in a padded batch.
    for (i, text) in texts.iter().enumerate().step_by(5) {
        let alone = runtime
            .embed(std::slice::from_ref(text), OverLimit::Refuse)
            .await
            .expect("embedded");
        assert!(cosine(&alone.vectors[0], &batched.vectors[i]) > 0.99999, "{text:?}");
    }
    // A paraphrase is nearer than an unrelated sentence (the point of a semantic model).
    let find = |t: &str| texts.iter().position(|x| x == t).expect("fixture text");
    let (cat, feline, pg) = (
        find("The cat sat on the mat."),
        find("A feline rested on the rug."),
        find("PostgreSQL stores vectors with the pgvector extension and indexes them with HNSW."),
    );
    assert!(
        cosine(&batched.vectors[cat], &batched.vectors[feline])
            > cosine(&batched.vectors[cat], &batched.vectors[pg]) + 0.2
    );
}

#[tokio::test]
async fn an_input_over_the_models_limit_is_refused_not_cut() {
    let runtime = LocalRuntime::start(&model_dir(), 1, DEFAULT_BATCH_TOKENS).expect("model loads");
    let max = runtime.model().max_input_tokens();
    let fits = "word ".repeat(max - 2);
    assert_eq!(runtime.model().count_tokens(&fits).expect("tokenised"), max);
    let over = "word ".repeat(max - 1);
    let inputs = vec!["short".to_owned(), fits, over];
    let err = runtime
        .embed(&inputs, OverLimit::Refuse)
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::ContextTooLong);
    match err {
        LlmError::InputTooLong {
            tokens,
            max_tokens,
            context,
        } => {
            assert_eq!((tokens, max_tokens), (max + 1, max));
            assert!(context.contains("input 2"), "{context}");
        }
        other => panic!("expected InputTooLong, got {other}"),
    }
    let ok = runtime
        .embed(&inputs[..2], OverLimit::Refuse)
        .await
        .expect("within the limit");
    assert_eq!(ok.vectors.len(), 2);
    // Cut instead: the long input is read as its first word pieces (the limit exactly) and
    // counted; its vector is the vector of the input that just fits, whose pieces it shares.
    let cut = runtime.embed(&inputs, OverLimit::Cut).await.expect("cut to the limit");
    assert_eq!(cut.truncated, 1);
    assert_eq!(
        cut.tokens,
        (2 + 1 + 2 * max) as u64,
        "short (3) + fits + cut, at the limit each"
    );
    assert!(cosine(&cut.vectors[2], &cut.vectors[1]) > 0.99999);
}

#[tokio::test]
async fn the_embedder_reports_word_pieces_at_no_cost_and_is_semantic() {
    let mut endpoint = Config::defaults().embedding;
    endpoint.provider = Some("local".into());
    endpoint.local_dir = Some(model_dir());
    endpoint.model = "all-MiniLM-L6-v2".into();
    endpoint.local_threads = 1;
    let embedder = Embedder::new(&endpoint).expect("local embedder");
    assert!(!embedder.is_offline(), "the local model gets the semantic fusion");
    assert_eq!((embedder.model(), embedder.dim()), ("all-MiniLM-L6-v2", 384));
    let model = embedder.local_model().expect("a local model").clone();
    let inputs = vec![
        "How do I reset my password?".to_owned(),
        "Wie setze ich mein Passwort zurück?".to_owned(),
    ];
    let out = embedder.embed(&inputs).await.expect("embedded");
    let expected: usize = inputs.iter().map(|t| model.count_tokens(t).expect("tokenised")).sum();
    assert_eq!(out.prompt_tokens, expected as u64);
    assert_eq!((out.requests, out.retries, out.truncated), (0, 0, 0));
    assert!(out.vectors.iter().all(|v| v.len() == 384));
    // A dimension other than the model's is refused when the embedder is built.
    endpoint.dim = 768;
    assert!(matches!(
        Embedder::new(&endpoint),
        Err(LlmError::DimensionMismatch {
            got: 384,
            expected: 768,
            ..
        })
    ));
}

/// The model never runs on the async runtime: on a single-threaded runtime, a task that ticks
/// every few milliseconds keeps ticking while many long inputs are embedded by concurrent
/// callers (more batches than the bounded queue holds). Were tokenising or inference done on
/// the runtime's thread, the ticker would not advance until the embedding was over.
#[tokio::test(flavor = "current_thread")]
async fn embedding_leaves_the_async_runtime_free() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let runtime = LocalRuntime::start(&model_dir(), 1, 512).expect("model loads");
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(2));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let the ticker start, then embed: 4 callers × 8 inputs of ~200 word pieces, batches of
    // at most 512 padded tokens (two inputs), so 16 batches for a queue of 2.
    tokio::task::yield_now().await;
    let text = "The quick brown fox jumps over the lazy dog near the riverbank. ".repeat(15);
    let inputs: Vec<String> = (0..8).map(|i| format!("{i} {text}")).collect();
    let before = ticks.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let outs = futures::future::join_all((0..4).map(|_| runtime.embed(&inputs, OverLimit::Refuse))).await;
    let elapsed = started.elapsed();
    let during = ticks.load(Ordering::Relaxed) - before;
    ticker.abort();
    for out in outs {
        assert_eq!(out.expect("embedded").vectors.len(), 8);
    }
    // A blocked runtime ticks at most once (the missed ticks are then burst, but only after);
    // a free one ticks about every 2 ms of the embedding's duration.
    assert!(
        during >= 10,
        "the ticker advanced {during} times in {elapsed:?} of embedding: the runtime was blocked"
    );
}
