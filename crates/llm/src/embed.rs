//! Embeddings: over any OpenAI-compatible `/embeddings` endpoint, in-process with a local
//! sentence-embedding model ([`crate::local`]), or offline by hashing.

use crate::LlmError;
use crate::batching::plan_batches;
use crate::hashed::HashedEmbedder;
use crate::local::{DEFAULT_BATCH_TOKENS, LocalModel, LocalRuntime, OverLimit};
use crate::retry::{CallCounters, CallTotals, RetryPolicy};
use crate::tokens::TokenCounter;
use crate::transport::{ApiClient, map_error};
use futures::{StreamExt, TryStreamExt};
use ragpipe_core::config::{EmbeddingProvider, ModelEndpoint, default_local_model_dir, local_model_files_present};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Inputs whose total size is above this many bytes are tokenised and hashed on the blocking
/// pool rather than on the async worker thread.
const INLINE_CPU_BYTES: usize = 32 * 1024;

/// Settings shared by [`Embedder`] and [`crate::ChatModel`] beyond the endpoint's own.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// When and how long to wait before retrying.
    pub retry: RetryPolicy,
    /// The tokenizer that counts inputs and answers.
    pub tokens: TokenCounter,
}

impl ClientOptions {
    /// The endpoint's retry settings and the `cl100k_base` tokenizer.
    pub fn for_endpoint(endpoint: &ModelEndpoint) -> ClientOptions {
        ClientOptions {
            retry: RetryPolicy::for_endpoint(endpoint),
            tokens: TokenCounter::default(),
        }
    }
}

/// The vectors of one [`Embedder::embed`] call and what it cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embedded {
    /// One vector per input, in input order, each of the configured dimension.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens billed: the server's `usage.prompt_tokens` when it reports it, otherwise the
    /// tiktoken count of the (truncated) inputs.
    pub prompt_tokens: u64,
    /// HTTP requests made, retries included (0 offline).
    pub requests: u32,
    /// Requests that were retries of a failed one.
    pub retries: u32,
    /// Responses that were HTTP 429.
    pub rate_limited: u32,
    /// Inputs cut to the model's input limit (`max_input_tokens`) before embedding.
    pub truncated: u32,
}

/// Turns texts into vectors. Cheap to clone (one `Arc`), `Send + Sync`; share one per process.
#[derive(Clone, Debug)]
pub struct Embedder {
    inner: Arc<EmbedderInner>,
}

#[derive(Debug)]
struct EmbedderInner {
    model: String,
    dim: usize,
    max_input_tokens: usize,
    batch_size: usize,
    batch_tokens: usize,
    concurrency: usize,
    /// Requests in flight across every call and clone of this embedder (`concurrency`), so
    /// concurrent ingest jobs share the endpoint's limit instead of multiplying it.
    in_flight: tokio::sync::Semaphore,
    tokens: TokenCounter,
    retry: RetryPolicy,
    counters: CallCounters,
    provider: Provider,
}

enum Provider {
    Offline(HashedEmbedder),
    Api(ApiClient),
    Local(LocalRuntime),
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Offline(_) => f.write_str("Offline"),
            Provider::Api(api) => f.debug_tuple("Api").field(&api.base_url).finish(),
            Provider::Local(local) => f.debug_tuple("Local").field(&local.model().dir()).finish(),
        }
    }
}

/// One input ready to send: cut to the model's limit and counted.
struct Prepared {
    text: String,
    tokens: usize,
    truncated: bool,
}

impl Embedder {
    /// The embedder for `endpoint` (the `embedding` section of the configuration), by its
    /// provider ([`ModelEndpoint::embedding_provider`]): the API at its `base_url`, the local
    /// model in `local_dir` (loaded now; its dimension must be `dim`), or the offline hashed
    /// embedder.
    pub fn new(endpoint: &ModelEndpoint) -> Result<Embedder, LlmError> {
        Embedder::with_options(endpoint, ClientOptions::for_endpoint(endpoint))
    }

