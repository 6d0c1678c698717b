//! A model's vector index deferred for a bulk write of its vectors and built once after: the
//! deferral holds against `ensure` (what `ragpipe migrate` and every worker run at start), the
//! build clears it, a model with chunks keeps its index, and an index left invalid by a failed
//! concurrent build is built again. Against a real PostgreSQL with pgvector.

use ragpipe_core::Config;
use ragpipe_store::Store;
use ragpipe_store::embedding_models::{self, IndexState};
use sqlx::PgPool;

const MODEL: &str = "deferred-test-8";
const DIM: u32 = 8;

async fn oid(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(embedding_models::index_name(MODEL, DIM))
        .fetch_one(pool)
        .await
        .expect("index oid")
}

#[sqlx::test(migrations = false)]
async fn a_deferred_index_stays_out_until_built_and_an_invalid_one_is_built_again(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    store.migrate(&Config::defaults().embedding).await.expect("migrate");
    assert!(
        embedding_models::ensure(&store, MODEL, DIM, None)
            .await
            .expect("ensure")
    );
    assert_eq!(
        embedding_models::index_state(&store, MODEL, DIM).await.expect("state"),
        IndexState::Valid
    );

    // No chunk uses the model: the index is dropped, and a process starting meanwhile does not
    // build it back.
    assert!(embedding_models::defer_index(&store, MODEL, DIM).await.expect("defer"));
    assert_eq!(oid(&pool).await, None);
    assert!(
        !embedding_models::ensure(&store, MODEL, DIM, None)
            .await
            .expect("ensure")
    );
    assert_eq!(
        embedding_models::index_state(&store, MODEL, DIM).await.expect("state"),
        IndexState::Missing
    );

    // Built once: valid, and the deferral is over (ensure has nothing to do, and would build a
    // missing index again).
    assert!(
        embedding_models::build_index(&store, MODEL, DIM, "64MB")
            .await
            .expect("build")
    );
    assert_eq!(
        embedding_models::index_state(&store, MODEL, DIM).await.expect("state"),
        IndexState::Valid
    );
    let deferred: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT index_deferred_at FROM embedding_models WHERE model = $1")
            .bind(MODEL)
            .fetch_one(&pool)
            .await
            .expect("deferral");
    assert_eq!(deferred, None);
    assert!(
        !embedding_models::build_index(&store, MODEL, DIM, "64MB")
            .await
            .expect("build")
    );

    // A concurrent build that failed leaves an invalid index, which PostgreSQL never reads: it
    // is dropped and built again.
    let before = oid(&pool).await.expect("index");
    sqlx::query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::int8::oid")
        .bind(before)
        .execute(&pool)
        .await
        .expect("mark invalid");
    assert_eq!(
        embedding_models::index_state(&store, MODEL, DIM).await.expect("state"),
        IndexState::Invalid
    );
    assert!(
        embedding_models::build_index(&store, MODEL, DIM, "64MB")
            .await
            .expect("build")
    );
    assert_ne!(oid(&pool).await, Some(before), "a new index");
    assert_eq!(
        embedding_models::index_state(&store, MODEL, DIM).await.expect("state"),
        IndexState::Valid
    );
}
