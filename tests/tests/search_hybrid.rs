//! Search on real PostgreSQL over fixture documents ingested by the real job: ranking in each
//! mode, any-term text matching, filters, isolation between users, and the term statistics and
//! postings the text leg relies on.

mod search_support;

use ragpipe_agent::retrieve::{OFFLINE_FUSION, fused_score};
use ragpipe_agent::{Retriever, SearchHit, SearchMode, SearchRequest};
use ragpipe_core::{Config, UserId};
use ragpipe_llm::Embedders;
use ragpipe_store::Store;
use ragpipe_tests::openai_server::OpenAiServer;
use search_support::*;
use sqlx::PgPool;

/// Team metadata for the filter tests: finance owns the money documents.
fn team(filename: &str) -> serde_json::Value {
    let team = if ["travel-expenses.md", "billing-plans.md"].contains(&filename) {
        "finance"
    } else {
        "engineering"
    };
    serde_json::json!({ "team": team })
}

async fn corpus(pool: PgPool, config: &Config) -> (Store, UserId, Retriever) {
    let store = migrated(pool, config).await;
    let user = new_user(&store, "a@example.com").await;
    let ready = ingest(&store, config, user, &eval_documents(), team).await;
    assert_eq!(ready.len(), eval_documents().len());
    let retriever = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedder"));
    (store, user, retriever)
}

async fn search(retriever: &Retriever, user: UserId, query: &str, mode: SearchMode) -> Vec<SearchHit> {
    let request = SearchRequest {
        mode,
        ..SearchRequest::new(query)
    };
    retriever.search(user, &request).await.expect("search")
}

fn filenames(hits: &[SearchHit]) -> Vec<&str> {
    hits.iter().map(|h| h.filename.as_str()).collect()
}

#[sqlx::test(migrations = false)]
async fn a_query_answered_by_one_chunk_ranks_it_first_in_hybrid_mode(pool: PgPool) {
    let config = Config::defaults();
    let (_, user, retriever) = corpus(pool, &config).await;
    let hits = search(
        &retriever,
        user,
        "What is the nightly hotel limit in Berlin?",
        SearchMode::Hybrid,
    )
    .await;
    let top = &hits[0];
    assert_eq!(top.filename, "travel-expenses.md", "{:?}", filenames(&hits));
    assert!(top.content.contains("180 EUR in Berlin"));
    // Ranked by both legs, with the fused score the SQL computed being the documented formula.
    assert!(top.vector_rank.is_some() && top.text_rank.is_some(), "{top:?}");
    for hit in &hits {
        let expected = fused_score(
            &OFFLINE_FUSION,
            hit.vector_rank.map(|r| r as u64),
            hit.text_rank.map(|r| r as u64),
        );
        assert!((hit.score - expected).abs() < 1e-9, "{hit:?}");
    }
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(hits.len() <= 10);
}

#[sqlx::test(migrations = false)]
async fn a_rare_identifier_is_found_by_text_mode(pool: PgPool) {
    let config = Config::defaults();
    let (_, user, retriever) = corpus(pool, &config).await;
    let hits = search(&retriever, user, "E4127", SearchMode::Text).await;
    assert_eq!(filenames(&hits), vec!["error-codes.md"]);
    assert_eq!(hits[0].text_rank, Some(1));
    assert!(hits[0].vector_rank.is_none() && hits[0].text_score.is_some_and(|s| s > 0.0));
    // A rare term outweighs common ones: "carrier" and "E4127" occur once, "seconds" and
    // "minutes" in many documents.
    let hits = search(&retriever, user, "seconds minutes E4127", SearchMode::Text).await;
    assert_eq!(hits[0].filename, "error-codes.md", "{:?}", filenames(&hits));
}

#[sqlx::test(migrations = false)]
async fn a_paraphrase_is_found_by_vector_mode_with_the_test_servers_embeddings(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut config = Config::defaults();
    config.embedding = server.embedding_endpoint();
    let (_, user, retriever) = corpus(pool, &config).await;
    let hits = search(
        &retriever,
        user,
        "My handheld device is stuck and does not react, how do I reboot it?",
        SearchMode::Vector,
    )
    .await;
    assert_eq!(hits[0].filename, "warehouse-scanners.md", "{:?}", filenames(&hits));
    assert!(hits[0].vector_similarity.is_some() && hits[0].text_rank.is_none());
    // The query went to the server (the vector leg embeds it; text mode does not).
    let embedded = server.requests().len();
    assert!(embedded > 0);
    search(&retriever, user, "reboot", SearchMode::Text).await;
    assert_eq!(server.requests().len(), embedded, "text mode embedded the query");
}