    /// Like [`Embedder::new`] with explicit retry and tokenizer settings.
    pub fn with_options(endpoint: &ModelEndpoint, options: ClientOptions) -> Result<Embedder, LlmError> {
        let dim = endpoint.dim as usize;
        if dim == 0 {
            return Err(LlmError::InvalidConfig {
                setting: "embedding.dim",
                message: "must be at least 1".into(),
            });
        }
        let base_url = endpoint.base_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let provider = match (endpoint.embedding_provider(), base_url) {
            (EmbeddingProvider::Hashed, _) => Provider::Offline(HashedEmbedder::new(dim)),
            (EmbeddingProvider::Api, Some(url)) => Provider::Api(ApiClient::new(endpoint, url, "embedding")?),
            (EmbeddingProvider::Api, None) => {
                return Err(LlmError::InvalidConfig {
                    setting: "embedding.base_url",
                    message: "the api provider needs a base URL (RAGPIPE_EMBEDDING_BASE_URL)".into(),
                });
            }
            (EmbeddingProvider::Local, _) => {
                let dir = endpoint.local_dir.as_deref().ok_or_else(|| LlmError::InvalidConfig {
                    setting: "embedding.local_dir",
                    message: "the local provider needs a model directory (RAGPIPE_EMBEDDING_LOCAL_DIR, or run \
                              scripts/setup to install all-MiniLM-L6-v2 where it is looked for)"
                        .into(),
                })?;
                let local = LocalRuntime::start(dir, endpoint.local_threads as usize, DEFAULT_BATCH_TOKENS)?;
                if local.model().dim() != dim {
                    return Err(LlmError::DimensionMismatch {
                        model: endpoint.model.clone(),
                        expected: dim,
                        got: local.model().dim(),
                    });
                }
                Provider::Local(local)
            }
        };
        Ok(Embedder {
            inner: Arc::new(EmbedderInner {
                model: endpoint.model.clone(),
                dim,
                max_input_tokens: (endpoint.max_input_tokens as usize).max(1),
                batch_size: (endpoint.batch_size as usize).max(1),
                batch_tokens: (endpoint.batch_tokens as usize).max(1),
                concurrency: (endpoint.concurrency as usize).max(1),
                in_flight: tokio::sync::Semaphore::new((endpoint.concurrency as usize).max(1)),
                tokens: options.tokens,
                retry: options.retry,
                counters: CallCounters::default(),
                provider,
            }),
        })
    }

    /// The model name recorded with every vector.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// The dimension of every vector returned.
    pub fn dim(&self) -> usize {
        self.inner.dim
    }

    /// Requests, retries and 429s since this embedder was built, across all its clones and
    /// calls, failed ones included.
    pub fn totals(&self) -> CallTotals {
        self.inner.counters.totals()
    }

    /// Whether this is the offline hashed embedder: no network, and lexical rather than
    /// semantic vectors (search fuses it as such). The local model is not: it is semantic.
    pub fn is_offline(&self) -> bool {
        matches!(self.inner.provider, Provider::Offline(_))
    }

    /// The local model this embedder runs, if it is the local provider: its tokenizer and input
    /// limit are what chunks must fit ([`LocalModel::count_tokens`]).
    pub fn local_model(&self) -> Option<&Arc<LocalModel>> {
        match &self.inner.provider {
            Provider::Local(local) => Some(local.model()),
            _ => None,
        }
    }

    /// Threads the local model runs on, if this is the local provider.
    pub fn local_threads(&self) -> Option<usize> {
        match &self.inner.provider {
            Provider::Local(local) => Some(local.threads()),
            _ => None,
        }
    }

