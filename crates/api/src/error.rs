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

    /// An error for `status` with the code this API uses for it everywhere, for answers that
    /// are decided by the status alone: extractor rejections, body limits, and the requests
    /// hyper refuses before any route sees them ([`crate::protocol_errors`]).
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Error {
        Error::new(status, code_for_status(status), message)
    }

    /// The response body, `{"error": {"code": "...", "message": "..."}}`, as bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        };
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec())
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

/// The one JSON shape of every error response: `{"error": {"code", "message"}}`. What an
/// `Error` is sent as, and what the OpenAPI document says every error status answers with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Error, example = json!({"error": {"code": "not_found", "message": "document not found"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What an error response says.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code clients may match on (`not_found`, `unauthorized`,
    /// `invalid_request`, `file_too_large`, `unsupported_format`, ...).
    pub code: String,
    /// Readable explanation, meant for a person.
    pub message: String,
}

/// The code of an error known only by its status (see [`Error::from_status`]).
fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => "http_version_not_supported",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            self.body_bytes(),
        )
            .into_response();
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

/// SQLSTATE 22P05: a JSON `\u0000` escape (or another character the encoding lacks).
const UNTRANSLATABLE_CHARACTER: &str = "22P05";
/// SQLSTATE 22021: a NUL byte (or invalid UTF-8) in a text value.
const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

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
                    // Text the database cannot hold: a NUL character in a text value (22021,
                    // "invalid byte sequence for encoding UTF8: 0x00") or a `\u0000` escape in
                    // a JSON value (22P05). Requests are checked for NUL before they get here
                    // (`crate::body`, `crate::params`, `crate::upload`); this is the net for a
                    // path that is not, so the client is told it is their input, not a 500.
                    _ if matches!(
                        db.code().as_deref(),
                        Some(UNTRANSLATABLE_CHARACTER | CHARACTER_NOT_IN_REPERTOIRE)
                    ) =>
                    {
                        tracing::warn!(error = %e, "the database refused text in a request");
                        Error::bad_request(
                            "the request has text the database cannot store (a NUL character, `\\u0000`?)",
                        )
                    }
                    _ if e.kind() == ErrorKind::Transient => Error::unavailable(&e),
                    _ => Error::internal(&e),
                },
                _ if e.kind() == ErrorKind::Transient => Error::unavailable(&e),
                _ => Error::internal(&e),
            },
            StoreError::Connect { .. } => Error::unavailable(&e),
            StoreError::Config(_) | StoreError::Migrate(_) | StoreError::Codec { .. } => Error::internal(&e),
        }
    }
}

/// Longest error body [`json_errors`] reads to turn into a message.
const MAX_REWRITTEN_BODY_BYTES: usize = 16 * 1024;

/// Middleware on every router: an error response that does not already have the JSON shape
/// (a plain-text rejection of one of axum's extractors, a body limit, anything a layer answers)
/// is rewritten into it, with the same status and headers and its text as the message. Server
/// errors get a generic message; their text is logged.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REWRITTEN_BODY_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), body = %text, "a plain-text server error");
        "internal error".to_owned()
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut rewritten = Error::from_status(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Whether the headers say the body is JSON.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the body");
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    #[tokio::test]
    async fn plain_text_errors_are_rewritten_into_the_shape_keeping_status_and_headers() {
        let plain = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::ALLOW, "GET")],
            "Expected request with `Content-Type: application/json`",
        )
            .into_response();
        let rewritten = json_errors(plain).await;
        assert_eq!(rewritten.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(is_json(rewritten.headers()));
        assert_eq!(rewritten.headers()[header::ALLOW], "GET");
        assert_eq!(
            body_of(rewritten).await,
            serde_json::json!({"error": {
                "code": "unsupported_media_type",
                "message": "Expected request with `Content-Type: application/json`",
            }})
        );

        // An empty body gets the status's reason; a server error's text is not sent.
        let rewritten = json_errors(StatusCode::PAYLOAD_TOO_LARGE.into_response()).await;
        assert_eq!(body_of(rewritten).await["error"]["message"], "Payload Too Large");
        let secret = (StatusCode::INTERNAL_SERVER_ERROR, "Missing request extension: AppState").into_response();
        let rewritten = json_errors(secret).await;
        assert_eq!(rewritten.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body_of(rewritten).await,
            serde_json::json!({"error": {"code": "internal", "message": "internal error"}})
        );
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_encoded_is_a_server_error_not_a_conflict() {
        let codec = StoreError::Codec {
            context: "encoding a job",
            source: "key must be a string".into(),
        };
        let response = Error::from(codec).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body_of(response).await["error"]["code"], "internal");
        // A real conflict stays one.
        let conflict = Error::from(StoreError::Conflict("the document is being reprocessed".into())).into_response();
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn json_answers_and_successes_pass_untouched() {
        let ok = (StatusCode::OK, "plain text is fine here").into_response();
        let passed = json_errors(ok).await;
        assert_eq!(passed.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(passed.into_body(), 1024).await.expect("body");
        assert_eq!(&bytes[..], b"plain text is fine here");

        let error = Error::new(StatusCode::CONFLICT, "conflict", "already there");
        let passed = json_errors(error.clone().into_response()).await;
        assert_eq!(
            body_of(passed).await,
            serde_json::json!({"error": {"code": "conflict", "message": "already there"}})
        );
    }
}