#[sqlx::test(migrations = false)]
async fn text_mode_matches_any_term_of_a_natural_question(pool: PgPool) {
    let config = Config::defaults();
    let (store, user, retriever) = corpus(pool, &config).await;
    let question = "What is the hotel limit in Berlin for colleagues travelling with their pets?";
    // Requiring every term (websearch_to_tsquery) finds nothing: no chunk mentions pets.
    let mut tx = store.user_tx(user).await.expect("tx");
    let all_terms: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM document_chunks WHERE search_vector @@ websearch_to_tsquery('english', $1)",
    )
    .bind(question)
    .fetch_one(tx.conn())
    .await
    .expect("count");
    drop(tx);
    assert_eq!(all_terms, 0);
    let hits = search(&retriever, user, question, SearchMode::Text).await;
    assert_eq!(hits[0].filename, "travel-expenses.md", "{:?}", filenames(&hits));
    // Stop words alone match nothing, and that is not an error.
    assert!(
        search(&retriever, user, "what is the", SearchMode::Text)
            .await
            .is_empty()
    );
}

#[sqlx::test(migrations = false)]
async fn document_and_metadata_filters_restrict_every_leg(pool: PgPool) {
    let config = Config::defaults();
    let (store, user, retriever) = corpus(pool, &config).await;
    for mode in SearchMode::ALL {
        let request = SearchRequest {
            mode,
            metadata: Some(serde_json::json!({"team": "finance"})),
            ..SearchRequest::new("limit per month and per night")
        };
        let hits = retriever.search(user, &request).await.expect("search");
        assert!(!hits.is_empty(), "{mode}");
        for hit in &hits {
            assert!(
                ["travel-expenses.md", "billing-plans.md"].contains(&hit.filename.as_str()),
                "{mode}: {}",
                hit.filename
            );
        }
    }
    let mut tx = store.user_tx(user).await.expect("tx");
    let (leave, _) = ragpipe_store::documents::list(&mut tx, None, None, 100)
        .await
        .expect("list")
        .into_iter()
        .find(|d| d.filename == "leave-policy.md")
        .map(|d| (d.id, ()))
        .expect("leave policy");
    drop(tx);
    for mode in SearchMode::ALL {
        let request = SearchRequest {
            mode,
            document_ids: vec![leave],
            ..SearchRequest::new("hotel limit in Berlin")
        };
        let hits = retriever.search(user, &request).await.expect("search");
        assert!(hits.iter().all(|h| h.document_id == leave), "{mode}");
    }
    // Both filters together intersect: the leave policy is not a finance document.
    let request = SearchRequest {
        document_ids: vec![leave],
        metadata: Some(serde_json::json!({"team": "finance"})),
        ..SearchRequest::new("annual leave")
    };
    assert!(retriever.search(user, &request).await.expect("search").is_empty());
}

#[sqlx::test(migrations = false)]
async fn user_b_cannot_find_user_a_chunks(pool: PgPool) {
    let config = Config::defaults();
    let (store, a, retriever) = corpus(pool.clone(), &config).await;
    let b = new_user(&store, "b@example.com").await;
    let own = fixtures().join("documents/guide.md");
    ingest(&store, &config, b, &[own], no_metadata).await;
    let a_document = search(&retriever, a, "E4127", SearchMode::Text).await[0].document_id;
    for mode in SearchMode::ALL {
        for query in ["E4127 carrier gateway", "hotel limit in Berlin", "Zebra TC52 scanner"] {
            let hits = search(&retriever, b, query, mode).await;
            assert!(
                hits.iter().all(|h| h.filename == "guide.md"),
                "{mode} {query}: B found {:?}",
                filenames(&hits)
            );
        }
        // Naming A's document as a filter finds nothing either (ids do not leak).
        let request = SearchRequest {
            mode,
            document_ids: vec![a_document],
            ..SearchRequest::new("E4127")
        };
        assert!(
            retriever.search(b, &request).await.expect("search").is_empty(),
            "{mode}"
        );
    }
    // The text leg's statistics are per user too: B's vocabulary is B's own.
    let mut tx = store.user_tx(b).await.expect("tx");
    let (terms, foreign): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE lexeme = 'e4127') FROM search_term_stats")
            .fetch_one(tx.conn())
            .await
            .expect("stats");
    assert!(terms > 0);
    assert_eq!(foreign, 0);
    let corpora: i64 = sqlx::query_scalar("SELECT count(*) FROM search_corpus_stats")
        .fetch_one(tx.conn())
        .await
        .expect("corpus");
    assert_eq!(corpora, 1);
    // So are the postings: B's transaction sees none of A's, and one with no user sees none.
    let (postings, foreign): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE lexeme = 'e4127') FROM search_postings")
            .fetch_one(tx.conn())
            .await
            .expect("postings");
    assert!(postings > 0);
    assert_eq!(foreign, 0);
    drop(tx);
    let mut conn = pool.acquire().await.expect("conn");
    let mut app = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    sqlx::query("SET LOCAL ROLE ragpipe_app")
        .execute(&mut *app)
        .await
        .expect("role");
    let anonymous: i64 = sqlx::query_scalar("SELECT count(*) FROM search_postings")
        .fetch_one(&mut *app)
        .await
        .expect("postings");
    assert_eq!(anonymous, 0);
}

