//! What several of the store's test files share: a migrated store with one user, and the
//! fusion of equal weights their searches use.
// Each test file uses what it needs of this.
#![allow(dead_code)]

use ragpipe_core::{Config, UserId};
use ragpipe_store::search::Fusion;
use ragpipe_store::{Store, users};
use sqlx::PgPool;

/// The test database migrated with the default configuration, and a user `email`.
pub async fn store_with_user(pool: &PgPool, email: &str) -> (Store, UserId) {
    let store = Store::from_pool(pool.clone());
    store
        .migrate(&Config::defaults().embedding)
        .await
        .expect("migrations apply");
    let user = users::create(
        &store,
        &users::NewUser {
            email: email.into(),
            ..Default::default()
        },
    )
    .await
    .expect("user");
    (store, UserId(user.id))
}

/// Both legs weighed alike, with the usual RRF constant.
pub const EVEN_FUSION: Fusion = Fusion {
    vector_weight: 1.0,
    vector_k: 60.0,
    text_weight: 1.0,
    text_k: 60.0,
};
