//! Dead workers' rows in `apalis.workers` (one per start, since names are unique per start)
//! are removed, by `jobs::remove_dead_workers` and by every worker start; live workers' rows,
//! rows still holding a job, and the jobs themselves are left alone.

use ragpipe_core::Config;
use ragpipe_store::Store;
use ragpipe_store::jobs::{self, AGENT_QUEUE, INGEST_QUEUE};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn migrated(pool: &PgPool) -> Store {
    let store = Store::from_pool(pool.clone());
    store.migrate(&Config::defaults().embedding).await.expect("migrate");
    store
}

/// A worker row of `queue` last seen `seen_secs_ago` seconds ago (negative: in the future,
/// for a worker that stays fresh through the test).
async fn worker(pool: &PgPool, id: &str, queue: &str, seen_secs_ago: i64) {
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) \
         VALUES ($1, $2, 'PgStorage', '', now() - make_interval(secs => $3))",
    )
    .bind(id)
    .bind(queue)
    .bind(seen_secs_ago as f64)
    .execute(pool)
    .await
    .expect("insert worker");
}

/// A job of `queue` in `status`, locked by `worker`.
async fn job(pool: &PgPool, id: &str, queue: &str, status: &str, worker: &str) {
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, lock_by, lock_at, done_at) \
         VALUES ('{}'::bytea, $1, $2, $3, 1, $4, now() - interval '1 hour', \
                 CASE WHEN $3 IN ('Done', 'Killed', 'Failed') THEN now() - interval '1 hour' END)",
    )
    .bind(id)
    .bind(queue)
    .bind(status)
    .bind(worker)
    .execute(pool)
    .await
    .expect("insert job");
}

async fn workers(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM apalis.workers ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("workers")
}

async fn job_state(pool: &PgPool, id: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, lock_by FROM apalis.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("job")
}

#[sqlx::test(migrations = false)]
async fn dead_workers_without_jobs_are_removed_and_nothing_else(pool: PgPool) {
    let store = migrated(&pool).await;
    worker(&pool, "ingest-dead-idle", INGEST_QUEUE, 3600).await;
    job(&pool, "job-done", INGEST_QUEUE, "Done", "ingest-dead-idle").await;
    job(&pool, "job-failed", INGEST_QUEUE, "Failed", "ingest-dead-idle").await;
    worker(&pool, "ingest-dead-empty", INGEST_QUEUE, 3600).await;
    // Dead, but its job is still marked running: the queue re-queues that job through this row
    // (after three missed heartbeats), so the row must stay until it has.
    worker(&pool, "ingest-dead-running", INGEST_QUEUE, 3600).await;
    job(&pool, "job-orphaned", INGEST_QUEUE, "Running", "ingest-dead-running").await;
    worker(&pool, "ingest-dead-queued", INGEST_QUEUE, 3600).await;
    job(&pool, "job-queued", INGEST_QUEUE, "Queued", "ingest-dead-queued").await;
    // Alive (seen 2 s ago), with a job running.
    worker(&pool, "ingest-live", INGEST_QUEUE, 2).await;
    job(&pool, "job-running", INGEST_QUEUE, "Running", "ingest-live").await;
    // Another queue's dead worker: not this queue's to remove.
    worker(&pool, "agent-dead", AGENT_QUEUE, 3600).await;

    let removed = jobs::remove_dead_workers(&store, INGEST_QUEUE, Duration::from_secs(60))
        .await
        .expect("remove dead workers");
    assert_eq!(removed, 2);
    assert_eq!(
        workers(&pool).await,
        ["agent-dead", "ingest-dead-queued", "ingest-dead-running", "ingest-live"]
    );
    // Finished and failed jobs stay, released from the removed worker; running and queued jobs
    // keep their worker.
    assert_eq!(job_state(&pool, "job-done").await, ("Done".to_owned(), None));
    assert_eq!(job_state(&pool, "job-failed").await, ("Failed".to_owned(), None));
    assert_eq!(
        job_state(&pool, "job-orphaned").await,
        ("Running".to_owned(), Some("ingest-dead-running".to_owned()))
    );
    assert_eq!(
        job_state(&pool, "job-queued").await,
        ("Queued".to_owned(), Some("ingest-dead-queued".to_owned()))
    );
    assert_eq!(
        job_state(&pool, "job-running").await,
        ("Running".to_owned(), Some("ingest-live".to_owned()))
    );

    // Once the queue has re-queued the orphaned job (as apalis does), its worker's row goes too.
    sqlx::query("UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL WHERE id = 'job-orphaned'")
        .execute(&pool)
        .await
        .expect("re-queue");
    let removed = jobs::remove_dead_workers(&store, INGEST_QUEUE, Duration::from_secs(60))
        .await
        .expect("remove dead workers");
    assert_eq!(removed, 1);
    assert_eq!(
        workers(&pool).await,
        ["agent-dead", "ingest-dead-queued", "ingest-live"]
    );
    // Nothing was seen less than the threshold ago and holds nothing: a second call removes
    // nothing more.
    assert_eq!(
        jobs::remove_dead_workers(&store, INGEST_QUEUE, Duration::from_secs(60))
            .await
            .expect("again"),
        0
    );
}

#[sqlx::test(migrations = false)]
async fn starting_workers_removes_dead_rows_of_their_queues(pool: PgPool) {
    let store = migrated(&pool).await;
    for i in 0..5 {
        worker(&pool, &format!("ingest-dead-{i}"), INGEST_QUEUE, 3600).await;
        job(
            &pool,
            &format!("ingest-done-{i}"),
            INGEST_QUEUE,
            "Done",
            &format!("ingest-dead-{i}"),
        )
        .await;
        worker(&pool, &format!("agent-dead-{i}"), AGENT_QUEUE, 3600).await;
    }
    // A live worker of another process, fresh through the test, with a job in flight.
    worker(&pool, "ingest-live", INGEST_QUEUE, -3600).await;
    job(&pool, "job-running", INGEST_QUEUE, "Running", "ingest-live").await;

    let mut config = Config::defaults();
    config.worker.heartbeat_secs = 1;
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let ingest = ragpipe_ingest_worker::spawn(store.clone(), Arc::clone(&config), shutdown.clone());
    let agent = ragpipe_agent_worker::spawn(store.clone(), Arc::clone(&config), shutdown.clone());

    // Each worker removes the dead rows before it registers its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = workers(&pool).await;
        let registered = |kind: &str| {
            rows.iter()
                .any(|w| w.starts_with(&format!("{kind}-")) && !w.contains("-dead-") && w != "ingest-live")
        };
        if registered("ingest") && registered("agent") {
            break rows;
        }
        assert!(Instant::now() < deadline, "the workers never registered: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    ingest.await.expect("join").expect("ingest worker");
    agent.await.expect("join").expect("agent worker");

    assert!(
        rows.iter().all(|w| !w.contains("-dead-")),
        "dead rows are gone: {rows:?}"
    );
    assert!(rows.iter().any(|w| w == "ingest-live"), "{rows:?}");
    assert_eq!(
        job_state(&pool, "job-running").await,
        ("Running".to_owned(), Some("ingest-live".to_owned()))
    );
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(done, 5, "finished jobs are kept");
}
