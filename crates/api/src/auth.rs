//! Bearer API key authentication: the extractor every user route takes.

use crate::{AppState, Error};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ragpipe_store::api_keys::{self, Authenticated};

/// The caller, authenticated by `Authorization: Bearer <key>`. Taking it as a handler argument
/// is what makes a route require a key; a missing, malformed, unknown or revoked key is a 401
/// with the JSON error shape before the handler runs.
#[derive(Debug, Clone, Copy)]
pub struct Auth(pub Authenticated);

impl std::ops::Deref for Auth {
    type Target = Authenticated;
    fn deref(&self) -> &Authenticated {
        &self.0
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Error::unauthorized("missing API key: send `Authorization: Bearer <key>`"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or_else(|| Error::unauthorized("malformed Authorization header: expected `Bearer <key>`"))?;
        let authenticated = api_keys::authenticate(&state.store, key)
            .await?
            .ok_or_else(|| Error::unauthorized("invalid or revoked API key"))?;
        tracing::Span::current().record("user_id", tracing::field::display(authenticated.user_id));
        Ok(Auth(authenticated))
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        assert_eq!(bearer_token("Bearer rp_abc"), Some("rp_abc"));
        assert_eq!(bearer_token("bearer  rp_abc "), Some("rp_abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
