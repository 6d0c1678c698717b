//! A cross-encoder reranker over the de-facto `/rerank` wire format served by Cohere, Jina,
//! Hugging Face TEI and vLLM: `{model, query, documents, top_n}` →
//! `{results: [{index, relevance_score}], usage?}`.
//!
//! Failures are classified like the other model calls (429, 5xx, timeouts, lost connections
//! transient and retried with backoff; other 4xx permanent). The caller decides what a failure
//! means for its search: ragpipe keeps the fused order and says so.

use crate::embed::ClientOptions;
use crate::retry::CallCounters;
use crate::transport::ApiClient;
use crate::{CallTotals, LlmError, RetryPolicy, TokenCounter};
use ragpipe_core::config::ModelEndpoint;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One document's place after reranking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ranked {
    /// Its index in the documents sent.
    pub index: usize,
    /// The model's relevance score (higher is more relevant).
    pub score: f64,
}

/// What one [`Reranker::rerank`] call returned and cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reranked {
    /// Every document sent, best first: the ones the model scored in its order, then any it
    /// left out in their original order (scored `-inf`).
    pub order: Vec<Ranked>,
    /// Tokens billed: the server's reported tokens when it sends them, otherwise the tiktoken
    /// count of the query once per document plus the (cut) documents.
    pub tokens: u64,
    /// HTTP requests made, retries included.
    pub requests: u32,
    /// Requests that were retries of a failed one.
    pub retries: u32,
    /// Documents cut to `max_input_tokens`.
    pub truncated: u32,
}

/// A `/rerank` client. Cheap to clone, `Send + Sync`; share one per process.
#[derive(Clone, Debug)]
pub struct Reranker {
    inner: Arc<RerankerInner>,
}

#[derive(Debug)]
struct RerankerInner {
    model: String,
    top_n: usize,
    max_input_tokens: usize,
    api: ApiClient,
    tokens: TokenCounter,
    retry: RetryPolicy,
    counters: CallCounters,
}

impl Reranker {
    /// The reranker of `endpoint` (the `rerank` section of the configuration), or `None` when
    /// it has no base URL: reranking is off.
    pub fn new(endpoint: &ModelEndpoint) -> Result<Option<Reranker>, LlmError> {
        Reranker::with_options(endpoint, ClientOptions::for_endpoint(endpoint))
    }

    /// Like [`Reranker::new`] with explicit retry and tokenizer settings.
    pub fn with_options(endpoint: &ModelEndpoint, options: ClientOptions) -> Result<Option<Reranker>, LlmError> {
        let Some(url) = endpoint.base_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if endpoint.model.trim().is_empty() {
            return Err(LlmError::InvalidConfig {
                setting: "rerank.model",
                message: "is empty".into(),
            });
        }
        Ok(Some(Reranker {
            inner: Arc::new(RerankerInner {
                model: endpoint.model.clone(),
                top_n: (endpoint.top_n as usize).max(1),
                max_input_tokens: (endpoint.max_input_tokens as usize).max(1),
                api: ApiClient::new(endpoint, url, "rerank")?,
                tokens: options.tokens,
                retry: options.retry,
                counters: CallCounters::default(),
            }),
        }))
    }

    /// The model name sent and recorded.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// How many fused results are reranked (`rerank.top_n`).
    pub fn top_n(&self) -> usize {
        self.inner.top_n
    }

    /// Requests, retries and 429s since this reranker was built, failed calls included.
    pub fn totals(&self) -> CallTotals {
        self.inner.counters.totals()
    }

