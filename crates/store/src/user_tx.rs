use crate::{APP_ROLE, StoreError};
use ragpipe_core::UserId;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// A transaction acting as one user: the only way ragpipe touches user data.
///
/// It begins with `SET LOCAL ROLE ragpipe_app` and `set_config('ragpipe.user_id', id, true)`
/// in one round trip. Both are transaction-local, so when the transaction ends (commit,
/// rollback, or drop) the pooled connection returns to its own role with no user set, and the
/// next transaction on that connection inherits nothing.
pub struct UserTx {
    tx: Transaction<'static, Postgres>,
    user: UserId,
}

impl UserTx {
    pub(crate) async fn begin(pool: &PgPool, user: UserId) -> Result<UserTx, StoreError> {
        let mut tx = pool
            .begin()
            .await
            .map_err(StoreError::db("beginning a user transaction"))?;
        sqlx::query("SELECT set_config('role', $1, true), set_config('ragpipe.user_id', $2, true)")
            .bind(APP_ROLE)
            .bind(user.0.to_string())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("switching to the application role"))?;
        Ok(UserTx { tx, user })
    }

    /// The acting user.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// The connection, to run queries on. Row-level security applies to everything run here.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::db("committing"))
    }

    /// Rolls the transaction back (dropping it does the same, without waiting).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(StoreError::db("rolling back"))
    }
}
