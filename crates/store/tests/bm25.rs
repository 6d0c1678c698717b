//! The text leg's scores against BM25 computed straight from the chunks' own tsvectors, on a
//! real PostgreSQL: exact over every query term when all of them generate candidates, and when
//! the postings budget leaves some out, exact over the generating terms plus the other terms
//! probed in the second pass (all but those in more than half of the chunks). And the postings
//! of chunks stored before the postings table existed, backfilled by its migration.

use ragpipe_core::{Config, UserId};
use ragpipe_store::Store;
use ragpipe_store::search::{self, Bm25, SearchHit, SearchMode, SearchQuery};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

mod support;

/// Ten chunks: "quokka" in 3 (rare), "lantern" in 4 (common, at most half), "river" in 8 (more
/// than half). Chunk 2 says "lantern" three times; lengths differ.
const CHUNKS: [(&str, i32); 10] = [
    ("quokka river meadow", 30),
    ("quokka lantern river orchard", 40),
    ("quokka lantern lantern lantern river harbour", 60),
    ("lantern river meadow", 20),
    ("lantern river orchard", 25),
    ("river harbour", 35),
    ("river meadow", 45),
    ("river orchard", 50),
    ("harbour meadow", 55),
    ("orchard harbour", 65),
];

async fn corpus(pool: &PgPool) -> (Store, UserId) {
    let (store, user) = support::store_with_user(pool, "bm25@example.com").await;
    let doc = Uuid::now_v7();
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query(
        "INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256) \
         VALUES ($1, $2, 'animals.txt', 'text/plain', 1, sha256('animals'))",
    )
    .bind(doc)
    .bind(user.0)
    .execute(tx.conn())
    .await
    .expect("document");
    // One statement, as a chunk-set write is: the trigger writes postings and statistics.
    let texts: Vec<&str> = CHUNKS.iter().map(|(t, _)| *t).collect();
    let tokens: Vec<i32> = CHUNKS.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
         SELECT $1, $2, i - 1, c, n, 0, length(c) FROM UNNEST($3::text[], $4::int[]) WITH ORDINALITY AS u(c, n, i)",
    )
    .bind(doc)
    .bind(user.0)
    .bind(&texts)
    .bind(&tokens)
    .execute(tx.conn())
    .await
    .expect("chunks");
    tx.commit().await.expect("commit");
    (store, user)
}

/// BM25 over `lexemes` per chunk content (`support::bm25_reference`).
async fn reference(pool: &PgPool, lexemes: &[&str]) -> HashMap<String, f64> {
    support::bm25_reference(pool, lexemes, None)
        .await
        .into_iter()
        .map(|(_, content, score)| (content, score))
        .collect()
}

async fn text_search(store: &Store, user: UserId, text: &str, bm25: Bm25) -> Vec<SearchHit> {
    let mut tx = store.search_tx(user).await.expect("tx");
    let query = SearchQuery {
        text,
        vectors: &[],
        mode: SearchMode::Text,
        k: 10,
        depth: 10,
        document_ids: None,
        metadata: None,
        fusion: support::EVEN_FUSION,
        bm25,
        highlight: false,
        exact_scan_chunks: search::EXACT_SCAN_CHUNKS,
    };
    let hits = search::search(&mut tx, &query).await.expect("search");
    tx.commit().await.expect("commit");
    hits
}

fn assert_scores(hits: &[SearchHit], expected: &HashMap<String, f64>, case: &str) {
    assert!(!hits.is_empty(), "{case}: no hits");
    for hit in hits {
        let want = expected
            .get(&hit.content)
            .unwrap_or_else(|| panic!("{case}: {:?} should not match", hit.content));
        let got = hit.text_score.expect("text score");
        assert!(
            (got - want).abs() < 1e-9,
            "{case}: {:?} scored {got}, BM25 {want}",
            hit.content
        );
    }
    let mut scores: Vec<f64> = hits.iter().filter_map(|h| h.text_score).collect();
    let ranked = scores.clone();
    scores.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(ranked, scores, "{case}: hits are best first");
}

