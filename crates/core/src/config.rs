//! The one configuration struct. Values come from, in increasing precedence: the defaults
//! below (which work on a laptop with a local PostgreSQL), an optional `ragpipe.toml`, and
//! environment variables. [`SETTINGS`] lists every setting once; the README's table and the
//! environment mapping are both derived from it, so they cannot drift apart.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything ragpipe can be configured with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL connection URL.
    pub database_url: String,
    /// Largest number of pooled database connections per process.
    pub database_max_connections: u32,
    /// A streaming replica of the database at `database_url` that searches, lists and answer
    /// replays read from, except where the reader must see a write the replica has not replayed
    /// yet (none: everything reads the primary).
    pub read_database_url: Option<String>,
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Address the operations endpoints (`/metrics`, `/healthz`, `/readyz` with details) of
    /// `ragpipe serve` listen on; not authenticated, so meant to be private.
    pub ops_listen: String,
    /// Embedding model settings.
    pub embedding: ModelEndpoint,
    /// Chat model settings.
    pub chat: ModelEndpoint,
    /// Reranker settings (a `/rerank` cross-encoder over the fused top N; no `base_url`: off).
    pub rerank: ModelEndpoint,
    /// Chunking settings.
    pub chunking: Chunking,
    /// Input limits.
    pub limits: Limits,
    /// Background worker settings.
    pub worker: Worker,
    /// Directory whose templates override the embedded prompts (none: embedded only).
    pub prompts_dir: Option<PathBuf>,
    /// Model prices: `model=input/output` in currency units per million tokens,
    /// comma-separated (none: every model costs 0).
    pub prices: Option<String>,
}

/// An OpenAI-compatible model endpoint. With no `base_url` the offline provider serves.
/// Settings that do not apply to a kind of model (a chat model's `dim`) are left at zero.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelEndpoint {
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Bearer key for the API.
    pub api_key: Option<String>,
    /// Model name sent to the API and recorded on every row it produced.
    pub model: String,
    /// Embedding dimension (embeddings only).
    pub dim: u32,
    /// Longest input the model reads, in tokens (embeddings) or the context window (chat).
    pub max_input_tokens: u32,
    /// Inputs per embedding request.
    pub batch_size: u32,
    /// Total tokens per embedding request.
    pub batch_tokens: u32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Most tokens the model may generate in one answer (chat only).
    pub max_output_tokens: u32,
    /// Per-request timeout in seconds.
    pub timeout_secs: u64,
    /// Retries of a transient failure (429, 5xx, timeouts) before giving up.
    pub max_retries: u32,
    /// Fused results the reranker reorders (rerank only).
    pub top_n: u32,
    /// Which provider embeds (embeddings only): `api`, `local` or `hashed`; none: chosen by
    /// [`Config::resolve_embedding_provider`] (`api` with a base URL, else `local` when the
    /// local model's files are present, else `hashed`).
    pub provider: Option<String>,
    /// Directory holding the local embedding model (`config.json`, `tokenizer.json`,
    /// `model.safetensors`; embeddings only). None: [`default_local_model_dir`].
    pub local_dir: Option<PathBuf>,
    /// Threads that run the local embedding model (embeddings only); 0: one per core.
    pub local_threads: u32,
}

/// The embedding providers `embedding.provider` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingProvider {
    /// An OpenAI-compatible `/embeddings` API at `embedding.base_url`.
    Api,
    /// A sentence-embedding model run in-process from `embedding.local_dir`.
    Local,
    /// The offline hashed bag of words (`ragpipe-hash-v1`): lexical, not semantic.
    Hashed,
}

impl EmbeddingProvider {
    /// The provider a setting names, if it names one.
    pub fn parse(name: &str) -> Option<EmbeddingProvider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "api" => Some(EmbeddingProvider::Api),
            "local" => Some(EmbeddingProvider::Local),
            "hashed" => Some(EmbeddingProvider::Hashed),
            _ => None,
        }
    }

    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingProvider::Api => "api",
            EmbeddingProvider::Local => "local",
            EmbeddingProvider::Hashed => "hashed",
        }
    }
}

