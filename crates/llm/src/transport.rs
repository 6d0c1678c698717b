//! The HTTP layer under async-openai: our own endpoint configuration and transport.
//!
//! async-openai's default transport retries 429/5xx on its own (uncounted, up to 8 s apart)
//! and drops the status line and headers of failed responses, so `Retry-After` is lost and
//! errors cannot be classified. This module replaces it (through async-openai's tower
//! `middleware` hook) with a transport that turns every non-success response into an
//! [`HttpFailure`] carrying the status, the wait the server asked for and a bounded part of the
//! body. async-openai still builds the requests and parses the JSON and SSE responses.
//!
//! The configuration is ours too: async-openai's `OpenAIConfig` reads `OPENAI_API_KEY`,
//! `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` from the environment and would send them to
//! whatever base URL is configured.

use crate::LlmError;
use crate::error::classify_status;
use async_openai::error::{OpenAIError, StreamError};
use async_openai::middleware::HttpRequestFactory;
use ragpipe_core::config::ModelEndpoint;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::SecretString;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an error response kept for its message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Longest time to establish a connection, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Base URL and key of one OpenAI-compatible endpoint. Sends `Authorization` only when a key
/// is configured and nothing from the environment.
#[derive(Clone)]
pub(crate) struct EndpointConfig {
    base_url: String,
    key: SecretString,
    headers: HeaderMap,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl async_openai::config::Config for EndpointConfig {
    fn headers(&self) -> HeaderMap {
        self.headers.clone()
    }
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
    fn query(&self) -> Vec<(&str, &str)> {
        Vec::new()
    }
    fn api_base(&self) -> &str {
        &self.base_url
    }
    fn api_key(&self) -> &SecretString {
        &self.key
    }
}

/// A ready client for one endpoint.
#[derive(Clone)]
pub(crate) struct ApiClient {
    pub client: async_openai::Client<EndpointConfig>,
    pub base_url: String,
    pub timeout: Duration,
    /// The client and headers for routes async-openai does not know ([`ApiClient::post_json`]),
    /// behind one pointer so that the client stays small.
    json: std::sync::Arc<(reqwest::Client, HeaderMap)>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds the client for `endpoint`, whose settings are named `section.*` in errors.
    pub fn new(endpoint: &ModelEndpoint, base_url: &str, section: &'static str) -> Result<ApiClient, LlmError> {
        let invalid = |setting: &'static str, message: String| LlmError::InvalidConfig { setting, message };
        let base_url = base_url.trim().trim_end_matches('/').to_owned();
        let url_setting = match section {
            "chat" => "chat.base_url",
            "rerank" => "rerank.base_url",
            _ => "embedding.base_url",
        };
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| invalid(url_setting, format!("{base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(
                url_setting,
                format!("{base_url:?}: only http and https URLs are supported"),
            ));
        }
        let mut headers = HeaderMap::new();
        let key = endpoint.api_key.as_deref().map(str::trim).filter(|k| !k.is_empty());
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                invalid(
                    match section {
                        "chat" => "chat.api_key",
                        "rerank" => "rerank.api_key",
                        _ => "embedding.api_key",
                    },
                    "contains characters not allowed in an HTTP header".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let timeout = Duration::from_secs(endpoint.timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .build()
            .map_err(|e| invalid(url_setting, format!("building the HTTP client: {e}")))?;
        let config = EndpointConfig {
            base_url: base_url.clone(),
            key: SecretString::from(key.unwrap_or_default()),
            headers,
        };
        let json = std::sync::Arc::new((http.clone(), config.headers.clone()));
        let client = async_openai::Client::build(http.clone(), config).with_http_service(HttpTransport { http });
        Ok(ApiClient {
            client,
            base_url,
            timeout,
            json,
        })
    }

    /// POSTs `body` as JSON to `{base_url}{path}` and reads the JSON answer, for routes
    /// async-openai does not know (`/rerank`). Failures are classified like every other call:
    /// a non-success status by [`classify_status`], a lost connection or a body cut short as
    /// transient, an unreadable answer as permanent. The caller applies the timeout.
    pub async fn post_json<B: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        context: &str,
        path: &str,
        body: &B,
    ) -> Result<R, LlmError> {
        let url = format!("{}{}", self.base_url, path);
        let connection = |e: reqwest::Error| LlmError::Connection {
            context: context.to_owned(),
            message: error_chain(&e),
        };
        let (http, headers) = &*self.json;
        let response = http
            .post(&url)
            .headers(headers.clone())
            .json(body)
            .send()
            .await
            .map_err(connection)?;
        if !response.status().is_success() {
            return Err(status_error(context, &HttpFailure::read(response).await));
        }
        let bytes = response.bytes().await.map_err(connection)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let content = String::from_utf8_lossy(&bytes).into_owned();
            map_error(context, OpenAIError::JSONDeserialize(e, content))
        })
    }
}

