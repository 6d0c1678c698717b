//! Transactions that are not one user's: each says why it may run outside a [`UserTx`].
//!
//! User data is read and written through [`UserTx`], where row-level security shows one user's
//! rows. A few operations are not one user's: authenticating a key (the user is not known yet),
//! the operator's reports and monitoring (aggregates across users), the operator's changes to a
//! user's budget (a write the user may not make), batch reprocessing (it selects documents across
//! users), and the tables that are not user data (plans, the embedding model registry, the job
//! queue, the catalog). Each is a [`Reason`], and [`Store::operator_tx`] is the one way to begin
//! such a transaction: the reason decides the role and settings, in the same round trip as
//! `BEGIN`'s first statement, so a call site cannot widen what it sees by accident.
//!
//! The only other path to the pool is the migration runner ([`crate::migrate`]), which owns the
//! schema, besides the read replica's bookkeeping ([`crate::replica`]), which reads WAL positions
//! (server functions, no table).
//!
//! [`UserTx`]: crate::UserTx

use crate::{APP_ROLE, Store, StoreError};
use ragpipe_core::UserId;
use sqlx::{PgConnection, Postgres, Transaction};

/// How long one monitoring statement may run: `/metrics` and `/readyz` must answer even when a
/// table is locked.
pub(crate) const MONITORING_STATEMENT_TIMEOUT: &str = "5s";

/// Why a transaction runs outside one user's row-level security scope, and so what it may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Authenticating an API key: the application role with only the presented key's hash set
    /// (`ragpipe.api_key_sha256`), so the policy on `api_keys` shows that one key's row and no
    /// other user data. [`OperatorTx::act_as`] then acts as the key's owner.
    KeyLookup {
        /// Hex of the presented key's sha256.
        key_sha256: String,
    },
    /// `/metrics`, `/readyz` and the like: the application role with no acting user (so no user
    /// row is visible) and [`MONITORING_STATEMENT_TIMEOUT`]; counts come from security-definer
    /// functions that return aggregates only.
    Monitoring,
    /// The operator's usage report over every user: the application role with no acting user;
    /// the rows come from `ragpipe_usage_by_day()`, which returns per-day aggregates only.
    UsageReport,
    /// The operator sets a user's budget, which `ragpipe_app` may only read: the pool's role
    /// (the schema owner) with that user set, so the table's policy still bounds the write to
    /// their rows.
    QuotaChange(UserId),
    /// Reads of tables that are not user data (`plans`, the embedding model registry, the
    /// catalog) as the pool's role.
    Shared,
    /// The job queue's own tables (`apalis.*`), as the pool's role: job rows carry ids only.
    Queue,
    /// Batch reprocessing selects documents across users (ids and settings, no content); the
    /// pool's role must bypass row-level security ([`crate::reprocess::check_admin`]). Each
    /// document is then reprocessed in its owner's [`crate::UserTx`].
    Reprocess,
}

/// A transaction begun for a [`Reason`]. Dropping it rolls back.
pub(crate) struct OperatorTx {
    tx: Transaction<'static, Postgres>,
}

impl Store {
    /// Begins a transaction for `reason`, with the role and settings the reason allows.
    pub(crate) async fn operator_tx(&self, reason: Reason) -> Result<OperatorTx, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::db("beginning an operator transaction"))?;
        let set = match &reason {
            Reason::KeyLookup { key_sha256 } => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('ragpipe.api_key_sha256', $2, true) AS key",
                APP_ROLE,
                key_sha256,
            )
            .fetch_one(&mut *tx)
            .await
            .map(drop),
            Reason::Monitoring => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('statement_timeout', $2, true) AS timeout",
                APP_ROLE,
                MONITORING_STATEMENT_TIMEOUT,
            )
            .fetch_one(&mut *tx)
            .await
            .map(drop),
            Reason::UsageReport => sqlx::query!("SELECT set_config('role', $1, true)", APP_ROLE)
                .fetch_one(&mut *tx)
                .await
                .map(drop),
            Reason::QuotaChange(user) => {
                sqlx::query!("SELECT set_config('ragpipe.user_id', $1, true)", user.0.to_string())
                    .fetch_one(&mut *tx)
                    .await
                    .map(drop)
            }
            Reason::Shared | Reason::Queue | Reason::Reprocess => Ok(()),
        };
        set.map_err(StoreError::db("setting up an operator transaction"))?;
        Ok(OperatorTx { tx })
    }
}

impl OperatorTx {
    /// The connection, to run queries on.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// From now on acts as `user` (after [`Reason::KeyLookup`] found the key's owner).
    pub(crate) async fn act_as(&mut self, user: UserId) -> Result<(), StoreError> {
        sqlx::query!("SELECT set_config('ragpipe.user_id', $1, true)", user.0.to_string())
            .fetch_one(&mut *self.tx)
            .await
            .map_err(StoreError::db("acting as the key's owner"))?;
        Ok(())
    }

    /// Commits the transaction.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::db("committing"))
    }
}