/// The name of the hashed embedder's model, the default `embedding.model`.
pub const HASHED_MODEL: &str = "ragpipe-hash-v1";

/// The directory name of the local model `scripts/setup` installs, which is also the model name
/// recorded on its chunks.
pub const DEFAULT_LOCAL_MODEL: &str = "all-MiniLM-L6-v2";

/// Where `scripts/setup` puts the local embedding model: `$XDG_CACHE_HOME/ragpipe/models/
/// all-MiniLM-L6-v2`, or `$HOME/.cache/ragpipe/models/all-MiniLM-L6-v2`; none without either
/// variable. `env` looks variables up (the process environment in [`Config::load`]).
pub fn default_local_model_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let cache = env("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".cache"))
        })?;
    Some(cache.join("ragpipe").join("models").join(DEFAULT_LOCAL_MODEL))
}

/// The local model's directory as the environment names it: `RAGPIPE_EMBEDDING_LOCAL_DIR`
/// when set and not empty, else [`default_local_model_dir`].
pub fn configured_local_model_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("RAGPIPE_EMBEDDING_LOCAL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| default_local_model_dir(env))
}

/// [`configured_local_model_dir`] when it holds the model's files; otherwise why not (for
/// tests and tools that need the model: "run scripts/setup").
pub fn installed_local_model_dir(env: impl Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let dir = configured_local_model_dir(env).ok_or("neither HOME nor XDG_CACHE_HOME is set")?;
    if local_model_files_present(&dir) {
        Ok(dir)
    } else {
        Err(format!(
            "no local embedding model in {}: run scripts/setup (it installs all-MiniLM-L6-v2 there)",
            dir.display()
        ))
    }
}

/// Whether `dir` holds the three files the local embedding provider loads.
pub fn local_model_files_present(dir: &Path) -> bool {
    ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// How documents are cut into chunks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    /// Largest chunk, in tokens.
    pub max_tokens: u32,
    /// Tokens shared by consecutive chunks.
    pub overlap_tokens: u32,
    /// tiktoken encoding used to count tokens.
    pub tokenizer: String,
}

/// Limits on untrusted input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest single uploaded file, in bytes.
    pub max_file_bytes: u64,
    /// Largest upload request (all files), in bytes.
    pub max_request_bytes: u64,
    /// Most pages extracted from one PDF.
    pub max_pages: u32,
    /// Most characters extracted from one document.
    pub max_chars: u64,
    /// Most bytes any one compressed stream may inflate to.
    pub max_decompressed_bytes: u64,
    /// Longest time spent extracting one document, in seconds.
    pub extract_timeout_secs: u64,
}

/// Background workers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Jobs processed at once per queue in one process.
    pub concurrency: u32,
    /// Attempts of a job before it is given up.
    pub max_attempts: u32,
    /// Seconds between a worker's heartbeats; a job whose worker missed three is taken over.
    pub heartbeat_secs: u64,
}

/// The kind of value a setting holds, so environment strings become typed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingKind {
    /// Free text.
    Text,
    /// A non-negative integer.
    Integer,
}

/// One configuration setting: its environment variable, its key in `ragpipe.toml`, its
/// default and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// Environment variable.
    pub env: &'static str,
    /// Dotted key in `ragpipe.toml`.
    pub key: &'static str,
    /// Type of the value.
    pub kind: SettingKind,
    /// Default value (empty: unset).
    pub default: &'static str,
    /// What the setting does.
    pub doc: &'static str,
}

const fn text(env: &'static str, key: &'static str, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        env,
        key,
        kind: SettingKind::Text,
        default,
        doc,
    }
}
const fn int(env: &'static str, key: &'static str, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        env,
        key,
        kind: SettingKind::Integer,
        default,
        doc,
    }
}

