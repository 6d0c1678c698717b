//! What ingest jobs share, built once per process: the embedders by model, the chunkers by
//! settings (capped by a local model's own limit), the extraction limits and the prices.

use crate::JobError;
use ragpipe_core::{Config, SetupError};
use ragpipe_ingest::{ChunkSettings, Chunker, Limits, ModelLimit};
use ragpipe_llm::{Embedder, Embedders, PriceTable};
use ragpipe_store::{Store, embedding_models};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything an ingest job needs, built once per process and shared by all jobs.
pub struct IngestContext {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) embedders: Embedders,
    pub(crate) chunker: Arc<Chunker>,
    /// Chunkers for other settings or models (reprocessing runs), built once each.
    pub(crate) chunkers: std::sync::Mutex<HashMap<(u32, u32, String), Arc<Chunker>>>,
    pub(crate) limits: Limits,
    pub(crate) prices: PriceTable,
}

/// The limit chunks must hold to for `embedder` beyond the chunker's own: a local model's input
/// limit in its own word pieces (it refuses longer inputs rather than cut them); none for the
/// other providers, whose limit is `embedding.max_input_tokens`, already the chunk size's cap.
pub fn model_limit(embedder: &Embedder) -> Option<ModelLimit> {
    let model = Arc::clone(embedder.local_model()?);
    Some(ModelLimit {
        max_tokens: model.max_input_tokens(),
        // A text the tokenizer cannot read cannot be sent either: count it as over the limit.
        count: Arc::new(move |text: &str| model.count_tokens(text).unwrap_or(usize::MAX / 2)),
    })
}

/// The chunker ingest uses for `embedder`: `settings`, capped by the model's own limit when
/// the embedder is a local model ([`model_limit`]). `ragpipe extract --chunks` and the
/// benchmarks build theirs here too, so that they cut what ingest cuts.
pub fn chunker_for(settings: ChunkSettings, embedder: &Embedder) -> Result<Chunker, ragpipe_ingest::ChunkError> {
    let chunker = Chunker::new(settings)?;
    Ok(match model_limit(embedder) {
        Some(limit) => chunker.with_model_limit(limit),
        None => chunker,
    })
}

impl IngestContext {
    /// Builds the models and the chunker from the configuration.
    pub fn new(store: Store, config: Arc<Config>) -> Result<IngestContext, SetupError> {
        let embedders = Embedders::new(&config.embedding).map_err(SetupError::of("embedding model"))?;
        let chunker = chunker_for(ChunkSettings::from_config(&config.chunking), embedders.configured())
            .map_err(SetupError::of("chunker"))?;
        let prices = PriceTable::from_setting(config.prices.as_deref()).map_err(SetupError::of("RAGPIPE_PRICES"))?;
        Ok(IngestContext {
            store,
            limits: Limits::from_config(&config.limits),
            config,
            embedders,
            chunker: Arc::new(chunker),
            chunkers: Default::default(),
            prices,
        })
    }

    /// The embedder of `model`: the configured one, or another recorded model (with its own
    /// dimension and endpoint) that a reprocessing run moves documents to.
    pub(crate) async fn embedder_for(&self, model: &str) -> Result<Embedder, JobError> {
        if model == self.embedders.configured().model() {
            return Ok(self.embedders.configured().clone());
        }
        let recorded = embedding_models::get(&self.store, model).await?.ok_or_else(|| {
            JobError::permanent(format!(
                "embedding model {model:?} is not recorded: configure it (RAGPIPE_EMBEDDING_MODEL, _DIM, \
                 _BASE_URL) and run `ragpipe migrate` before reprocessing to it"
            ))
        })?;
        self.embedders
            .get(&recorded.model, recorded.dim as u32, recorded.base_url.as_deref())
            .map_err(|e| JobError::permanent(format!("embedding model {model}: {e}")))
    }

    /// The chunker for `max_tokens`/`overlap_tokens` with the configured tokenizer, holding
    /// chunks to `embedder`'s input limit when it is a local model ([`model_limit`]).
    pub(crate) fn chunker_for(
        &self,
        max_tokens: u32,
        overlap_tokens: u32,
        embedder: &Embedder,
    ) -> Result<Arc<Chunker>, JobError> {
        let configured = self.chunker.settings();
        if (configured.max_tokens, configured.overlap_tokens) == (max_tokens, overlap_tokens)
            && embedder.model() == self.embedders.configured().model()
        {
            return Ok(Arc::clone(&self.chunker));
        }
        let key = (max_tokens, overlap_tokens, embedder.model().to_owned());
        let mut chunkers = self
            .chunkers
            .lock()
            .map_err(|_| JobError::permanent("chunker registry poisoned"))?;
        if let Some(c) = chunkers.get(&key) {
            return Ok(Arc::clone(c));
        }
        let settings = ChunkSettings {
            max_tokens,
            overlap_tokens,
            tokenizer: configured.tokenizer.clone(),
        };
        let chunker = Arc::new(
            chunker_for(settings, embedder)
                .map_err(|e| JobError::permanent(format!("chunk settings {max_tokens}/{overlap_tokens}: {e}")))?,
        );
        chunkers.insert(key, Arc::clone(&chunker));
        Ok(chunker)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
