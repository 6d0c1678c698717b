use ragpipe_core::ErrorKind;

/// A database failure, classified so callers can decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration does not describe a usable database.
    #[error("{0}")]
    Config(String),
    /// The database could not be reached.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// The URL, without its password.
        target: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The row asked for does not exist (or belongs to another user).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule refused the write.
    #[error("{0}")]
    Conflict(String),
    /// Applying migrations failed.
    #[error("applying migrations: {0}")]
    Migrate(String),
    /// A value the store writes or reads (a job, a reprocessing run) could not be encoded or
    /// decoded: a defect to fix, never the caller's doing, so not a conflict.
    #[error("{context}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        context: &'static str,
        /// The encoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other database error, with what was being done.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn connect(url: &str, source: sqlx::Error) -> StoreError {
        StoreError::Connect {
            target: redact(url),
            source,
        }
    }

    /// Wraps a driver error with what was being done.
    pub fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { context, source }
    }

    /// Transient (lost connection, pool timeout, serialization failure, deadlock, server
    /// shutting down or not yet accepting connections) or permanent. See [`sqlx_error_kind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Connect { source, .. } | StoreError::Database { source, .. } => sqlx_error_kind(source),
            _ => ErrorKind::Permanent,
        }
    }

    /// Whether the database refused a write as violating a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("23505"))
    }
}

/// Whether retrying what failed with this driver error can help: the one classification of
/// database errors (callers holding a bare `sqlx::Error`, such as the job queue's, use it too).
///
/// Transient: the connection was lost, reset or refused on the way (`Io`, `Tls`, `Protocol`:
/// a message cut mid-way), the pool timed out waiting for a connection, and the server's
/// SQLSTATEs for the same: class `08` (connection exception), `57P01` admin shutdown
/// (`pg_terminate_backend`), `57P02` crash shutdown, `57P03` cannot connect now (starting up,
/// in recovery), `53300` too many connections, `40001` serialization failure and `40P01`
/// deadlock (the transaction was rolled back and can run again). A closed pool (this process is
/// shutting down) is transient too: a job that meets it must go back to the queue for another
/// process, not fail; only retrying in this process is pointless (`retry` stops at once).
/// Everything else is permanent.
pub fn sqlx_error_kind(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Transient,
        sqlx::Error::Database(db) => db.code().map_or(ErrorKind::Permanent, |code| sqlstate_kind(&code)),
        _ => ErrorKind::Permanent,
    }
}

/// The classification of a PostgreSQL SQLSTATE (see [`sqlx_error_kind`]).
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" => ErrorKind::Transient,
        _ if code.starts_with("08") => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// The URL with any password replaced, for error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "08000", "08003", "08006", "08001", "08004", "08P01", "40001", "40P01", "57P01", "57P02", "57P03", "53300",
        ] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Transient, "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014", "53100", "XX000", "55000"] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Permanent, "{code}");
        }
    }

    #[test]
    fn driver_errors_are_classified() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(sqlx_error_kind(&sqlx::Error::Io(reset)), ErrorKind::Transient);
        assert_eq!(sqlx_error_kind(&sqlx::Error::PoolTimedOut), ErrorKind::Transient);
        assert_eq!(
            sqlx_error_kind(&sqlx::Error::Protocol("cut".into())),
            ErrorKind::Transient
        );
        assert_eq!(sqlx_error_kind(&sqlx::Error::PoolClosed), ErrorKind::Transient);
        assert_eq!(sqlx_error_kind(&sqlx::Error::RowNotFound), ErrorKind::Permanent);
        let lost = StoreError::Database {
            context: "reading",
            source: sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof")),
        };
        assert_eq!(lost.kind(), ErrorKind::Transient);
        assert_eq!(StoreError::NotFound("document").kind(), ErrorKind::Permanent);
    }

    /// Real server errors, through the driver: raised SQLSTATEs, a backend terminated under its
    /// own connection (57P01), and the next use of that dead connection (an I/O error).
    #[sqlx::test(migrations = false)]
    async fn server_errors_are_classified_as_they_arrive(pool: sqlx::PgPool) {
        let raise = async |code: &str| {
            let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$");
            let e = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect_err("raised");
            StoreError::db("raising")(e).kind()
        };
        for code in ["40001", "40P01", "08006", "08003", "57P01", "57P03", "53300"] {
            assert_eq!(raise(code).await, ErrorKind::Transient, "{code}");
        }
        for code in ["23505", "22P02", "42501", "57014"] {
            assert_eq!(raise(code).await, ErrorKind::Permanent, "{code}");
        }

        let mut conn = pool.acquire().await.expect("connection");
        let terminated = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut *conn)
            .await
            .expect_err("terminated");
        assert_eq!(StoreError::db("polling")(terminated).kind(), ErrorKind::Transient);
        let dead = sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .expect_err("the connection is gone");
        assert_eq!(
            StoreError::db("polling")(dead).kind(),
            ErrorKind::Transient,
            "the next use of the dead connection"
        );
    }
}
