//! The text leg under a filter switches strategy by selectivity, as the vector leg does: a
//! filter that keeps few chunks reads, for each query term, only the postings blocks that
//! overlap those chunks, and scores them with BM25 over every query term; a broader one scans
//! each generating term's postings and tests the filter on each. Both sides keep to the filter.
//! Against a real PostgreSQL; how many blocks a search read is the backend's count of
//! `search_blocks` rows fetched through its key or scanned, read before and after the search
//! in its transaction.

use ragpipe_core::UserId;
use ragpipe_store::Store;
use ragpipe_store::search::{self, Bm25, SearchHit, SearchMode, SearchQuery};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

mod support;

const DOCUMENTS: usize = 200;
const CHUNKS_PER_DOCUMENT: usize = 40;

/// Chunk `g` (over the whole corpus): "lantern" in every chunk (twice in every fourth),
/// "harbour" in every fifth, "orchard" in every eleventh, with lengths that differ and a word
/// of its own.
fn chunk(g: usize) -> (String, i32) {
    let mut words = vec!["lantern"];
    if g.is_multiple_of(4) {
        words.push("lantern");
    }
    if g.is_multiple_of(5) {
        words.push("harbour");
    }
    if g.is_multiple_of(11) {
        words.push("orchard");
    }
    words.push("meadow");
    // A word of its own: no two chunks are one passage (search collapses duplicates).
    (format!("{} item{g}", words.join(" ")), 20 + (g % 17) as i32)
}

async fn corpus(pool: &PgPool) -> (Store, UserId, Vec<Uuid>) {
    let (store, user) = support::store_with_user(pool, "filtered-text@example.com").await;
    let mut documents = Vec::new();
    // As the owner: status and chunk counts are the pipeline's to set, not the app role's.
    let mut tx = pool.begin().await.expect("tx");
    for d in 0..DOCUMENTS {
        let doc = Uuid::now_v7();
        let (texts, tokens): (Vec<String>, Vec<i32>) = (0..CHUNKS_PER_DOCUMENT)
            .map(|i| chunk(d * CHUNKS_PER_DOCUMENT + i))
            .unzip();
        // One statement a document, as a chunk-set write is: its chunks get consecutive ids,
        // and the trigger writes postings and statistics.
        sqlx::query(
            "WITH d AS (INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256, status, chunk_count, metadata) \
                        VALUES ($1, $2, $3, 'text/plain', 1, sha256($3::bytea), 'ready', $6, $7) RETURNING id) \
             INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
             SELECT $1, $2, i - 1, c, n, 0, length(c) FROM UNNEST($4::text[], $5::int[]) WITH ORDINALITY AS u(c, n, i)",
        )
        .bind(doc)
        .bind(user.0)
        .bind(format!("doc-{d}.txt"))
        .bind(&texts)
        .bind(&tokens)
        .bind(CHUNKS_PER_DOCUMENT as i32)
        .bind(serde_json::json!({ "n": d }))
        .execute(&mut *tx)
        .await
        .expect("document and chunks");
        documents.push(doc);
    }
    tx.commit().await.expect("commit");
    sqlx::query("ANALYZE search_blocks")
        .execute(pool)
        .await
        .expect("analyze");
    (store, user, documents)
}

/// BM25 over `lexemes` (df, N and the mean length over the whole corpus) for the chunks of
/// `documents`, by chunk id (`support::bm25_reference`).
async fn reference(pool: &PgPool, lexemes: &[&str], documents: &[Uuid]) -> HashMap<i64, f64> {
    support::bm25_reference(pool, lexemes, Some(documents))
        .await
        .into_iter()
        .map(|(id, _, score)| (id, score))
        .collect()
}

/// A text search within `documents` (or the documents whose metadata contains `metadata`),
/// and how many `search_blocks` rows it read.
async fn text_search(
    store: &Store,
    user: UserId,
    text: &str,
    documents: Option<&[Uuid]>,
    metadata: Option<&serde_json::Value>,
    exact_scan_chunks: u32,
) -> (Vec<SearchHit>, i64) {
    let mut tx = store.search_tx(user).await.expect("tx");
    // Plan as for a corpus of many thousands of chunks: through the keys, not whole tables.
    sqlx::query("SELECT set_config('enable_seqscan', 'off', true)")
        .execute(tx.conn())
        .await
        .expect("plan as for a large corpus");
    let query = SearchQuery {
        text,
        vectors: &[],
        mode: SearchMode::Text,
        k: 10,
        depth: 10,
        document_ids: documents,
        metadata,
        fusion: support::EVEN_FUSION,
        bm25: Bm25::default(),
        highlight: false,
        exact_scan_chunks,
    };
    let before = blocks_read(&mut tx).await;
    let hits = search::search(&mut tx, &query).await.expect("search");
    let read = blocks_read(&mut tx).await - before;
    tx.commit().await.expect("commit");
    (hits, read)
}

