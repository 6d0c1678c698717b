//! What several of the store's test files share: a migrated store with one user, the fusion
//! of equal weights their searches use, and BM25 computed from the chunks alone.
// Each test file uses what it needs of this.
#![allow(dead_code)]

use ragpipe_core::{Config, UserId};
use ragpipe_store::search::Fusion;
use ragpipe_store::{Store, users};
use sqlx::PgPool;
use uuid::Uuid;

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

/// BM25 (k1 1.2, b 0.75, idf ln(1 + (N - df + 0.5) / (df + 0.5))) over `lexemes` from
/// document_chunks alone (df, tf and lengths read from the tsvectors, N and the mean length over
/// every chunk), for the chunks of `documents` (`None`: all): (chunk id, content, score).
pub async fn bm25_reference(pool: &PgPool, lexemes: &[&str], documents: Option<&[Uuid]>) -> Vec<(i64, String, f64)> {
    sqlx::query_as(
        "WITH n AS (SELECT count(*)::float8 AS n, avg(token_count)::float8 AS avg FROM document_chunks),
              tf AS (SELECT c.id, c.document_id, c.content, c.token_count, u.lexeme,
                            cardinality(u.positions)::float8 AS tf
                     FROM document_chunks AS c, unnest(c.search_vector) AS u
                     WHERE u.lexeme = ANY ($1)),
              df AS (SELECT lexeme, count(*)::float8 AS df FROM tf GROUP BY lexeme)
         SELECT tf.id, tf.content,
                sum(ln(1 + (n.n - df.df + 0.5) / (df.df + 0.5)) * tf.tf * 2.2
                    / (tf.tf + 1.2 * (1 - 0.75 + 0.75 * tf.token_count / n.avg)))
         FROM tf JOIN df USING (lexeme), n
         WHERE $2::uuid[] IS NULL OR tf.document_id = ANY ($2)
         GROUP BY tf.id, tf.content",
    )
    .bind(lexemes)
    .bind(documents)
    .fetch_all(pool)
    .await
    .expect("BM25 reference")
}