    /// How inputs with these token counts group into model calls: contiguous ranges, each of
    /// which [`Embedder::embed`] sends as one request (the same limits it applies, after
    /// cutting each input to `max_input_tokens`). Offline, one range for everything. A caller
    /// that records each call as it completes embeds range by range, at most
    /// [`Embedder::concurrency`] at a time.
    pub fn plan(&self, token_counts: &[usize]) -> Vec<std::ops::Range<usize>> {
        match self.inner.provider {
            Provider::Offline(_) if token_counts.is_empty() => Vec::new(),
            // One range holding every input (not a vector of the indices).
            #[allow(clippy::single_range_in_vec_init)]
            Provider::Offline(_) => vec![0..token_counts.len()],
            // Inputs are checked, not cut: the local model refuses one over its limit.
            Provider::Local(_) => plan_batches(token_counts, self.inner.batch_size, self.inner.batch_tokens),
            Provider::Api(_) => {
                let max = self.inner.max_input_tokens;
                let counts: Vec<usize> = token_counts.iter().map(|&t| t.min(max)).collect();
                plan_batches(&counts, self.inner.batch_size, self.inner.batch_tokens)
            }
        }
    }

    /// Requests this embedder keeps in flight at most (across all its calls and clones).
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    /// Embeds `inputs`, returning one vector per input in input order.
    ///
    /// With the local model, inputs are counted with its tokenizer; one over its limit (256 word
    /// pieces for MiniLM) is embedded from its head and counted in `truncated`. Ingest never
    /// sends one: its chunker fits chunks to the same tokenizer; a long search query is what
    /// gets cut. The model runs on its own thread pool, `prompt_tokens` are its word pieces and
    /// no request is made. Otherwise each input is first cut to `max_input_tokens` (models silently ignore what lies past
    /// their limit). Over the API, inputs go in batches of at most `batch_size` inputs and
    /// `batch_tokens` tokens, at most `concurrency` requests in flight (across all concurrent
    /// calls on this embedder and its clones); a transient failure of a batch (429, 5xx,
    /// timeout, lost connection) is retried with backoff and jitter, waiting at least what
    /// `Retry-After` asks. The first batch that fails for good fails the call.
    /// Every vector's length is checked against `dim`.
    pub async fn embed(&self, inputs: &[String]) -> Result<Embedded, LlmError> {
        if inputs.is_empty() {
            return Ok(Embedded::default());
        }
        match &self.inner.provider {
            Provider::Offline(hasher) => self.embed_offline(*hasher, inputs).await,
            Provider::Api(api) => self.embed_api(api, inputs).await,
            Provider::Local(local) => {
                // Chunks always fit (the chunker counts with this model's tokenizer); a longer
                // input, such as a long query, is cut and counted as over the API.
                let out = local.embed(inputs, OverLimit::Cut).await?;
                if let Some(v) = out.vectors.iter().find(|v| v.len() != self.inner.dim) {
                    return Err(LlmError::DimensionMismatch {
                        model: self.inner.model.clone(),
                        expected: self.inner.dim,
                        got: v.len(),
                    });
                }
                Ok(Embedded {
                    vectors: out.vectors,
                    prompt_tokens: out.tokens,
                    truncated: out.truncated,
                    ..Embedded::default()
                })
            }
        }
    }

    async fn embed_offline(&self, hasher: HashedEmbedder, inputs: &[String]) -> Result<Embedded, LlmError> {
        let (tokens, max) = (self.inner.tokens, self.inner.max_input_tokens);
        let work = move |inputs: &[String]| {
            let prepared = prepare(tokens, inputs, max);
            let mut out = Embedded::default();
            for p in &prepared {
                out.vectors.push(hasher.embed(&p.text));
                out.prompt_tokens += p.tokens as u64;
                out.truncated += u32::from(p.truncated);
            }
            out
        };
        if total_bytes(inputs) <= INLINE_CPU_BYTES {
            return Ok(work(inputs));
        }
        let owned = inputs.to_vec();
        tokio::task::spawn_blocking(move || work(&owned))
            .await
            .map_err(|e| LlmError::Task {
                context: format!("hashing {} inputs", inputs.len()),
                message: e.to_string(),
            })
    }