/// Every setting, in the order the README documents them.
pub const SETTINGS: &[Setting] = &[
    text(
        "DATABASE_URL",
        "database_url",
        "postgres://postgres@127.0.0.1:5432/ragpipe",
        "PostgreSQL connection URL (`RAGPIPE_DATABASE_URL` also works).",
    ),
    int(
        "RAGPIPE_DATABASE_MAX_CONNECTIONS",
        "database_max_connections",
        "16",
        "Pooled connections per process.",
    ),
    text(
        "RAGPIPE_READ_DATABASE_URL",
        "read_database_url",
        "",
        "A streaming replica of the database (e.g. `postgres://postgres@127.0.0.1:5433/ragpipe`) that searches, lists and answer replays read from; a user's reads go to the primary until the replica has replayed the user's last write. Unset: everything reads the primary.",
    ),
    text(
        "RAGPIPE_LISTEN",
        "listen",
        "127.0.0.1:8080",
        "Address the HTTP API listens on.",
    ),
    text(
        "RAGPIPE_OPS_LISTEN",
        "ops_listen",
        "127.0.0.1:9464",
        "Address `ragpipe serve` serves `/metrics`, `/healthz` and `/readyz` (with the reason when not ready) on; unauthenticated, keep it private.",
    ),
    text(
        "RAGPIPE_EMBEDDING_BASE_URL",
        "embedding.base_url",
        "",
        "OpenAI-compatible embeddings API (the `api` provider).",
    ),
    text(
        "RAGPIPE_EMBEDDING_API_KEY",
        "embedding.api_key",
        "",
        "Bearer key for the embeddings API.",
    ),
    text(
        "RAGPIPE_EMBEDDING_MODEL",
        "embedding.model",
        "ragpipe-hash-v1",
        "Embedding model name, recorded on every chunk.",
    ),
    int(
        "RAGPIPE_EMBEDDING_DIM",
        "embedding.dim",
        "384",
        "Embedding dimension (any size pgvector indexes, up to 2000).",
    ),
    int(
        "RAGPIPE_EMBEDDING_MAX_INPUT_TOKENS",
        "embedding.max_input_tokens",
        "512",
        "Longest input the embedding model reads; no chunk sent is longer.",
    ),
    int(
        "RAGPIPE_EMBEDDING_BATCH_SIZE",
        "embedding.batch_size",
        "64",
        "Inputs per embeddings request.",
    ),
    int(
        "RAGPIPE_EMBEDDING_BATCH_TOKENS",
        "embedding.batch_tokens",
        "8000",
        "Tokens per embeddings request.",
    ),
    int(
        "RAGPIPE_EMBEDDING_CONCURRENCY",
        "embedding.concurrency",
        "4",
        "Embeddings requests in flight at once.",
    ),
    int(
        "RAGPIPE_EMBEDDING_TIMEOUT_SECS",
        "embedding.timeout_secs",
        "60",
        "Timeout of one embeddings request.",
    ),
    int(
        "RAGPIPE_EMBEDDING_MAX_RETRIES",
        "embedding.max_retries",
        "6",
        "Retries of a transient embeddings failure.",
    ),
    text(
        "RAGPIPE_EMBEDDING_PROVIDER",
        "embedding.provider",
        "",
        "`api`, `local` or `hashed`; unset: `api` with a base URL, else `local` when the local model's files are present, else `hashed`.",
    ),
    text(
        "RAGPIPE_EMBEDDING_LOCAL_DIR",
        "embedding.local_dir",
        "",
        "Local embedding model directory (`config.json`, `tokenizer.json`, `model.safetensors`); unset: `~/.cache/ragpipe/models/all-MiniLM-L6-v2`, where `scripts/setup` puts it. The model name defaults to the directory's name.",
    ),
    int(
        "RAGPIPE_EMBEDDING_LOCAL_THREADS",
        "embedding.local_threads",
        "0",
        "Threads running the local embedding model; 0: one per core.",
    ),
    text(
        "RAGPIPE_CHAT_BASE_URL",
        "chat.base_url",
        "",
        "OpenAI-compatible chat API; unset: the offline extractive responder.",
    ),
    text(
        "RAGPIPE_CHAT_API_KEY",
        "chat.api_key",
        "",
        "Bearer key for the chat API.",
    ),
    text(
        "RAGPIPE_CHAT_MODEL",
        "chat.model",
        "ragpipe-extractive-v1",
        "Chat model name.",
    ),
    int(
        "RAGPIPE_CHAT_MAX_INPUT_TOKENS",
        "chat.max_input_tokens",
        "8192",
        "Chat model context window; the prompt budget is this minus the answer.",
    ),
    int(
        "RAGPIPE_CHAT_MAX_OUTPUT_TOKENS",
        "chat.max_output_tokens",
        "1024",
        "Most tokens in one answer (`max_tokens`).",
    ),
    int(
        "RAGPIPE_CHAT_TIMEOUT_SECS",
        "chat.timeout_secs",
        "120",
        "Timeout of one chat request.",
    ),
    int(
        "RAGPIPE_CHAT_MAX_RETRIES",
        "chat.max_retries",
        "3",
        "Retries of a chat request that failed before streaming began.",
    ),
    text(
        "RAGPIPE_RERANK_BASE_URL",
        "rerank.base_url",
        "",
        "Reranker serving `POST {base}/rerank` (Cohere, Jina, TEI, vLLM); unset: no reranking.",
    ),
    text(
        "RAGPIPE_RERANK_API_KEY",
        "rerank.api_key",
        "",
        "Bearer key for the reranker.",
    ),
    text(
        "RAGPIPE_RERANK_MODEL",
        "rerank.model",
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "Reranker model name.",
    ),
    int(
        "RAGPIPE_RERANK_TOP_N",
        "rerank.top_n",
        "20",
        "Fused results the reranker reorders (at least the results asked for).",
    ),
    int(
        "RAGPIPE_RERANK_MAX_INPUT_TOKENS",
        "rerank.max_input_tokens",
        "512",
        "Longest document sent to the reranker, in tokens; longer ones are cut.",
    ),
    int(
        "RAGPIPE_RERANK_TIMEOUT_SECS",
        "rerank.timeout_secs",
        "10",
        "Timeout of one rerank request.",
    ),
    int(
        "RAGPIPE_RERANK_MAX_RETRIES",
        "rerank.max_retries",
        "1",
        "Retries of a transient rerank failure before search keeps the fused order.",
    ),
    int(
        "RAGPIPE_CHUNK_MAX_TOKENS",
        "chunking.max_tokens",
        "512",
        "Largest chunk in tokens (capped at the embedding model's input limit).",
    ),
    int(
        "RAGPIPE_CHUNK_OVERLAP_TOKENS",
        "chunking.overlap_tokens",
        "64",
        "Tokens shared by consecutive chunks.",
    ),
    text(
        "RAGPIPE_CHUNK_TOKENIZER",
        "chunking.tokenizer",
        "cl100k_base",
        "tiktoken encoding used to count tokens (cl100k_base, o200k_base, p50k_base, r50k_base).",
    ),
    int(
        "RAGPIPE_MAX_FILE_BYTES",
        "limits.max_file_bytes",
        "104857600",
        "Largest uploaded file (413 above).",
    ),
    int(
        "RAGPIPE_MAX_REQUEST_BYTES",
        "limits.max_request_bytes",
        "268435456",
        "Largest upload request (413 above).",
    ),
    int(
        "RAGPIPE_MAX_PAGES",
        "limits.max_pages",
        "5000",
        "Most pages extracted from one PDF.",
    ),
    int(
        "RAGPIPE_MAX_CHARS",
        "limits.max_chars",
        "50000000",
        "Most characters extracted from one document.",
    ),
    int(
        "RAGPIPE_MAX_DECOMPRESSED_BYTES",
        "limits.max_decompressed_bytes",
        "268435456",
        "Most bytes one compressed PDF stream may inflate to.",
    ),
    int(
        "RAGPIPE_EXTRACT_TIMEOUT_SECS",
        "limits.extract_timeout_secs",
        "120",
        "Longest extraction of one document.",
    ),
    int(
        "RAGPIPE_WORKER_CONCURRENCY",
        "worker.concurrency",
        "2",
        "Jobs processed at once per queue per process.",
    ),
    int(
        "RAGPIPE_WORKER_MAX_ATTEMPTS",
        "worker.max_attempts",
        "8",
        "Attempts of a job before it is given up.",
    ),
    int(
        "RAGPIPE_WORKER_HEARTBEAT_SECS",
        "worker.heartbeat_secs",
        "5",
        "Seconds between worker heartbeats; a dead worker's jobs are retried after three missed.",
    ),
    text(
        "RAGPIPE_PROMPTS_DIR",
        "prompts_dir",
        "",
        "Directory of prompt templates overriding the embedded ones.",
    ),
    text(
        "RAGPIPE_PRICES",
        "prices",
        "",
        "Prices per million tokens, `model=input/output,...` (e.g. `gpt-4o-mini=0.15/0.6`); unlisted models cost 0.",
    ),
];

