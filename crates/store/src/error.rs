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

    /// Transient (lost connection, pool timeout, serialization failure, deadlock) or permanent.
    pub fn kind(&self) -> ErrorKind {
        let source = match self {
            StoreError::Connect { source, .. } | StoreError::Database { source, .. } => source,
            _ => return ErrorKind::Permanent,
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => {
                ErrorKind::Transient
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // serialization_failure, deadlock_detected, admin/crash shutdown, cannot_connect_now,
                // too_many_connections
                Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300") => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            },
            _ => ErrorKind::Permanent,
        }
    }

    /// Whether the database refused a write as violating a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("23505"))
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
