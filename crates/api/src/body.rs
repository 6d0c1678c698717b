//! JSON request bodies, and the one check every string from a client passes: no NUL.
//!
//! [`JsonBody`] and [`OptionalJsonBody`] are the extractors of every route that reads JSON.
//! They fail with the JSON error shape and the status that says what is wrong: 415 for a body
//! that is not declared JSON, 413 over the body limit ([`MAX_JSON_BODY_BYTES`]), 400 for broken
//! JSON, a field of the wrong type or an unknown field (naming it), and 400 for a NUL character
//! (`\u0000`) in any string or key, naming the field.
//!
//! NUL is refused rather than removed: PostgreSQL cannot store it in `text` or `jsonb`, and a
//! client that sends one has a bug or is probing; silently changing what they sent (a metadata
//! key, a filter, a model name) would make a filter match something else than what was asked.
//! Query strings ([`crate::params::Query`]) and upload metadata ([`crate::upload`]) use the
//! same check, [`find_nul`].

use crate::Error;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest JSON body, in bytes (the router's default body limit; only uploads take more).
pub const MAX_JSON_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A JSON body deserialized into `T`. The request must say `Content-Type: application/json`
/// (or `application/*+json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, Error> {
        if !declares_json(request.headers()) {
            return Err(not_json());
        }
        let bytes = read(request, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// A JSON body that may be left out: an empty (or blank) body is `T::default()`, whatever
/// its content type; any other body is read as [`JsonBody`] reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<OptionalJsonBody<T>, Error> {
        let json = declares_json(request.headers());
        let bytes = read(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !json {
            return Err(not_json());
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

/// Where the first NUL character of `value` is, described for a person (`` `metadata.author` ``,
/// `` a key of `metadata` ``, `` `document_ids[2]` ``, `the body`); `None` when there is none.
pub fn find_nul(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> Option<String> {
        let here = |path: &str| {
            if path.is_empty() {
                "the body".to_owned()
            } else {
                format!("`{path}`")
            }
        };
        match value {
            Value::String(s) if s.contains('\0') => Some(here(path)),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            Value::Object(map) => map.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    return Some(if path.is_empty() {
                        "a key of the body".to_owned()
                    } else {
                        format!("a key of `{path}`")
                    });
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    walk(value, &mut String::new())
}

/// 400 for a NUL character in `field` (as [`find_nul`] describes it).
pub fn nul_error(field: &str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("{field} contains a NUL character (\\u0000), which text here cannot hold"),
    )
}

/// Whether the request declares a JSON body.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn not_json() -> Error {
    Error::from_status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "expected a JSON body: send `Content-Type: application/json`",
    )
}

/// The whole body, within the route's body limit.
async fn read<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(request, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::too_large(
                "request_too_large",
                format!("the request body is over the limit of {MAX_JSON_BODY_BYTES} bytes"),
            )
        } else {
            Error::bad_request(format!("reading the request body: {}", e.body_text()))
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // A NUL can only arrive as the escape `\u0000` (a raw control character is not valid
    // JSON), so the body is walked for it only when those bytes are there.
    if bytes.windows(6).any(|w| w == br"\u0000")
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
        && let Some(field) = find_nul(&value)
    {
        return Err(nul_error(&field));
    }
    axum::Json::<T>::from_bytes(bytes)
        .map(|axum::Json(body)| body)
        .map_err(|e| Error::bad_request(e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_anywhere_and_named() {
        assert_eq!(find_nul(&json!({"query": "fine", "k": 3})), None);
        assert_eq!(find_nul(&json!("a\u{0}")), Some("the body".to_owned()));
        assert_eq!(find_nul(&json!({"query": "a\u{0}b"})), Some("`query`".to_owned()));
        assert_eq!(
            find_nul(&json!({"metadata": {"team": {"name": "x\u{0}"}}})),
            Some("`metadata.team.name`".to_owned())
        );
        assert_eq!(
            find_nul(&json!({"metadata": {"te\u{0}am": "x"}})),
            Some("a key of `metadata`".to_owned())
        );
        assert_eq!(find_nul(&json!({"a\u{0}": 1})), Some("a key of the body".to_owned()));
        assert_eq!(
            find_nul(&json!({"ids": ["ok", "no\u{0}"]})),
            Some("`ids[1]`".to_owned())
        );
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_not_a_nul() {
        #[derive(serde::Deserialize)]
        struct Q {
            query: String,
        }
        let q: Q = parse(br#"{"query": "C:\\u0000"}"#).expect("no NUL there");
        assert_eq!(q.query, "C:\\u0000");
        let e = parse::<Q>(br#"{"query": "a\u0000"}"#).err().expect("a NUL");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("`query`"), "{e}");
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!declares_json(&h));
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, value.parse().expect("header value"));
            assert_eq!(declares_json(&h), json, "{value}");
        }
    }
}
