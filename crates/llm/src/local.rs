//! The local embedding provider: a BERT-family sentence-embedding model (all-MiniLM-L6-v2 by
//! default) run in-process by `ragpipe-encoder` over the `gemm` kernels, its inputs counted and
//! encoded with the model's own tokenizer (the `tokenizers` crate).
//!
//! What it guarantees:
//!
//! - **The vectors sentence-transformers computes**: the encoder's last hidden states, mean
//!   pooled over the attention mask, then L2-normalised (the `Transformer → Pooling(mean) →
//!   Normalize` pipeline of the model's `modules.json`). `tests/local_embeddings.rs` holds them
//!   to vectors computed by the Python package (`fixtures/embeddings/minilm-reference.json`).
//! - **Nothing is cut**: an input longer than the model reads (its `max_seq_length`, 256 word
//!   pieces for MiniLM, counted with `[CLS]` and `[SEP]`) is an error of kind
//!   `ContextTooLong`, never silently truncated. The chunker caps chunks with
//!   [`LocalModel::count_tokens`] so that ingest never sends one.
//! - **The async runtime never runs the model**: tokenising and inference run on a dedicated
//!   pool of `threads` threads; at most `2 × threads` batches wait for it (a bounded queue),
//!   callers beyond that wait asynchronously for a slot.
//! - **Batches sized by tokens**: inputs are sorted by length and grouped so that a batch holds
//!   at most `batch_tokens` word pieces (the encoder packs sequences, so nothing is padded).

use crate::LlmError;
use ragpipe_encoder::{Bert, read_config};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Word pieces in one forward pass. 2048 keeps a MiniLM batch's activations at a few MB while
/// the matrix products stay large enough for the kernels to run at full speed.
pub const DEFAULT_BATCH_TOKENS: usize = 2048;

/// A sentence-embedding model loaded from a directory: weights, configuration, tokenizer.
pub struct LocalModel {
    dir: PathBuf,
    tokenizer: Tokenizer,
    model: Bert,
    dim: usize,
    max_input_tokens: usize,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("max_input_tokens", &self.max_input_tokens)
            .finish_non_exhaustive()
    }
}