    async fn embed_api(&self, api: &ApiClient, inputs: &[String]) -> Result<Embedded, LlmError> {
        let inner = &self.inner;
        let (tokens, max) = (inner.tokens, inner.max_input_tokens);
        let prepared = if total_bytes(inputs) <= INLINE_CPU_BYTES {
            prepare(tokens, inputs, max)
        } else {
            let owned = inputs.to_vec();
            tokio::task::spawn_blocking(move || prepare(tokens, &owned, max))
                .await
                .map_err(|e| LlmError::Task {
                    context: format!("counting tokens of {} inputs", inputs.len()),
                    message: e.to_string(),
                })?
        };
        let counts: Vec<usize> = prepared.iter().map(|p| p.tokens).collect();
        let plan = plan_batches(&counts, inner.batch_size, inner.batch_tokens);
        let batches = plan.len();
        let outcomes: Vec<Embedded> = futures::stream::iter(plan.into_iter().enumerate())
            .map(|(i, range)| self.embed_batch(api, &prepared[range], i, batches))
            .buffered(inner.concurrency)
            .try_collect()
            .await?;
        let mut total = Embedded {
            vectors: Vec::with_capacity(inputs.len()),
            ..Embedded::default()
        };
        for o in outcomes {
            total.vectors.extend(o.vectors);
            total.prompt_tokens += o.prompt_tokens;
            total.requests += o.requests;
            total.retries += o.retries;
            total.rate_limited += o.rate_limited;
        }
        total.truncated = prepared.iter().map(|p| u32::from(p.truncated)).sum();
        Ok(total)
    }

    /// One batch, with its retries.
    async fn embed_batch(
        &self,
        api: &ApiClient,
        batch: &[Prepared],
        index: usize,
        of: usize,
    ) -> Result<Embedded, LlmError> {
        let inner = &self.inner;
        let context = format!(
            "embedding batch {} of {} ({} inputs) with {} at {}",
            index + 1,
            of,
            batch.len(),
            inner.model,
            api.base_url
        );
        let request = EmbeddingRequest {
            model: &inner.model,
            input: batch.iter().map(|p| p.text.as_str()).collect(),
            encoding_format: "float",
        };
        let mut out = Embedded::default();
        loop {
            // Held for the request only, not for the backoff: a waiting batch leaves its slot.
            let permit = inner.in_flight.acquire().await.map_err(|e| LlmError::Task {
                context: context.clone(),
                message: e.to_string(),
            })?;
            out.requests += 1;
            inner.counters.request();
            let attempt = tokio::time::timeout(
                api.timeout,
                api.client.embeddings().create_byot::<_, EmbeddingResponse>(&request),
            )
            .await;
            drop(permit);
            let error = match attempt {
                Ok(Ok(response)) => {
                    let counted: usize = batch.iter().map(|p| p.tokens).sum();
                    out.prompt_tokens = match response.usage.as_ref().and_then(|u| u.prompt_tokens) {
                        Some(reported) if reported > 0 => reported,
                        _ => counted as u64,
                    };
                    out.vectors = self.check_vectors(&context, batch.len(), response)?;
                    return Ok(out);
                }
                Ok(Err(e)) => map_error(&context, e),
                Err(_) => LlmError::Timeout {
                    context: context.clone(),
                    after: api.timeout,
                },
            };
            if error.is_rate_limited() {
                out.rate_limited += 1;
                inner.counters.rate_limited();
            }
            let Some(wait) = inner.retry.delay(out.retries, &error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, wait_ms = wait.as_millis() as u64, retry = out.retries + 1, "embedding request failed; retrying");
            out.retries += 1;
            inner.counters.retry();
            tokio::time::sleep(wait).await;
        }
    }

    /// Puts the response's vectors in input order and checks their count, size and values.
    fn check_vectors(
        &self,
        context: &str,
        expected: usize,
        response: EmbeddingResponse,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let protocol = |message: String| LlmError::Protocol {
            context: context.to_owned(),
            message,
        };
        if response.data.len() != expected {
            return Err(protocol(format!(
                "{} vectors for {expected} inputs",
                response.data.len()
            )));
        }
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in response.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            if item.embedding.len() != self.inner.dim {
                return Err(LlmError::DimensionMismatch {
                    model: self.inner.model.clone(),
                    expected: self.inner.dim,
                    got: item.embedding.len(),
                });
            }
            if item.embedding.iter().any(|x| !x.is_finite()) {
                return Err(protocol(format!("vector {index} holds a NaN or infinite value")));
            }
            match slots.get_mut(index) {
                Some(slot @ None) => *slot = Some(item.embedding),
                _ => return Err(protocol(format!("vector index {index} is out of range or repeated"))),
            }
        }
        // Every slot is filled: `expected` distinct in-range indices were seen.
        Ok(slots.into_iter().flatten().collect())
    }
}