#[sqlx::test(migrations = false)]
async fn the_new_user_tables_have_forced_row_level_security_and_owner_policies(pool: PgPool) {
    let config = Config::defaults();
    let store = migrated(pool.clone(), &config).await;
    let a = new_user(&store, "a@example.com").await;
    let b = new_user(&store, "b@example.com").await;
    for table in ["search_term_stats", "search_corpus_stats", "search_blocks"] {
        let (enabled, forced): (bool, bool) =
            sqlx::query_as("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass")
                .bind(table)
                .fetch_one(&pool)
                .await
                .expect("pg_class");
        assert!(enabled && forced, "{table}");
        // B cannot write statistics under A's id.
        let mut tx = store.user_tx(b).await.expect("tx");
        let sql = match table {
            "search_term_stats" => "INSERT INTO search_term_stats (user_id, lexeme, chunks) VALUES ($1, 'x', 1)",
            "search_corpus_stats" => "INSERT INTO search_corpus_stats (user_id, chunks, tokens) VALUES ($1, 1, 1)",
            _ => {
                "INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats) VALUES ($1, 'x', 1, '{0}', '{1}')"
            }
        };
        let refused = sqlx::query(sql).bind(a.0).execute(tx.conn()).await;
        assert!(refused.is_err(), "{table}: B wrote a row of A");
    }
    // Nobody was left a member of the retired search role, and its postings function and
    // policy are gone with it.
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_auth_members WHERE roleid = 'ragpipe_search'::regrole")
            .fetch_one(&pool)
            .await
            .expect("members");
    assert_eq!(members, 0);
    let retired: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_proc WHERE proname = 'ragpipe_search_postings')
              + (SELECT count(*) FROM pg_policy WHERE polname = 'document_chunks_search_postings')",
    )
    .fetch_one(&pool)
    .await
    .expect("retired");
    assert_eq!(retired, 0);
}

#[sqlx::test(migrations = false)]
async fn term_statistics_follow_every_chunk_write(pool: PgPool) {
    let config = Config::defaults();
    let (store, user, _) = corpus(pool.clone(), &config).await;
    // Delete one document (its chunks go by cascade) and reprocess another (replace).
    let mut tx = store.user_tx(user).await.expect("tx");
    let docs = ragpipe_store::documents::list(&mut tx, None, None, 100)
        .await
        .expect("list");
    let gone = docs.iter().find(|d| d.filename == "error-codes.md").expect("doc");
    ragpipe_store::documents::delete(&mut tx, ragpipe_core::DocumentId(gone.id))
        .await
        .expect("delete");
    tx.commit().await.expect("commit");
    // No path rewrites a chunk's text in place, and the app role may not (migration 017); the
    // triggers follow such a write all the same, made here as the schema owner.
    sqlx::query("UPDATE document_chunks SET content = content || ' zebracorn' WHERE chunk_index = 0 AND user_id = $1")
        .bind(user.0)
        .execute(&pool)
        .await
        .expect("update");
    // What the triggers kept equals what a full recount gives.
    let mismatches: i64 = sqlx::query_scalar(
        "WITH recount AS (
             SELECT user_id, lexeme, count(*) AS n
             FROM document_chunks, unnest(tsvector_to_array(search_vector)) AS lexeme
             GROUP BY 1, 2)
         SELECT count(*) FROM recount FULL JOIN (SELECT * FROM search_term_stats WHERE chunks > 0) AS s
             USING (user_id, lexeme)
         WHERE recount.n IS DISTINCT FROM s.chunks",
    )
    .fetch_one(&pool)
    .await
    .expect("recount");
    assert_eq!(mismatches, 0);
    let corpus_ok: bool = sqlx::query_scalar(
        "SELECT (SELECT (count(*), sum(token_count)) FROM document_chunks)
                = (SELECT (chunks, tokens) FROM search_corpus_stats)",
    )
    .fetch_one(&pool)
    .await
    .expect("corpus");
    assert!(corpus_ok);
    // The postings likewise: one per chunk and lexeme, with the lexeme's positions as tf and the
    // chunk's length, after inserts, the cascade delete and the text update.
    let mismatches: i64 = sqlx::query_scalar(
        "WITH recount AS (
             SELECT c.user_id, u.lexeme, c.id AS chunk_id, greatest(cardinality(u.positions), 1)::smallint AS tf,
                    c.token_count
             FROM document_chunks AS c, unnest(c.search_vector) AS u)
         SELECT count(*) FROM recount FULL JOIN search_postings AS p USING (user_id, lexeme, chunk_id)
         WHERE (recount.tf, recount.token_count) IS DISTINCT FROM (p.tf, p.token_count)",
    )
    .fetch_one(&pool)
    .await
    .expect("recount postings");
    assert_eq!(mismatches, 0);
    let zebracorn: i64 = sqlx::query_scalar("SELECT count(*) FROM search_postings WHERE lexeme = 'zebracorn'")
        .fetch_one(&pool)
        .await
        .expect("zebracorn");
    assert!(zebracorn > 0, "the updated text's new lexeme has postings");
    let e4127: i32 = sqlx::query_scalar("SELECT chunks FROM search_term_stats WHERE lexeme = 'e4127'")
        .fetch_one(&pool)
        .await
        .expect("row kept at zero");
    assert_eq!(e4127, 0);
}