/// The parts of `sentence_bert_config.json` read here.
#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl LocalModel {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`. The input
    /// limit is `sentence_bert_config.json`'s `max_seq_length` when the file is there (what
    /// sentence-transformers reads), else the model's `max_position_embeddings`.
    pub fn load(dir: &Path) -> Result<LocalModel, LlmError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| LlmError::LocalModel {
                context: format!("reading {}", path.display()),
                source: Box::new(e),
            })
        };
        let config = read_config(&dir.join("config.json")).map_err(from_encoder)?;
        let mut max_input_tokens = config.max_position_embeddings;
        if let Ok(bytes) = std::fs::read(dir.join("sentence_bert_config.json")) {
            let st: SentenceBertConfig = serde_json::from_slice(&bytes).map_err(|e| LlmError::LocalModel {
                context: format!("reading {}", dir.join("sentence_bert_config.json").display()),
                source: Box::new(e),
            })?;
            if let Some(n) = st.max_seq_length {
                max_input_tokens = n.min(config.max_position_embeddings);
            }
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| LlmError::LocalModel {
            context: format!("reading {}", tokenizer_path.display()),
            source: e,
        })?;
        // tokenizer.json may carry truncation and padding (MiniLM's: 128, fixed); inputs are
        // checked against the model's limit instead, and padded per batch here.
        tokenizer
            .with_truncation(None)
            .map_err(|e| LlmError::LocalModel {
                context: format!("turning off truncation in {}", tokenizer_path.display()),
                source: e,
            })?
            .with_padding(None);
        let weights = read("model.safetensors")?;
        let model = Bert::load(&config, &weights, &dir.join("model.safetensors")).map_err(from_encoder)?;
        Ok(LocalModel {
            dir: dir.to_path_buf(),
            tokenizer,
            dim: model.hidden_size(),
            model,
            max_input_tokens,
        })
    }

    /// The dimension of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The longest input the model reads, in its word pieces, `[CLS]` and `[SEP]` included.
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Word pieces `text` is read as, `[CLS]` and `[SEP]` included (what the limit counts).
    pub fn count_tokens(&self, text: &str) -> Result<usize, LlmError> {
        self.tokenizer
            .encode_fast(text, true)
            .map(|e| e.len())
            .map_err(|e| LlmError::LocalModel {
                context: format!("tokenising {} bytes", text.len()),
                source: e,
            })
    }

    /// Tokenises `inputs` and holds each to the limit as `over` says: the ids of every input,
    /// in order, and how many were cut.
    fn encode(&self, inputs: &[String], over: OverLimit) -> Result<(Vec<Vec<u32>>, u32), LlmError> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| LlmError::LocalModel {
                context: format!("tokenising {} inputs", inputs.len()),
                source: e,
            })?;
        let max = self.max_input_tokens;
        let mut cut = 0;
        let mut ids = Vec::with_capacity(encodings.len());
        for (i, e) in encodings.into_iter().enumerate() {
            let mut input = e.get_ids().to_vec();
            if input.len() > max {
                match over {
                    OverLimit::Refuse => {
                        return Err(LlmError::InputTooLong {
                            context: format!("embedding input {i} ({} bytes) with the local model", inputs[i].len()),
                            tokens: input.len(),
                            max_tokens: max,
                        });
                    }
                    OverLimit::Cut => {
                        // Keep the head and the closing special token ([SEP]), as the
                        // tokenizer's own truncation does.
                        let last = input[input.len() - 1];
                        input.truncate(max.saturating_sub(1));
                        input.push(last);
                        cut += 1;
                    }
                }
            }
            ids.push(input);
        }
        Ok((ids, cut))
    }

    /// One forward pass over `batch` (token ids, each within the limit) on the current rayon
    /// pool: mean pooling over each input's tokens, then L2 normalisation, as
    /// sentence-transformers does.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, LlmError> {
        let hidden = self.model.forward(batch).map_err(|message| LlmError::LocalModel {
            context: format!("running the local model on {} inputs", batch.len()),
            source: message.into(),
        })?;
        let dim = self.dim;
        let mut out = Vec::with_capacity(batch.len());
        let mut row = 0;
        for input in batch {
            let mut sum = vec![0f32; dim];
            for state in hidden[row * dim..(row + input.len()) * dim].chunks_exact(dim) {
                sum.iter_mut().zip(state).for_each(|(s, x)| *s += x);
            }
            row += input.len();
            // sentence-transformers: sum / max(count, 1e-9), then x / max(‖x‖, 1e-12).
            let n = (input.len() as f32).max(1e-9);
            sum.iter_mut().for_each(|s| *s /= n);
            let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            sum.iter_mut().for_each(|s| *s /= norm);
            out.push(sum);
        }
        Ok(out)
    }
}

fn from_encoder(e: ragpipe_encoder::EncoderError) -> LlmError {
    LlmError::LocalModel {
        context: e.context,
        source: e.source,
    }
}

/// What [`LocalRuntime::embed`] does with an input longer than the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Fail the call with [`LlmError::InputTooLong`] (kind `ContextTooLong`).
    Refuse,
    /// Embed its first word pieces (up to the limit, the closing `[SEP]` kept) and count it in
    /// [`LocalEmbedded::truncated`]: what the other providers do with an over-long input.
    Cut,
}

/// The vectors of some inputs and the word pieces they were read as.
#[derive(Debug, Default)]
pub struct LocalEmbedded {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Word pieces read, `[CLS]` and `[SEP]` included (after any cut).
    pub tokens: u64,
    /// Inputs cut to the limit ([`OverLimit::Cut`]).
    pub truncated: u32,
}

/// A [`LocalModel`] with the pool it runs on. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct LocalRuntime {
    model: Arc<LocalModel>,
    pool: Arc<rayon::ThreadPool>,
    /// Batches queued or running on the pool, across every caller: the bounded queue.
    queue: Arc<tokio::sync::Semaphore>,
    threads: usize,
    batch_tokens: usize,
}

impl std::fmt::Debug for LocalRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRuntime")
            .field("model", &self.model)
            .field("threads", &self.threads)
            .field("batch_tokens", &self.batch_tokens)
            .finish_non_exhaustive()
    }
}