fn total_bytes(inputs: &[String]) -> usize {
    inputs.iter().map(String::len).sum()
}

fn prepare(tokens: TokenCounter, inputs: &[String], max_input_tokens: usize) -> Vec<Prepared> {
    inputs
        .iter()
        .map(|text| {
            let (kept, count) = tokens.truncate_counted(text, max_input_tokens);
            Prepared {
                truncated: kept.len() < text.len(),
                text: kept.to_owned(),
                tokens: count,
            }
        })
        .collect()
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: Vec<&'a str>,
    encoding_format: &'static str,
}

/// The response, read leniently: servers differ in which of the other fields they send.
#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize)]
struct EmbeddingUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hashed::cosine;

    pub(crate) fn endpoint(dim: u32) -> ModelEndpoint {
        ModelEndpoint {
            base_url: None,
            api_key: None,
            model: "ragpipe-hash-v1".into(),
            dim,
            max_input_tokens: 16,
            batch_size: 4,
            batch_tokens: 100,
            concurrency: 2,
            max_output_tokens: 0,
            timeout_secs: 5,
            max_retries: 2,
            top_n: 0,
            ..ModelEndpoint::default()
        }
    }

    #[tokio::test]
    async fn offline_embeds_in_order_and_truncates() {
        let e = Embedder::new(&endpoint(64)).expect("offline embedder");
        assert!(e.is_offline());
        let long = "word ".repeat(100);
        let inputs = vec!["alpha beta".to_owned(), long.clone(), String::new()];
        let out = e.embed(&inputs).await.expect("embedded");
        assert_eq!(out.vectors.len(), 3);
        assert!(out.vectors.iter().all(|v| v.len() == 64));
        assert_eq!(out.vectors[0], HashedEmbedder::new(64).embed("alpha beta"));
        assert_eq!(out.truncated, 1);
        assert_eq!(out.prompt_tokens, 2 + 16);
        assert_eq!(out.requests, 0);
        let cut = HashedEmbedder::new(64).embed(TokenCounter::default().truncate(&long, 16));
        assert!(cosine(&out.vectors[1], &cut) > 0.999);
    }

    #[tokio::test]
    async fn offline_large_inputs_use_the_blocking_pool() {
        let e = Embedder::new(&endpoint(32)).expect("offline embedder");
        let inputs: Vec<String> = (0..200)
            .map(|i| format!("document {i} {}", "text ".repeat(50)))
            .collect();
        let out = e.embed(&inputs).await.expect("embedded");
        assert_eq!(out.vectors.len(), 200);
        assert_eq!(
            out.vectors[7],
            HashedEmbedder::new(32).embed(TokenCounter::default().truncate(&inputs[7], 16))
        );
    }

    #[test]
    fn plans_calls_as_embed_sends_them() {
        let offline = Embedder::new(&endpoint(8)).expect("offline embedder");
        assert_eq!(offline.plan(&[5, 500, 7]), vec![0..3]);
        assert!(offline.plan(&[]).is_empty());
        let mut ep = endpoint(8);
        ep.base_url = Some("http://127.0.0.1:1/v1".into());
        let api = Embedder::new(&ep).expect("api embedder");
        // At most 4 inputs and 100 tokens a request, each input first cut to 16 tokens.
        assert_eq!(api.plan(&[500; 9]), vec![0..4, 4..8, 8..9]);
        assert_eq!(api.plan(&[60, 60, 10]), vec![0..3]);
        assert_eq!(api.concurrency(), 2);
    }

    #[test]
    fn bad_settings_are_permanent_errors() {
        let mut ep = endpoint(8);
        ep.base_url = Some("ftp://example.com".into());
        assert!(matches!(
            Embedder::new(&ep),
            Err(LlmError::InvalidConfig {
                setting: "embedding.base_url",
                ..
            })
        ));
        ep.base_url = Some("http://127.0.0.1:1/v1".into());
        ep.api_key = Some("bad\nkey".into());
        assert!(matches!(
            Embedder::new(&ep),
            Err(LlmError::InvalidConfig {
                setting: "embedding.api_key",
                ..
            })
        ));
        ep.api_key = None;
        ep.base_url = Some("  ".into());
        assert!(Embedder::new(&ep).map(|e| e.is_offline()).unwrap_or(false));
    }
}

