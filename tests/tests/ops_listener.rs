//! The operations endpoints live on a listener of their own: `/metrics` (counts across all
//! users) is not on the API listener, whose `/readyz` says only ready or not.

use ragpipe_tests::app::{TestApp, error_code, json_of};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn metrics_are_served_on_the_ops_listener_and_not_on_the_api(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    app.upload_one(&alice.key, "a.txt", "The keeper trims the wick.").await;

    // The API listener: no /metrics, whether or not a key is presented.
    let (status, body) = json_of(app.client.get(app.url("/metrics")).send().await.expect("GET")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "not_found", "{body}");
    let (status, body) = app.get_json(&alice.key, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = json_of(app.client.get(app.url("/healthz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    // The ops listener: the metrics, with the cross-user document counts.
    let response = app.client.get(app.ops_url("/metrics")).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let scraped = response.text().await.expect("the metrics");
    assert!(scraped.contains("ragpipe_documents{status=\"queued\"} 1"), "{scraped}");
    let (status, body) = json_of(app.client.get(app.ops_url("/healthz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = json_of(app.client.get(app.ops_url("/readyz")).send().await.expect("GET")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
    // It serves nothing else: no API route there.
    let (status, body) = app
        .client
        .get(app.ops_url("/v1/documents"))
        .bearer_auth(&alice.key)
        .send()
        .await
        .map(json_of)
        .expect("GET")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn the_public_readyz_says_not_ready_without_the_reason(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // The schema looks one migration behind this build.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(app.pool())
        .await
        .expect("forgetting a migration");

    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.expect("GET")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({"error": {"code": "not_ready", "message": "not ready"}}),
        "the public answer tells nothing of the inside"
    );

    let (status, body) = json_of(app.client.get(app.ops_url("/readyz")).send().await.expect("GET")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "migrations_pending", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ragpipe migrate")),
        "the ops answer says what is wrong: {body}"
    );
    app.shutdown().await;
}