/// A configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or a variable held something that is not valid for its setting.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the bad value came from.
        origin: String,
        /// What was wrong.
        message: String,
    },
}

impl Config {
    /// The defaults alone.
    pub fn defaults() -> Config {
        Self::from_layers(toml::Table::new(), |_| None).expect("the built-in defaults are valid")
    }

    /// Reads `path` if given (or `./ragpipe.toml` when it exists), then the process
    /// environment, and resolves the embedding provider (which looks for the local model's
    /// files: the one file system read besides the configuration file).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("ragpipe.toml");
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("RAGPIPE_CONFIG")
                .map(PathBuf::from)
                .or_else(|| default_path.exists().then(|| default_path.to_path_buf())),
        };
        let table = match &file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Invalid {
                    origin: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let mut config = Self::from_layers(table, |name| {
            std::env::var(name).ok().or_else(|| {
                (name == "DATABASE_URL")
                    .then(|| std::env::var("RAGPIPE_DATABASE_URL").ok())
                    .flatten()
            })
        })?;
        config.resolve_embedding_provider(
            default_local_model_dir(|name| std::env::var(name).ok()),
            local_model_files_present,
        );
        Ok(config)
    }

    /// Builds a configuration from a parsed `ragpipe.toml` and an environment lookup.
    pub fn from_layers(file: toml::Table, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        for s in SETTINGS {
            let from_env = env(s.env).filter(|v| !v.is_empty());
            let value = match (&from_env, lookup(&file, s.key)) {
                (Some(v), _) => Some(typed(s, v, s.env)?),
                (None, Some(v)) => Some(v.clone()),
                (None, None) if s.default.is_empty() => None,
                (None, None) => Some(typed(s, s.default, "default")?),
            };
            if let Some(v) = value {
                insert(&mut merged, s.key, v);
            }
        }
        for key in flat_keys(&file, "") {
            if !SETTINGS.iter().any(|s| s.key == key) {
                return Err(ConfigError::Invalid {
                    origin: "ragpipe.toml".into(),
                    message: format!("unknown setting {key}"),
                });
            }
        }
        let mut config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: "configuration".into(),
                    message: e.to_string(),
                })?;
        config.fit_chunks_to_embedding();
        config.validate()?;
        Ok(config)
    }

    /// Caps the chunk size at what the embedding model reads (`embedding.max_input_tokens`):
    /// a longer chunk would be embedded from its head only. [`Config::load`] applies it; call
    /// it again after changing the embedding settings.
    pub fn fit_chunks_to_embedding(&mut self) {
        self.chunking.max_tokens = self.chunking.max_tokens.min(self.embedding.max_input_tokens);
    }

    /// Chooses the embedding provider when `embedding.provider` is unset: `api` when a base URL
    /// is configured, else `local` when `local_model_present` says the local model's directory
    /// (`embedding.local_dir`, or `default_dir`) holds its files, else `hashed`. For `local`,
    /// the directory is filled in, and the model name, if still the hashed embedder's default,
    /// becomes the directory's name. [`Config::load`] calls this with the file system; the
    /// other constructors leave the provider as configured (tests stay on what they pin).
    pub fn resolve_embedding_provider(
        &mut self,
        default_dir: Option<PathBuf>,
        local_model_present: impl Fn(&Path) -> bool,
    ) {
        let e = &mut self.embedding;
        let has_base_url = e.base_url.as_deref().is_some_and(|u| !u.trim().is_empty());
        let dir = e.local_dir.clone().or(default_dir);
        let provider = match e.provider.as_deref().and_then(EmbeddingProvider::parse) {
            Some(p) => p,
            None if has_base_url => EmbeddingProvider::Api,
            None if dir.as_deref().is_some_and(&local_model_present) => EmbeddingProvider::Local,
            None => EmbeddingProvider::Hashed,
        };
        e.provider = Some(provider.as_str().to_owned());
        if provider == EmbeddingProvider::Local {
            if e.model == HASHED_MODEL
                && let Some(name) = dir.as_deref().and_then(Path::file_name).and_then(|n| n.to_str())
            {
                e.model = name.to_owned();
            }
            e.local_dir = dir;
        }
    }

    /// The embedding provider: the configured or resolved one, or, when none is set, `api`
    /// with a base URL and `hashed` without.
    pub fn embedding_provider(&self) -> EmbeddingProvider {
        self.embedding.embedding_provider()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                origin: "configuration".into(),
                message,
            })
        };
        if let Some(p) = &self.embedding.provider
            && EmbeddingProvider::parse(p).is_none()
        {
            return bad(format!("embedding.provider {p:?} is not one of api, local, hashed"));
        }
        if self.embedding.dim == 0 || self.embedding.dim > 2000 {
            return bad(format!(
                "embedding.dim {} is outside 1..=2000 (pgvector's HNSW limit)",
                self.embedding.dim
            ));
        }
        if self.chunking.overlap_tokens >= self.chunking.max_tokens {
            return bad(format!(
                "chunking.overlap_tokens {} must be smaller than chunking.max_tokens {}",
                self.chunking.overlap_tokens, self.chunking.max_tokens
            ));
        }
        if self.embedding.batch_size == 0 || self.embedding.concurrency == 0 || self.worker.concurrency == 0 {
            return bad("batch sizes and concurrencies must be at least 1".into());
        }
        Ok(())
    }
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut value = table.get(first)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                insert(t, rest, value);
            }
        }
    }
}