    /// Scores `documents` against `query` and returns every document's index, best first.
    /// Each document is first cut to `max_input_tokens`. A transient failure is retried with
    /// backoff (at most `max_retries` times); the first permanent one, or the last transient
    /// one, is returned.
    pub async fn rerank(&self, query: &str, documents: &[&str]) -> Result<Reranked, LlmError> {
        let inner = &self.inner;
        let mut out = Reranked::default();
        if documents.is_empty() {
            return Ok(out);
        }
        let query_tokens = inner.tokens.count(query) as u64;
        let mut cut = Vec::with_capacity(documents.len());
        let mut counted = 0u64;
        for d in documents {
            let (kept, tokens) = inner.tokens.truncate_counted(d, inner.max_input_tokens);
            out.truncated += u32::from(kept.len() < d.len());
            counted += tokens as u64 + query_tokens;
            cut.push(kept);
        }
        let context = format!(
            "reranking {} documents with {} at {}",
            documents.len(),
            inner.model,
            inner.api.base_url
        );
        let request = RerankRequest {
            model: &inner.model,
            query,
            documents: &cut,
            top_n: documents.len(),
            return_documents: false,
        };
        loop {
            out.requests += 1;
            inner.counters.request();
            let attempt = tokio::time::timeout(
                inner.api.timeout,
                inner.api.post_json::<_, RerankResponse>(&context, "/rerank", &request),
            )
            .await;
            let error = match attempt {
                Ok(Ok(response)) => {
                    out.tokens = response.billed_tokens().unwrap_or(counted);
                    out.order = order(&context, documents.len(), response.results)?;
                    return Ok(out);
                }
                Ok(Err(e)) => e,
                Err(_) => LlmError::Timeout {
                    context: context.clone(),
                    after: inner.api.timeout,
                },
            };
            if error.is_rate_limited() {
                inner.counters.rate_limited();
            }
            let Some(wait) = inner.retry.delay(out.retries, &error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, wait_ms = wait.as_millis() as u64, retry = out.retries + 1, "rerank request failed; retrying");
            out.retries += 1;
            inner.counters.retry();
            tokio::time::sleep(wait).await;
        }
    }
}

/// The model's results as a full order of the `n` documents: scored ones by score (ties by
/// index), then any left out in their original order. Out-of-range or repeated indices and
/// non-finite scores make the answer unreadable.
fn order(context: &str, n: usize, results: Vec<RerankResult>) -> Result<Vec<Ranked>, LlmError> {
    let protocol = |message: String| LlmError::Protocol {
        context: context.to_owned(),
        message,
    };
    let mut seen = vec![false; n];
    let mut scored = Vec::with_capacity(results.len());
    for r in results {
        match seen.get_mut(r.index) {
            Some(s @ false) => *s = true,
            _ => {
                return Err(protocol(format!(
                    "result index {} is out of range or repeated",
                    r.index
                )));
            }
        }
        if !r.relevance_score.is_finite() {
            return Err(protocol(format!("result {} has a non-finite score", r.index)));
        }
        scored.push(Ranked {
            index: r.index,
            score: r.relevance_score,
        });
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    scored.extend(seen.iter().enumerate().filter(|(_, s)| !**s).map(|(index, _)| Ranked {
        index,
        score: f64::NEG_INFINITY,
    }));
    Ok(scored)
}

#[derive(Serialize)]
struct RerankRequest<'a> {
    model: &'a str,
    query: &'a str,
    documents: &'a [&'a str],
    top_n: usize,
    return_documents: bool,
}

/// Read leniently: Cohere reports `meta.billed_units.search_units`, Jina and vLLM
/// `usage.total_tokens`, TEI nothing.
#[derive(Deserialize)]
struct RerankResponse {
    results: Vec<RerankResult>,
    #[serde(default)]
    usage: Option<RerankUsage>,
}

impl RerankResponse {
    fn billed_tokens(&self) -> Option<u64> {
        let u = self.usage.as_ref()?;
        u.total_tokens.or(u.prompt_tokens).filter(|t| *t > 0)
    }
}

#[derive(Deserialize)]
struct RerankResult {
    index: usize,
    relevance_score: f64,
}

#[derive(Deserialize)]
struct RerankUsage {
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(index: usize, relevance_score: f64) -> RerankResult {
        RerankResult { index, relevance_score }
    }

    #[test]
    fn results_become_a_full_order() {
        let o = order("t", 4, vec![result(2, 0.1), result(0, 0.9), result(3, 0.5)]).expect("order");
        assert_eq!(o.iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 3, 2, 1]);
        assert_eq!(o[3].score, f64::NEG_INFINITY);
    }

    #[test]
    fn bad_results_are_permanent_protocol_errors() {
        for bad in [
            vec![result(4, 0.1)],
            vec![result(1, 0.1), result(1, 0.2)],
            vec![result(0, f64::NAN)],
        ] {
            let e = order("t", 4, bad).expect_err("bad");
            assert_eq!(e.kind(), ragpipe_core::ErrorKind::Permanent, "{e}");
        }
    }

    #[test]
    fn no_base_url_means_off() {
        let endpoint = ragpipe_core::Config::defaults().rerank;
        assert!(Reranker::new(&endpoint).expect("valid").is_none());
        let on = ModelEndpoint {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..endpoint
        };
        let r = Reranker::new(&on).expect("valid").expect("on");
        assert_eq!((r.model(), r.top_n()), ("cross-encoder/ms-marco-MiniLM-L-6-v2", 20));
    }
}
