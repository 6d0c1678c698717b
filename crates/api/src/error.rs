//! The one API error type and its one JSON shape: `{"error": {"code": "...", "message": "..."}}`.
//!
//! Every handler returns `Result<_, Error>` and uses `?`; store errors become statuses here and
//! nowhere else, so a constraint violation means the same status on every route.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ragpipe_core::ErrorKind;
use ragpipe_store::StoreError;
use serde::Serialize;

/// An error as the client sees it: a status, a stable machine-readable `code` and a message
/// meant for a person. Internal details are logged, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, snake_case code clients may match on (`not_found`, `file_too_large`, ...).
    pub code: &'static str,
    /// Readable explanation.
    pub message: String,
}

impl Error {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed (bad parameter, bad multipart, bad JSON).
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401: no API key, or one that is unknown or revoked.
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 for `what` (also for another user's resource: ids must not leak).
    pub fn not_found(what: &str) -> Error {
        Error::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 413 with a specific code (`file_too_large`, `request_too_large`, ...).
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 415: the bytes are not in a format ragpipe reads.
    pub fn unsupported_media_type(message: impl Into<String>) -> Error {
        Error::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format", message)
    }

    /// 500 for a failure the client cannot act on. `detail` is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Error {
        tracing::error!(error = %detail, "internal error");
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// 503 for a failure that may pass (database unreachable, pool exhausted). `detail` is
    /// logged, not sent.
    pub fn unavailable(detail: impl std::fmt::Display) -> Error {
        tracing::warn!(error = %detail, "service unavailable");
        Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable, retry later",
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for Error {}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The one place database failures become statuses.
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match &e {
            StoreError::NotFound(what) => Error::not_found(what),
            StoreError::Conflict(message) => Error::new(StatusCode::CONFLICT, "conflict", message.clone()),
            StoreError::Database { source, .. } => match source {
                sqlx::Error::Database(db) => match db.kind() {
                    // A unique constraint refused the write: the thing already exists.
                    sqlx::error::ErrorKind::UniqueViolation => {
                        Error::new(StatusCode::CONFLICT, "conflict", "conflicts with an existing resource")
                    }
                    // A row referenced something that does not exist, or that row-level
                    // security hides (another user's): the same answer either way, so ids do
                    // not leak.
                    sqlx::error::ErrorKind::ForeignKeyViolation => Error::not_found("referenced resource"),
                    sqlx::error::ErrorKind::CheckViolation | sqlx::error::ErrorKind::NotNullViolation => {
                        tracing::warn!(error = %e, "a constraint refused a write");
                        Error::bad_request("the request has a value the service does not accept")
                    }
                    _ if e.kind() == ErrorKind::Transient => Error::unavailable(&e),
                    _ => Error::internal(&e),
                },
                _ if e.kind() == ErrorKind::Transient => Error::unavailable(&e),
                _ => Error::internal(&e),
            },
            StoreError::Connect { .. } => Error::unavailable(&e),
            StoreError::Config(_) | StoreError::Migrate(_) => Error::internal(&e),
        }
    }
}
