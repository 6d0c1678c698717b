//! Request parameters that fail with the JSON error shape instead of axum's plain-text
//! rejections: query strings and ids in paths. Like bodies ([`crate::body`]), a query
//! parameter with a NUL character is refused, naming it.

use crate::Error;
use crate::body::nul_error;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A query string deserialized into `T`; a bad one (or one with a NUL character, decoded from
/// `%00`) is a 400 naming the problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, Error> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| Error::bad_request(e.body_text()))?;
        for (name, value) in &pairs.0 {
            if name.contains('\0') {
                return Err(nul_error("a query parameter's name"));
            }
            if value.contains('\0') {
                let shown: String = name.chars().take(64).collect();
                return Err(nul_error(&format!("query parameter `{shown}`")));
            }
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| Error::bad_request(e.body_text()))
    }
}

/// The single `{id}` path parameter as a UUID; anything else is a 400 (not a 404: the client
/// sent something that cannot be an id at all).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<IdPath, Error> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::bad_request(e.body_text()))?;
        Uuid::parse_str(&raw).map(IdPath).map_err(|_| {
            let shown: String = raw.chars().take(64).collect();
            Error::bad_request(format!("invalid id {shown:?}: expected a UUID"))
        })
    }
}
