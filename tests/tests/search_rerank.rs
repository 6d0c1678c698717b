//! The rerank stage over real PostgreSQL and the test server's `/v1/rerank`: it reorders the
//! fused top N when the reranker answers, records the call as a `rerank` usage event, and
//! when the reranker fails the search still answers in fused order and says why.

mod search_support;

use ragpipe_agent::{QueryUsage, Retriever, SearchHit, SearchRequest};
use ragpipe_core::{Config, ErrorKind, UserId};
use ragpipe_llm::{Embedders, Reranker};
use ragpipe_store::Store;
use ragpipe_store::usage::{self, GroupBy, Period};
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route, lexical_overlap};
use search_support::*;
use sqlx::PgPool;

const QUERIES: [&str; 4] = [
    "What is the nightly hotel limit in Berlin?",
    "how do I rotate an API key",
    "error E4127 when uploading",
    "which plan includes priority support",
];

async fn corpus(pool: PgPool, config: &Config) -> (Store, UserId) {
    let store = migrated(pool, config).await;
    let user = new_user(&store, "a@example.com").await;
    let ready = ingest(&store, config, user, &eval_documents(), no_metadata).await;
    assert_eq!(ready.len(), eval_documents().len());
    (store, user)
}

fn ids(hits: &[SearchHit]) -> Vec<i64> {
    hits.iter().map(|h| h.chunk_id).collect()
}

async fn rerank_events(store: &Store, user: UserId) -> Vec<(String, i64, i32, String)> {
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query_as(
        "SELECT model, prompt_tokens, requests, idempotency_key FROM usage_events \
         WHERE kind = 'rerank' ORDER BY created_at",
    )
    .fetch_all(tx.conn())
    .await
    .expect("usage")
}

#[sqlx::test(migrations = false)]
async fn the_reranker_reorders_the_fused_top_n_and_is_billed(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let config = Config::defaults();
    let (store, user) = corpus(pool, &config).await;
    let fused = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedder"));
    let mut endpoint = server.rerank_endpoint();
    endpoint.top_n = 8;
    let reranker = Reranker::new(&endpoint).expect("reranker").expect("configured");
    let reranked = fused.clone().with_reranker(Some(reranker));
    let mut changed = 0;
    for query in QUERIES {
        let request = SearchRequest {
            k: 5,
            ..SearchRequest::new(query)
        };
        let wide = fused
            .search(
                user,
                &SearchRequest {
                    k: 8,
                    ..request.clone()
                },
            )
            .await
            .expect("fused search");
        let plain = fused
            .search_ranked(user, &request, &QueryUsage::search())
            .await
            .expect("search");
        assert!(plain.rerank.is_none(), "no reranker, no report");
        assert_eq!(ids(&plain.hits), ids(&wide[..5.min(wide.len())]));

        let out = reranked
            .search_ranked(user, &request, &QueryUsage::search())
            .await
            .expect("search");
        let report = out.rerank.as_ref().expect("a report");
        assert!(report.applied && report.reason.is_none(), "{report:?}");
        assert_eq!(report.reranked, wide.len().min(8));
        // The fused top 8 ordered by the server's score, ties kept in fused order.
        let mut expected: Vec<(usize, f64, i64)> = wide
            .iter()
            .enumerate()
            .map(|(i, h)| (i, lexical_overlap(query, &h.content), h.chunk_id))
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let expected: Vec<i64> = expected.iter().take(5).map(|e| e.2).collect();
        assert_eq!(ids(&out.hits), expected, "{query}");
        assert_eq!(report.scores.len(), out.hits.len());
        changed += usize::from(ids(&out.hits) != ids(&plain.hits));
    }
    assert!(changed > 0, "the reranker changed no order: the test proves nothing");

    // One usage event per call, billed what the server counted.
    let events = rerank_events(&store, user).await;
    assert_eq!(events.len(), QUERIES.len());
    let billed = server.billed(Route::Rerank);
    assert_eq!(
        events.iter().map(|e| e.1 as u64).sum::<u64>(),
        billed.prompt_tokens,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.0 == endpoint.model && e.2 == 1 && e.3.starts_with("search:rerank:"))
    );

    // The usage report (`GET /v1/usage?group_by=kind`, `ragpipe usage --by kind`) shows them.
    let mut tx = store.user_tx(user).await.expect("tx");
    let report = usage::report(
        &mut tx,
        Period::from_bounds_now(None, None).expect("this month"),
        GroupBy::Kind,
    )
    .await
    .expect("report");
    let rerank = report.rows.iter().find(|r| r.key == "rerank").expect("a rerank row");
    assert_eq!(rerank.totals.events, QUERIES.len() as i64);
    assert_eq!(rerank.totals.prompt_tokens as u64, billed.prompt_tokens);
}

#[sqlx::test(migrations = false)]
async fn a_failing_reranker_leaves_the_fused_order_and_says_so(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let config = Config::defaults();
    let (store, user) = corpus(pool, &config).await;
    let fused = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedder"));
    let reranker = Reranker::new(&server.rerank_endpoint()).expect("reranker");
    let reranked = fused.clone().with_reranker(reranker);
    let request = SearchRequest::new(QUERIES[0]);
    let plain = fused.search(user, &request).await.expect("search");

    // Down: 500 on the call and on its one retry (transient, retried, then given up).
    server.inject(Route::Rerank, Fault::server_error(), 2);
    let out = reranked
        .search_ranked(user, &request, &QueryUsage::search())
        .await
        .expect("search answers");
    let report = out.rerank.as_ref().expect("a report");
    assert!(!report.applied, "{report:?}");
    let reason = report.reason.as_deref().expect("a reason");
    assert!(reason.contains(&format!("{:?}", ErrorKind::Transient)), "{reason}");
    assert!(reason.contains("HTTP 500") && !reason.contains("127.0.0.1"), "{reason}");
    assert_eq!(ids(&out.hits), ids(&plain), "fused order");
    assert_eq!(
        server.requests_to(Route::Rerank).len(),
        2,
        "one retry of a transient failure"
    );
    let json = serde_json::to_value(&out).expect("json");
    assert_eq!(json["rerank"]["applied"], false, "{json}");
    assert!(json["rerank"]["reason"].is_string(), "{json}");

    // Refused (a 400 is permanent): not retried, fused order again.
    server.inject(
        Route::Rerank,
        Fault::Status {
            status: 400,
            body: r#"{"error":{"message":"unknown model","type":"invalid_request_error"}}"#.into(),
        },
        1,
    );
    let out = reranked
        .search_ranked(user, &request, &QueryUsage::search())
        .await
        .expect("search answers");
    let report = out.rerank.as_ref().expect("a report");
    assert!(!report.applied);
    assert!(
        report
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("Permanent") && r.contains("unknown model"))
    );
    assert_eq!(ids(&out.hits), ids(&plain));
    assert_eq!(
        server.requests_to(Route::Rerank).len(),
        3,
        "a permanent failure is not retried"
    );

    // Nothing answered, nothing billed.
    assert!(rerank_events(&store, user).await.is_empty());

    // And once it is back, it applies again.
    let out = reranked
        .search_ranked(user, &request, &QueryUsage::search())
        .await
        .expect("search");
    assert!(out.rerank.as_ref().is_some_and(|r| r.applied));
    assert_eq!(rerank_events(&store, user).await.len(), 1);
}
