//! Filtered search switches strategy by selectivity: a filter that keeps few chunks has the
//! vector leg compute each distance exactly (no HNSW scan), one that keeps many reads the
//! index, and no filter reads the index. Both sides return the exact nearest chunks of the
//! filtered documents, and never another document's. Against a real PostgreSQL with pgvector;
//! which index a search read is the transaction's own scan count
//! (`pg_stat_get_xact_numscans`), read in the search's transaction.

use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_store::chunks::{self, ChunkSetInfo, NewChunk};
use ragpipe_store::documents::{self, NewDocument};
use ragpipe_store::search::{self, Bm25, QueryVector, SearchMode, SearchQuery};
use ragpipe_store::{Store, embedding_models, users};
use sqlx::PgPool;
use uuid::Uuid;

mod support;

const MODEL: &str = "filter-test-8";
const DIM: u32 = 8;
const DOCUMENTS: usize = 12;
const CHUNKS_PER_DOCUMENT: usize = 20;

/// A deterministic vector for chunk `i` of document `d`.
fn vector(d: usize, i: usize) -> Vec<f32> {
    (0..DIM as usize)
        .map(|j| (((d * 31 + i * 7 + j * 13) % 17) as f32 - 8.0) / 8.0 + if j == d % 8 { 1.0 } else { 0.0 })
        .collect()
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    1.0 - dot / (norm(a) * norm(b))
}

struct Corpus {
    store: Store,
    user: UserId,
    documents: Vec<DocumentId>,
}

async fn corpus(pool: PgPool) -> Corpus {
    let mut config = Config::defaults();
    config.embedding.model = MODEL.into();
    config.embedding.dim = DIM;
    let store = Store::from_pool(pool);
    store.migrate(&config.embedding).await.expect("migrate");
    let user = users::create(
        &store,
        &users::NewUser {
            email: "filter@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .expect("user");
    let user = UserId(user.id);
    let mut ids = Vec::new();
    for d in 0..DOCUMENTS {
        let mut tx = store.user_tx(user).await.expect("tx");
        let name = format!("doc-{d}.txt");
        let bytes = format!("document {d}");
        let stored = documents::create(
            &mut tx,
            &NewDocument::new(&name, "text/plain", bytes.as_bytes(), serde_json::json!({"n": d})),
            1,
        )
        .await
        .expect("document");
        let id = DocumentId(stored.document.id);
        let chunks: Vec<NewChunk> = (0..CHUNKS_PER_DOCUMENT)
            .map(|i| NewChunk {
                index: i as u32,
                content: format!("chunk {i} of document {d}"),
                token_count: 6,
                page_first: None,
                page_last: None,
                heading_path: Vec::new(),
                byte_range: 0..10,
                embedding: vector(d, i),
            })
            .collect();
        let info = ChunkSetInfo {
            embedding_model: MODEL,
            max_tokens: 512,
            overlap_tokens: 0,
            tokenizer: "test",
            extractor_version: "test",
            title: None,
            language: None,
            page_count: None,
            failed_pages: serde_json::json!([]),
            warnings: serde_json::json!([]),
            run: None,
        };
        chunks::replace(&mut tx, id, &chunks, &info).await.expect("chunks");
        tx.commit().await.expect("commit");
        ids.push(id);
    }
    Corpus {
        store,
        user,
        documents: ids,
    }
}

/// A vector search with `filter`, and how many times it scanned the HNSW index.
async fn vector_search(
    c: &Corpus,
    query: &[f32],
    filter: Option<&[Uuid]>,
    exact_scan_chunks: u32,
) -> (Vec<(i64, Uuid)>, i64) {
    let vectors = [QueryVector {
        model: MODEL,
        dim: DIM,
        embedding: query,
    }];
    let q = SearchQuery {
        text: "",
        vectors: &vectors,
        mode: SearchMode::Vector,
        k: 5,
        depth: 5,
        document_ids: filter,
        metadata: None,
        fusion: support::EVEN_FUSION,
        bm25: Bm25::default(),
        highlight: false,
        exact_scan_chunks,
    };
    let mut tx = c.store.search_tx(c.user).await.expect("tx");
    // A few hundred rows are cheaper to read whole, or by document and sorted, than through
    // the HNSW index; the planner is told to plan as it does for a corpus of many thousands.
    sqlx::query("SELECT set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)")
        .execute(tx.conn())
        .await
        .expect("plan as for a large corpus");
    let hits = search::search(&mut tx, &q).await.expect("search");
    let index = embedding_models::index_name(MODEL, DIM);
    let scans: i64 = sqlx::query_scalar("SELECT pg_stat_get_xact_numscans($1::regclass)")
        .bind(&index)
        .fetch_one(tx.conn())
        .await
        .expect("scan count");
    tx.commit().await.expect("commit");
    (hits.iter().map(|h| (h.chunk_id, h.document_id)).collect(), scans)
}

/// The exact nearest `k` chunks (document, chunk) of `documents` to `query`, computed here.
fn nearest(query: &[f32], documents: &[usize], k: usize) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, usize, usize)> = documents
        .iter()
        .flat_map(|&d| (0..CHUNKS_PER_DOCUMENT).map(move |i| (d, i)))
        .map(|(d, i)| (cosine_distance(query, &vector(d, i)), d, i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, d, i)| (d, i)).collect()
}

#[sqlx::test(migrations = false)]
async fn a_selective_filter_scores_exactly_and_a_broad_one_reads_the_index(pool: PgPool) {
    let c = corpus(pool.clone()).await;
    let query = vector(5, 3);
    let picked = [2usize, 5, 9];
    let filter: Vec<Uuid> = picked.iter().map(|&d| c.documents[d].0).collect();
    let expected = nearest(&query, &picked, 5);
    let document_of = |hit: &(i64, Uuid)| {
        c.documents
            .iter()
            .position(|id| id.0 == hit.1)
            .expect("a known document")
    };

    // Selective: 60 chunks kept, at most 100 scored exactly; the index is not read.
    let (exact, scans) = vector_search(&c, &query, Some(&filter), 100).await;
    assert_eq!(scans, 0, "a selective filter must not scan the HNSW index");
    assert_eq!(exact.len(), 5);
    assert!(
        exact.iter().all(|h| filter.contains(&h.1)),
        "only the filtered documents"
    );

    // Broad: the same filter, but at most 10 chunks may be scored exactly: through the index.
    let (indexed, scans) = vector_search(&c, &query, Some(&filter), 10).await;
    assert!(
        scans > 0,
        "a filter that keeps more chunks than the limit reads the index"
    );
    assert!(
        indexed.iter().all(|h| filter.contains(&h.1)),
        "only the filtered documents"
    );

    // Both sides give the same, exact, answer on this corpus.
    let documents_of = |hits: &[(i64, Uuid)]| hits.iter().map(document_of).collect::<Vec<_>>();
    assert_eq!(
        documents_of(&exact),
        expected.iter().map(|(d, _)| *d).collect::<Vec<_>>()
    );
    assert_eq!(exact, indexed, "exact and indexed results agree");
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT content FROM document_chunks WHERE id = ANY ($1) ORDER BY array_position($1, id)")
            .bind(exact.iter().map(|h| h.0).collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .expect("contents");
    let wanted: Vec<String> = expected
        .iter()
        .map(|(d, i)| format!("chunk {i} of document {d}"))
        .collect();
    assert_eq!(texts, wanted, "the exact nearest chunks, nearest first");

    // No filter: the index, whatever the limit.
    let (_, scans) = vector_search(&c, &query, None, u32::MAX).await;
    assert!(scans > 0, "an unfiltered search reads the index");
}