fn flat_keys(table: &toml::Table, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => out.extend(flat_keys(t, &key)),
            _ => out.push(key),
        }
    }
    out
}

fn typed(setting: &Setting, raw: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    match setting.kind {
        SettingKind::Text => Ok(toml::Value::String(raw.to_owned())),
        SettingKind::Integer => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(toml::Value::Integer)
            .ok_or_else(|| ConfigError::Invalid {
                origin: origin.to_owned(),
                message: format!("{} must be a non-negative integer, got {raw:?}", setting.key),
            }),
    }
}

impl ModelEndpoint {
    /// The embedding provider this endpoint names, or, when none is set, `api` with a base URL
    /// and `hashed` without (no file system look-up: see [`Config::resolve_embedding_provider`]).
    pub fn embedding_provider(&self) -> EmbeddingProvider {
        match self.provider.as_deref().and_then(EmbeddingProvider::parse) {
            Some(p) => p,
            None if self.base_url.as_deref().is_some_and(|u| !u.trim().is_empty()) => EmbeddingProvider::Api,
            None => EmbeddingProvider::Hashed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_a_local_database_with_offline_models() {
        let c = Config::defaults();
        assert!(c.database_url.ends_with("/ragpipe"));
        assert_eq!(c.embedding.base_url, None);
        assert_eq!(c.embedding.dim, 384);
        assert_eq!(c.chunking.max_tokens, 512);
        assert_eq!(c.chunking.overlap_tokens, 64);
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let file: toml::Table = "listen = \"0.0.0.0:9\"\n[embedding]\ndim = 1536\nmodel = \"file-model\"\n"
            .parse()
            .expect("toml");
        let c = Config::from_layers(file, |name| {
            (name == "RAGPIPE_EMBEDDING_MODEL").then(|| "env-model".to_owned())
        })
        .expect("valid");
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.embedding.dim, 1536);
        assert_eq!(c.embedding.model, "env-model");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::from_layers(toml::Table::new(), |n| {
            (n == "RAGPIPE_EMBEDDING_DIM").then(|| "lots".into())
        })
        .expect_err("invalid");
        assert!(err.to_string().contains("embedding.dim"), "{err}");
        let file: toml::Table = "[embedding]\ndimension = 3\n".parse().expect("toml");
        let err = Config::from_layers(file, |_| None).expect_err("invalid");
        assert!(err.to_string().contains("unknown setting embedding.dimension"), "{err}");
    }

    #[test]
    fn chunks_never_exceed_the_embedding_input_limit() {
        let c = Config::from_layers(toml::Table::new(), |n| {
            (n == "RAGPIPE_EMBEDDING_MAX_INPUT_TOKENS").then(|| "256".into())
        })
        .expect("valid");
        assert_eq!(c.chunking.max_tokens, 256);
    }

    #[test]
    fn the_embedding_provider_is_api_then_local_then_hashed() {
        let dir = PathBuf::from("/models/all-MiniLM-L6-v2");
        let resolve = |vars: &[(&str, &str)], present: bool| {
            let mut c = Config::from_layers(toml::Table::new(), |n| {
                vars.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned())
            })
            .expect("valid");
            c.resolve_embedding_provider(Some(dir.clone()), |_| present);
            c
        };
        let api = resolve(&[("RAGPIPE_EMBEDDING_BASE_URL", "http://127.0.0.1:1/v1")], true);
        assert_eq!(api.embedding_provider(), EmbeddingProvider::Api);
        assert_eq!(api.embedding.model, HASHED_MODEL);

        let local = resolve(&[], true);
        assert_eq!(local.embedding_provider(), EmbeddingProvider::Local);
        assert_eq!(local.embedding.model, "all-MiniLM-L6-v2");
        assert_eq!(local.embedding.local_dir.as_deref(), Some(dir.as_path()));

        let hashed = resolve(&[], false);
        assert_eq!(hashed.embedding_provider(), EmbeddingProvider::Hashed);
        assert_eq!(hashed.embedding.model, HASHED_MODEL);

        // An explicit choice wins over what is present; an explicit model name is kept.
        let pinned = resolve(&[("RAGPIPE_EMBEDDING_PROVIDER", "hashed")], true);
        assert_eq!(pinned.embedding_provider(), EmbeddingProvider::Hashed);
        let named = resolve(
            &[
                ("RAGPIPE_EMBEDDING_PROVIDER", "local"),
                ("RAGPIPE_EMBEDDING_MODEL", "minilm"),
            ],
            false,
        );
        assert_eq!(named.embedding_provider(), EmbeddingProvider::Local);
        assert_eq!(named.embedding.model, "minilm");

        // Without resolution (the defaults tests build on), nothing is looked up.
        assert_eq!(Config::defaults().embedding_provider(), EmbeddingProvider::Hashed);
        let err = Config::from_layers(toml::Table::new(), |n| {
            (n == "RAGPIPE_EMBEDDING_PROVIDER").then(|| "onnx".into())
        })
        .expect_err("unknown provider");
        assert!(err.to_string().contains("embedding.provider"), "{err}");
        assert_eq!(
            default_local_model_dir(|n| (n == "HOME").then(|| "/home/u".into())),
            Some(PathBuf::from("/home/u/.cache/ragpipe/models/all-MiniLM-L6-v2"))
        );
    }

    #[test]
    fn every_setting_maps_to_a_field() {
        // Setting each variable to a valid value must be accepted: a SETTINGS entry whose key
        // does not exist in the struct would be rejected by deny_unknown_fields.
        let c = Config::from_layers(toml::Table::new(), |n| {
            SETTINGS.iter().find(|s| s.env == n).map(|s| match s.kind {
                SettingKind::Integer if s.key == "chunking.overlap_tokens" => "10".into(),
                SettingKind::Integer => "100".into(),
                SettingKind::Text if s.key == "chunking.tokenizer" => "cl100k_base".into(),
                SettingKind::Text if s.key == "embedding.provider" => "hashed".into(),
                SettingKind::Text => "x".into(),
            })
        });
        assert!(c.is_ok(), "{c:?}");
    }
}

#[cfg(test)]
mod readme {
    #[test]
    fn every_setting_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        for s in super::SETTINGS {
            assert!(
                readme.contains(&format!("| `{}` | `{}` |", s.env, s.key)),
                "README lacks a row for {}",
                s.env
            );
        }
    }
}