/// `search_blocks` rows this backend has read, scanned or through an index, and not yet
/// reported to the statistics system: the counters can hold reads of earlier transactions on
/// the same connection, so a search's reads are a difference.
async fn blocks_read(tx: &mut ragpipe_store::UserTx) -> i64 {
    sqlx::query_scalar(
        "SELECT (pg_stat_get_xact_tuples_returned('search_blocks'::regclass) \
               + (SELECT coalesce(sum(pg_stat_get_xact_tuples_fetched(i.indexrelid)), 0) \
                  FROM pg_index AS i WHERE i.indrelid = 'search_blocks'::regclass))::bigint",
    )
    .fetch_one(tx.conn())
    .await
    .expect("blocks read")
}

/// The search_blocks rows of `lexeme`.
async fn blocks_of(pool: &PgPool, lexeme: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM search_blocks WHERE lexeme = $1")
        .bind(lexeme)
        .fetch_one(pool)
        .await
        .expect("blocks")
}

/// The ten best of `expected`, best first (ties by chunk id, as the text leg breaks them).
fn best(expected: &HashMap<i64, f64>) -> Vec<i64> {
    let mut all: Vec<(&i64, &f64)> = expected.iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    all.into_iter().take(10).map(|(id, _)| *id).collect()
}

#[sqlx::test(migrations = false)]
async fn a_selective_filter_reads_only_its_chunks_postings_and_scores_every_term(pool: PgPool) {
    let (store, user, documents) = corpus(&pool).await;
    // "lantern" is in all 8,000 chunks (more than half: never probed unfiltered), "harbour" in
    // 1,600 (past the postings budget), "orchard" in 728.
    let lantern = blocks_of(&pool, "lantern").await;
    let harbour = blocks_of(&pool, "harbour").await;
    assert!(lantern >= 60 && harbour >= 12, "{lantern} and {harbour} blocks");
    let picked = [documents[3], documents[77], documents[150]];
    let lexemes = ["lantern", "harbour", "orchard"];
    let expected = reference(&pool, &lexemes, &picked).await;

    let (hits, read) = text_search(&store, user, "orchard harbour lantern", Some(&picked), None, 5_000).await;
    assert!(
        hits.iter().all(|h| picked.contains(&h.document_id)),
        "only the filtered documents"
    );
    for hit in &hits {
        let want = expected[&hit.chunk_id];
        let got = hit.text_score.expect("text score");
        assert!(
            (got - want).abs() < 1e-9,
            "chunk {} scored {got}, BM25 over every term {want}",
            hit.chunk_id
        );
    }
    assert_eq!(
        hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>(),
        best(&expected),
        "the ten best chunks of the three documents, best first"
    );
    // Three runs of 40 chunks, three terms: a block or two a term and run, against the 60-odd
    // blocks of "lantern" alone.
    assert!(read <= 3 * 3 * 3, "a selective filter read {read} blocks");

    // The same by metadata: one document.
    let (hits, read) = text_search(
        &store,
        user,
        "orchard harbour lantern",
        None,
        Some(&serde_json::json!({"n": 77})),
        5_000,
    )
    .await;
    let expected = reference(&pool, &lexemes, &[documents[77]]).await;
    assert_eq!(hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), best(&expected));
    assert!(read <= 3 * 3, "a one-document filter read {read} blocks");
}

#[sqlx::test(migrations = false)]
async fn a_broad_filter_scans_each_generating_terms_postings(pool: PgPool) {
    let (store, user, documents) = corpus(&pool).await;
    let orchard = blocks_of(&pool, "orchard").await;
    let picked = [documents[3], documents[77], documents[150]];
    // The same three documents, but at most 10 chunks may count as selective: "orchard" (the
    // rarest term, the only one within the budget's first term) is scanned whole, the filter
    // tested on each of its postings; "lantern", in every chunk, does not count.
    let (hits, read) = text_search(&store, user, "orchard lantern", Some(&picked), None, 10).await;
    assert!(read >= orchard, "read {read} blocks of orchard's {orchard}");
    assert!(
        hits.iter().all(|h| picked.contains(&h.document_id)),
        "only the filtered documents"
    );
    let expected = reference(&pool, &["orchard"], &picked).await;
    assert_eq!(hits.len(), expected.len().min(10), "chunks with orchard in the filter");
    for hit in &hits {
        let got = hit.text_score.expect("text score");
        assert!((got - expected[&hit.chunk_id]).abs() < 1e-9, "orchard's share alone");
    }

    // The selective side on the same query counts "lantern" too: the same chunks lead, but
    // every score is higher by lantern's share.
    let (selective, _) = text_search(&store, user, "orchard lantern", Some(&picked), None, 5_000).await;
    let with_lantern = reference(&pool, &["orchard", "lantern"], &picked).await;
    assert_eq!(
        selective.iter().map(|h| h.chunk_id).collect::<Vec<_>>(),
        best(&with_lantern)
    );
}
