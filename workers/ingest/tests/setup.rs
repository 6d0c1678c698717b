//! A worker that cannot be set up ends with a typed error that keeps what could not be built
//! and why, and says so in its liveness report: nothing is flattened into a string.

use ragpipe_core::{Config, SetupError};
use ragpipe_ingest_worker::WorkerError;
use ragpipe_store::Store;
use ragpipe_store::liveness::{Liveness, State};
use std::error::Error;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_worker_that_cannot_start_keeps_the_cause_in_its_error_and_its_report() {
    let mut config = Config::defaults();
    config.embedding.provider = Some("hashed".into());
    config.prices = Some("this is not a price table".into());
    // Never connected: the context fails before the worker touches the database.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:9/none")
        .expect("a lazy pool");
    let liveness = Liveness::new();
    let handle = ragpipe_ingest_worker::spawn_supervised(
        Store::from_pool(pool),
        Arc::new(config),
        CancellationToken::new(),
        &liveness,
    );
    let err = handle
        .await
        .expect("the task ends")
        .expect_err("the worker cannot start");
    assert!(matches!(err, WorkerError::Setup { queue: "ingest", .. }), "{err:?}");
    let setup = err
        .source()
        .and_then(|s| s.downcast_ref::<SetupError>())
        .expect("the setup error is the source");
    assert_eq!(setup.what, "RAGPIPE_PRICES");
    assert!(setup.source().is_some(), "the parse error is kept under it");

    let report = liveness.report();
    let ingest = report.iter().find(|c| c.name == "ingest").expect("registered");
    assert_eq!(ingest.state, State::Dead);
    let last_error = ingest.last_error.as_deref().unwrap_or_default();
    assert!(last_error.contains("RAGPIPE_PRICES"), "{last_error}");
}
