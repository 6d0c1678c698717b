//! The `TestApp` harness itself: background tasks start with the app, share its store and
//! configuration, and stop when it shuts down.

use ragpipe_tests::app::TestApp;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[sqlx::test(migrations = false)]
async fn tasks_start_with_the_app_and_stop_with_it(pool: PgPool) {
    let probe = pool.clone();
    let stopped = Arc::new(AtomicBool::new(false));
    let seen_stop = stopped.clone();
    let app = TestApp::builder(pool)
        .config(|c| c.worker.max_attempts = 3)
        .with_task("probe", move |_store, config, shutdown| {
            tokio::spawn(async move {
                // The schema is migrated before any task starts.
                let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                    .fetch_one(&probe)
                    .await
                    .expect("the schema exists");
                shutdown.cancelled().await;
                seen_stop.store(true, Ordering::SeqCst);
                (users, config.worker.max_attempts)
            })
        })
        .start()
        .await;
    assert_eq!(app.config.worker.max_attempts, 3);
    let (status, _) = app.get_json("rp_nobody", "/v1/documents").await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert!(!stopped.load(Ordering::SeqCst));
    app.shutdown().await;
    assert!(stopped.load(Ordering::SeqCst), "the task saw the shutdown");
}