/// Embedders by model, built on demand from one configured endpoint: the configured model
/// itself, and any other model recorded with its own dimension and base URL (during a move from
/// one embedding model to another, both are served). Other settings (key, batching, timeouts)
/// are the configured endpoint's. Cheap to clone; share one per process so that each model's
/// concurrency limit is shared too.
#[derive(Clone, Debug)]
pub struct Embedders {
    configured: Embedder,
    endpoint: ModelEndpoint,
    others: Arc<std::sync::Mutex<std::collections::HashMap<String, Embedder>>>,
}

impl Embedders {
    /// The registry around the configured embedding endpoint.
    pub fn new(endpoint: &ModelEndpoint) -> Result<Embedders, LlmError> {
        Ok(Embedders::from_configured(Embedder::new(endpoint)?, endpoint))
    }

    /// The registry around an embedder already built for `endpoint`.
    pub fn from_configured(configured: Embedder, endpoint: &ModelEndpoint) -> Embedders {
        Embedders {
            configured,
            endpoint: endpoint.clone(),
            others: Arc::default(),
        }
    }

    /// The configured model's embedder (new chunks are embedded with it).
    pub fn configured(&self) -> &Embedder {
        &self.configured
    }

    /// The embedder of `model` at `dim` served at `base_url` (`None`: the local model when a
    /// directory of that name holds one, the configured `local_dir` or beside the default one;
    /// otherwise offline hashed). The configured model is returned as configured; another is
    /// built once and kept.
    pub fn get(&self, model: &str, dim: u32, base_url: Option<&str>) -> Result<Embedder, LlmError> {
        if model == self.configured.model() && dim as usize == self.configured.dim() {
            return Ok(self.configured.clone());
        }
        let mut others = self.others.lock().map_err(|_| LlmError::InvalidConfig {
            setting: "embedding",
            message: "embedder registry poisoned".into(),
        })?;
        if let Some(e) = others.get(model).filter(|e| e.dim() == dim as usize) {
            return Ok(e.clone());
        }
        let local_dir = match base_url {
            Some(_) => None,
            None => local_dir_named(model, self.endpoint.local_dir.as_deref()),
        };
        let provider = match (base_url, &local_dir) {
            (Some(_), _) => EmbeddingProvider::Api,
            (None, Some(_)) => EmbeddingProvider::Local,
            (None, None) => EmbeddingProvider::Hashed,
        };
        let endpoint = ModelEndpoint {
            model: model.to_owned(),
            dim,
            base_url: base_url.map(str::to_owned),
            provider: Some(provider.as_str().to_owned()),
            local_dir,
            ..self.endpoint.clone()
        };
        let embedder = Embedder::new(&endpoint)?;
        others.insert(model.to_owned(), embedder.clone());
        Ok(embedder)
    }
}

/// The directory of the local model named `model`: `configured` when its name is the model's,
/// else `model` beside the default directory, when either holds the model's files.
fn local_dir_named(model: &str, configured: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    let beside_default =
        default_local_model_dir(|n| std::env::var(n).ok()).and_then(|d| d.parent().map(|p| p.join(model)));
    configured
        .filter(|d| d.file_name().and_then(|n| n.to_str()) == Some(model))
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(beside_default)
        .find(|d| local_model_files_present(d))
}