/// The tower service async-openai sends every request through.
#[derive(Clone)]
struct HttpTransport {
    http: reqwest::Client,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower_service::Service<HttpRequestFactory> for HttpTransport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = request.build().await?;
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            if response.status().is_success() {
                return Ok(response);
            }
            Err(OpenAIError::Boxed(Box::new(HttpFailure::read(response).await)))
        })
    }
}

/// A non-success response: status, requested wait and the start of the body.
#[derive(Debug)]
pub(crate) struct HttpFailure {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpFailure {}

impl HttpFailure {
    async fn read(mut response: reqwest::Response) -> HttpFailure {
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        // A body that fails half-way still says something; the status is what matters.
        while body.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_LIMIT - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        HttpFailure {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// The wait a response asks for: OpenAI's `retry-after-ms`, else `Retry-After` in seconds.
/// (The HTTP-date form of `Retry-After` is not understood; backoff applies instead.)
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0));
    }
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// The message, code and type of an error body in any of the shapes servers use:
/// `{"error": {"message", "type", "code"}}` (OpenAI, vLLM, llama.cpp), `{"error": "..."}`
/// (Ollama, TEI), `{"detail": ...}` (FastAPI), or plain text.
fn describe_body(body: &str) -> (String, Option<String>, Option<String>) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return (body.trim().chars().take(500).collect(), None, None);
    };
    let error = json.get("error").or_else(|| json.get("detail")).unwrap_or(&json);
    match error {
        serde_json::Value::Object(o) => {
            let message = o.get("message").and_then(text).unwrap_or_else(|| error.to_string());
            (message, o.get("code").and_then(text), o.get("type").and_then(text))
        }
        other => (text(other).unwrap_or_default(), None, None),
    }
}

/// Turns an HTTP failure into a classified error.
fn status_error(context: &str, failure: &HttpFailure) -> LlmError {
    let (message, code, error_type) = describe_body(&failure.body);
    let kind = classify_status(failure.status, code.as_deref(), error_type.as_deref(), &message);
    LlmError::Status {
        context: context.to_owned(),
        status: failure.status,
        message: if message.is_empty() {
            "(no message)".into()
        } else {
            message
        },
        retry_after: failure.retry_after,
        kind,
    }
}

/// Classifies an error from a server's error object sent inside an SSE stream.
pub(crate) fn stream_error(context: &str, error: &serde_json::Value) -> LlmError {
    let (message, code, error_type) = describe_body(&serde_json::json!({ "error": error }).to_string());
    // No status: treat it as the server failing (transient) unless its code says otherwise.
    let kind = classify_status(500, code.as_deref(), error_type.as_deref(), &message);
    LlmError::StreamError {
        context: context.to_owned(),
        message,
        kind,
    }
}