impl LocalRuntime {
    /// Loads the model in `dir` and starts a pool of `threads` threads (0: one per core) whose
    /// queue holds at most `2 × threads` batches of at most `batch_tokens` padded tokens.
    pub fn start(dir: &Path, threads: usize, batch_tokens: usize) -> Result<LocalRuntime, LlmError> {
        let model = LocalModel::load(dir)?;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ragpipe-embed-{i}"))
            .build()
            .map_err(|e| LlmError::LocalModel {
                context: format!("starting {threads} embedding threads"),
                source: Box::new(e),
            })?;
        Ok(LocalRuntime {
            model: Arc::new(model),
            pool: Arc::new(pool),
            queue: Arc::new(tokio::sync::Semaphore::new(2 * threads)),
            threads,
            batch_tokens: batch_tokens.max(model_max(dir)),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<LocalModel> {
        &self.model
    }

    /// Threads running the model.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool once a queue slot is free, without blocking the caller's thread.
    async fn run<T: Send + 'static>(
        &self,
        context: impl Fn() -> String,
        work: impl FnOnce(&LocalModel) -> Result<T, LlmError> + Send + 'static,
    ) -> Result<T, LlmError> {
        let permit = Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(|e| LlmError::Task {
                context: context(),
                message: e.to_string(),
            })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let model = Arc::clone(&self.model);
        self.pool.spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&model)));
            drop(permit);
            // The caller may have gone away; its result is then of no use to anyone.
            let _ = tx.send(outcome);
        });
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LlmError::Task {
                context: context(),
                message: "the local model panicked".into(),
            }),
            Err(e) => Err(LlmError::Task {
                context: context(),
                message: e.to_string(),
            }),
        }
    }

    /// Embeds `inputs`: one vector per input in input order, and the word pieces read. An input
    /// over the limit fails the call or is cut, as `over` says.
    pub async fn embed(&self, inputs: &[String], over: OverLimit) -> Result<LocalEmbedded, LlmError> {
        if inputs.is_empty() {
            return Ok(LocalEmbedded::default());
        }
        let owned = inputs.to_vec();
        let n = inputs.len();
        let (ids, truncated) = self
            .run(
                move || format!("tokenising {n} inputs"),
                move |m| m.encode(&owned, over),
            )
            .await?;
        let ids = Arc::new(ids);
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let batches = token_batches(&lengths, self.batch_tokens);
        let runs = batches.into_iter().map(|order| {
            let ids = Arc::clone(&ids);
            let size = order.len();
            async move {
                let order_for_work = order.clone();
                let vectors = self
                    .run(
                        move || format!("embedding a batch of {size} inputs"),
                        move |m| {
                            let batch: Vec<&[u32]> = order_for_work.iter().map(|&i| ids[i].as_slice()).collect();
                            m.forward(&batch)
                        },
                    )
                    .await?;
                Ok::<_, LlmError>((order, vectors))
            }
        });
        let done = futures::future::try_join_all(runs).await?;
        let mut slots: Vec<Vec<f32>> = vec![Vec::new(); n];
        for (order, vectors) in done {
            for (i, v) in order.into_iter().zip(vectors) {
                slots[i] = v;
            }
        }
        Ok(LocalEmbedded {
            vectors: slots,
            tokens: lengths.iter().map(|&l| l as u64).sum(),
            truncated,
        })
    }
}

/// The model's limit read without loading it (for sizing batches: one full-length input must
/// fit); MiniLM's 256 when unreadable.
fn model_max(dir: &Path) -> usize {
    std::fs::read(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<SentenceBertConfig>(&b).ok())
        .and_then(|c| c.max_seq_length)
        .unwrap_or(256)
}

/// Groups inputs by length into batches of at most `batch_tokens` tokens (a longer input goes
/// alone): each batch lists input indices, shortest first. Sorting by length makes the
/// attention work of a batch even across its inputs.
pub fn token_batches(lengths: &[usize], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        if !current.is_empty() && tokens + lengths[i] > batch_tokens {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens += lengths[i];
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_bound_tokens_and_cover_every_input_once() {
        let lengths = [10, 250, 12, 11, 200, 3, 256, 9];
        let batches = token_batches(&lengths, 512);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            assert!(b.iter().map(|&i| lengths[i]).sum::<usize>() <= 512, "{b:?}");
        }
        // Shortest first: 3 + 9 + 10 + 11 + 12 + 200 + 250 = 495 tokens fill the first batch,
        // the 256 goes in the next.
        assert_eq!(batches, vec![vec![5, 7, 0, 3, 2, 4, 1], vec![6]]);
        assert!(token_batches(&[], 512).is_empty());
        // An input longer than the budget still goes, alone.
        assert_eq!(token_batches(&[600, 5], 512), vec![vec![1], vec![0]]);
    }

    #[test]
    fn a_directory_without_the_model_is_a_permanent_error_naming_the_file() {
        let err = LocalModel::load(Path::new("/nonexistent/model")).expect_err("no model there");
        assert_eq!(err.kind(), ragpipe_core::ErrorKind::Permanent);
        assert!(err.to_string().contains("/nonexistent/model/config.json"), "{err}");
    }
}