#[sqlx::test(migrations = false)]
async fn with_every_term_generating_the_text_leg_is_exact_bm25_over_all_terms(pool: PgPool) {
    let (store, user) = corpus(&pool).await;
    let hits = text_search(&store, user, "quokka lantern river", Bm25::default()).await;
    let expected = reference(&pool, &["quokka", "lantern", "river"]).await;
    assert_scores(&hits, &expected, "default budget");
    // Every chunk with any term came back: any term may match.
    assert_eq!(hits.len(), expected.len());
}

#[sqlx::test(migrations = false)]
async fn past_the_budget_candidates_come_from_rare_terms_and_are_completed_by_probes(pool: PgPool) {
    let (store, user) = corpus(&pool).await;
    // A budget of 3 postings: only "quokka" (in 3 chunks) brings in candidates; "lantern" (4 of
    // 10) is added to them by the second pass; "river" (8 of 10, idf under ln 2) is not.
    let bm25 = Bm25 {
        postings_budget: 3,
        postings_per_term: 3,
        ..Bm25::default()
    };
    let hits = text_search(&store, user, "quokka lantern river", bm25).await;
    let expected: HashMap<String, f64> = reference(&pool, &["quokka", "lantern"])
        .await
        .into_iter()
        .filter(|(content, _)| content.contains("quokka"))
        .collect();
    assert_eq!(hits.len(), 3, "only quokka's chunks are candidates");
    assert_scores(&hits, &expected, "budget 3");
    // The probes decide the order: the chunk with "lantern" three times leads, the one without
    // it comes last, though "quokka" alone would rank the short first chunk first.
    assert_eq!(hits[0].content, CHUNKS[2].0);
    assert_eq!(hits[2].content, CHUNKS[0].0);
}

#[sqlx::test(migrations = false)]
async fn upgrading_a_database_with_chunks_backfills_their_postings(pool: PgPool) {
    // The schema before the postings table, with chunks of two users in it.
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("queue schema");
    ragpipe_store::migrate::MIGRATOR
        .run_to(20261123000014, &pool)
        .await
        .expect("the older schema");
    let users = [Uuid::now_v7(), Uuid::now_v7()];
    for (i, user) in users.iter().enumerate() {
        let doc = Uuid::now_v7();
        sqlx::query(
            "WITH u AS (INSERT INTO users (id, email) VALUES ($1, $3) RETURNING id),
                  d AS (INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256)
                        SELECT $2, id, 'old.txt', 'text/plain', 1, sha256($3::bytea) FROM u RETURNING id, user_id)
             INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end)
             SELECT d.id, d.user_id, c.i - 1, c.content, 10, 0, length(c.content)
             FROM d, UNNEST($4::text[]) WITH ORDINALITY AS c(content, i)",
        )
        .bind(user)
        .bind(doc)
        .bind(format!("old{i}@example.com"))
        .bind(CHUNKS.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .execute(&pool)
        .await
        .expect("chunks on the older schema");
    }
    let store = Store::from_pool(pool.clone());
    let report = store.migrate(&Config::defaults().embedding).await.expect("upgrade");
    assert!(report.applied.contains(&20261202000015), "{:?}", report.applied);
    let (postings, mismatches): (i64, i64) = sqlx::query_as(
        "WITH recount AS (
             SELECT c.user_id, u.lexeme, c.id AS chunk_id, greatest(cardinality(u.positions), 1)::smallint AS tf,
                    c.token_count
             FROM document_chunks AS c, unnest(c.search_vector) AS u)
         SELECT (SELECT count(*) FROM search_postings),
                (SELECT count(*) FROM recount FULL JOIN search_postings AS p USING (user_id, lexeme, chunk_id)
                 WHERE (recount.tf, recount.token_count) IS DISTINCT FROM (p.tf, p.token_count))",
    )
    .fetch_one(&pool)
    .await
    .expect("recount");
    assert!(postings > 0);
    assert_eq!(mismatches, 0);
    // And each user's search reads them: "quokka" is in three chunks of each.
    for user in users {
        let hits = text_search(&store, UserId(user), "quokka", Bm25::default()).await;
        assert_eq!(hits.len(), 3);
    }
}