/// Classifies whatever async-openai returned.
pub(crate) fn map_error(context: &str, error: OpenAIError) -> LlmError {
    let context = context.to_owned();
    match error {
        OpenAIError::Boxed(inner) => match inner.downcast_ref::<HttpFailure>() {
            Some(failure) => status_error(&context, failure),
            None => LlmError::Connection {
                context,
                message: inner.to_string(),
            },
        },
        OpenAIError::ApiError(api) => {
            let error_type = api.api_error.r#type.as_deref();
            let code = api.api_error.code.as_deref();
            let status = api.status_code.as_u16();
            let kind = classify_status(status, code, error_type, &api.api_error.message);
            LlmError::Status {
                context,
                status,
                message: api.api_error.message.clone(),
                retry_after: None,
                kind,
            }
        }
        OpenAIError::Reqwest(e) if e.is_builder() => LlmError::InvalidConfig {
            setting: "base_url",
            message: e.to_string(),
        },
        OpenAIError::Reqwest(e) => LlmError::Connection {
            context,
            message: error_chain(&e),
        },
        // A body that ends inside the document was cut, not malformed: with no length to check
        // (an HTTP/1.0-style body that ends at the close) the transport cannot tell.
        OpenAIError::JSONDeserialize(e, content) if e.is_eof() => LlmError::Truncated {
            context,
            received_bytes: content.len(),
            source: e,
        },
        OpenAIError::JSONDeserialize(e, content) => LlmError::Protocol {
            context,
            message: format!("{e} in {:?}", content.chars().take(300).collect::<String>()),
        },
        // The SSE parser reports transport failures (a body cut mid-stream) this way.
        OpenAIError::StreamError(inner) => match *inner {
            StreamError::EventStream(message) => LlmError::Connection { context, message },
            other => LlmError::Protocol {
                context,
                message: other.to_string(),
            },
        },
        other => LlmError::Protocol {
            context,
            message: other.to_string(),
        },
    }
}

/// An error with its sources, so "error sending request" also says "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_core::ErrorKind;

    #[test]
    fn error_bodies_of_every_shape() {
        let (m, c, t) = describe_body(r#"{"error":{"message":"slow down","type":"rate_limit_error","code":null}}"#);
        assert_eq!(
            (m.as_str(), c, t.as_deref()),
            ("slow down", None, Some("rate_limit_error"))
        );
        assert_eq!(describe_body(r#"{"error":"model not found"}"#).0, "model not found");
        assert_eq!(describe_body(r#"{"detail":"Not Found"}"#).0, "Not Found");
        assert_eq!(describe_body("Bad Gateway").0, "Bad Gateway");
    }

    #[test]
    fn failures_are_classified() {
        let f = HttpFailure {
            status: 429,
            retry_after: Some(Duration::from_secs(1)),
            body: "{}".into(),
        };
        let e = map_error("embedding", OpenAIError::Boxed(Box::new(f)));
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        let f = HttpFailure {
            status: 400,
            retry_after: None,
            body: r#"{"error":{"message":"This model's maximum context length is 512 tokens"}}"#.into(),
        };
        assert_eq!(status_error("x", &f).kind(), ErrorKind::ContextTooLong);
    }

    #[test]
    fn a_body_cut_inside_the_json_is_transient_and_a_malformed_one_permanent() {
        let parse = |body: &str| match serde_json::from_str::<serde_json::Value>(body) {
            Err(e) => map_error("embedding", OpenAIError::JSONDeserialize(e, body.to_owned())),
            Ok(v) => panic!("{body} parsed: {v}"),
        };
        let cut = parse(r#"{"data":[{"embedding":[0.1,0.2"#);
        assert!(matches!(cut, LlmError::Truncated { received_bytes: 30, .. }), "{cut}");
        assert_eq!(cut.kind(), ErrorKind::Transient);
        let malformed = parse(r#"{"data":[{"embedding":[0.1,}]}"#);
        assert!(matches!(malformed, LlmError::Protocol { .. }), "{malformed}");
        assert_eq!(malformed.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut d = HeaderMap::new();
        d.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&d), None);
    }
}
