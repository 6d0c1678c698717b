//! Answering one question: retrieve → prompt → stream the model into the assistant message.
//!
//! Idempotent and resumable, because the job will run twice: everything is derived from the
//! agent request's row; text is appended with the length the writer expects (a second writer
//! is refused); the usage event's idempotency key is the request id; a request that ended is
//! skipped.
//!
//! An answer whose stream broke after text went out (the model's stream was cut or stalled, or
//! the worker died) is continued, not restarted: text readers have seen cannot be taken back.
//! The next attempt asks the model again with the same prompt and checks the new answer
//! against the text already written: while it repeats that text nothing is written; past its
//! end, the rest is appended. If the new answer differs from the written text, the answer ends
//! `failed` with the text kept, rather than a second, different answer after the first one's
//! start. A model that answers one prompt the same way (greedy decoding, a cache, the test
//! server) continues every time; one that samples continues only when its new answer happens
//! to start with the written text.
//!
//! Deltas are flushed to the row in batches ([`FlushPolicy`]), not per token: the first one at
//! once (time to first delta is what a reader feels); after that, text waits at most one
//! interval, and a write happens once an interval has passed since the last one or as soon
//! as `max_bytes` are waiting, whichever comes first. Each flush announces itself (see [`crate::feed`]); the
//! worker watches the same feed for its message being cancelled, and stops generating between
//! deltas when it is (dropping the model stream closes the connection).

use crate::feed::MessageFeed;
use crate::followup;
use crate::prompt::{Prompt, PromptInput, Prompts, Turn, assemble, prompt_budget};
use crate::retrieve::{QueryUsage, Retriever, SearchHit, SearchRequest};
use crate::sources::{Source, citations};
use futures::StreamExt;
use ragpipe_core::{Config, ConversationId, ErrorKind, MessageId, MessageStatus, RequestStatus, SetupError, UserId};
use ragpipe_llm::{ChatEvent, ChatModel, ChatRequest, Embedders, LlmError, PriceTable, TokenCounter};
use ragpipe_store::conversations::{self, AgentJob, AgentRequest, Ending, Written};
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::search::SearchMode;
use ragpipe_store::usage::{NewUsage, UsageKind, UsageOrigin};
use ragpipe_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Histogram of the writes of streamed text ([`FlushPolicy`]): connection, transaction and
/// commit, announcement included; a stage of the time from a model's token to a reader.
pub const APPEND_SECONDS: &str = "ragpipe_answer_stream_append_seconds";

/// Earlier messages read for the prompt's history (the budget decides how many are used).
const HISTORY_MESSAGES: u32 = 40;

/// When streamed text is written to the message row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Longest time text waits before it is written, and the shortest time between two
    /// writes that `max_bytes` did not force (the first delta is written at once).
    pub interval: Duration,
    /// Write as soon as this many bytes are waiting, however recent the last write.
    pub max_bytes: usize,
}

impl Default for FlushPolicy {
    /// 100 ms or 512 bytes: a reader sees text at most 100 ms after the model sent it, and an
    /// answer writes about ten times a second, more only while its model produces over 5 kB
    /// a second (one write per 512 bytes then).
    fn default() -> FlushPolicy {
        FlushPolicy {
            interval: Duration::from_millis(100),
            max_bytes: 512,
        }
    }
}

/// A failed step of answering, classified.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AnswerError {
    /// Whether retrying can help.
    pub kind: ErrorKind,
    /// What went wrong, readable by the person who asked.
    pub message: String,
}

impl From<StoreError> for AnswerError {
    fn from(e: StoreError) -> AnswerError {
        AnswerError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl AnswerError {
    fn permanent(message: impl Into<String>) -> AnswerError {
        AnswerError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// How answering ended (when it did not fail in a retryable way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is complete.
    Completed {
        /// Bytes of text.
        bytes: i64,
        /// Why the model stopped.
        finish_reason: String,
    },
    /// The answer failed with this reason (its text kept).
    Failed(String),
    /// The answer was cancelled while being written.
    Cancelled,
    /// Nothing to do: the request ended already, is gone, or another run owns the message.
    Skipped(&'static str),
}

impl Outcome {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

/// Answers prepared at once (read, retrieval, prompt) per unit of `worker.concurrency`.
/// Chosen on bursts of 50 questions (BENCHMARKS.md, "Streaming"): with `worker.concurrency` 2,
/// preparing 2, 4 or 8 at once gave a streaming overhead (model token to client) of 5.9, 7.4
/// and 17.8 ms at p50, and the questions their first delta after 640, 400 and 437 ms at p50;
/// with no bound, 56-65 ms of overhead.
pub const PREPARING_PER_WORKER_SLOT: usize = 2;

/// Everything answering needs, built once per process and shared by all jobs.
pub struct AnswerContext {
    store: Store,
    config: Arc<Config>,
    chat: ChatModel,
    retriever: Retriever,
    prompts: Prompts,
    tokens: TokenCounter,
    prices: PriceTable,
    feed: MessageFeed,
    flush: FlushPolicy,
    /// Answers being prepared (read, retrieval, prompt) at once: `worker.concurrency` ×
    /// [`PREPARING_PER_WORKER_SLOT`]. The
    /// process streams many answers at once, which mostly wait on the model; preparing one is
    /// the CPU and database work, and a burst of questions preparing all at once would queue
    /// the streaming answers' writes behind it (BENCHMARKS.md, "Streaming").
    preparing: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for AnswerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerContext")
            .field("chat", &self.chat)
            .field("flush", &self.flush)
            .finish_non_exhaustive()
    }
}

impl AnswerContext {
    /// Builds the models, loads the prompt templates and starts listening for cancellations.
    pub async fn new(store: Store, config: Arc<Config>) -> Result<AnswerContext, SetupError> {
        let chat = ChatModel::new(&config.chat).map_err(SetupError::of("chat model"))?;
        let embedders = Embedders::new(&config.embedding).map_err(SetupError::of("embedding model"))?;
        let prices = PriceTable::from_setting(config.prices.as_deref()).map_err(SetupError::of("RAGPIPE_PRICES"))?;
        let reranker = ragpipe_llm::Reranker::new(&config.rerank).map_err(SetupError::of("reranker"))?;
        let retriever = Retriever::new(store.clone(), embedders)
            .with_prices(prices.clone())
            .with_reranker(reranker);
        let prompts = Prompts::from_config(&config).map_err(SetupError::of("prompt templates"))?;
        if !prompts.overridden().is_empty() {
            tracing::info!(overridden = ?prompts.overridden(), "prompt templates overridden");
        }
        let tokens = TokenCounter::for_encoding(&config.chunking.tokenizer).map_err(SetupError::of("tokenizer"))?;
        let feed = MessageFeed::shared(&store)
            .await
            .map_err(SetupError::of("message feed"))?;
        let preparing = (config.worker.concurrency.max(1) as usize).saturating_mul(PREPARING_PER_WORKER_SLOT);
        Ok(AnswerContext {
            store,
            config,
            chat,
            retriever,
            prompts,
            tokens,
            prices,
            feed,
            flush: FlushPolicy::default(),
            preparing: Arc::new(tokio::sync::Semaphore::new(preparing)),
        })
    }

    /// The same context flushing by `flush`.
    pub fn with_flush(mut self, flush: FlushPolicy) -> AnswerContext {
        self.flush = flush;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The chat model.
    pub fn chat(&self) -> &ChatModel {
        &self.chat
    }
}

/// Answers the question of `job`. `last_attempt` says whether a retryable failure should end
/// the answer `failed` (true) or be returned for the queue to retry (false).
pub async fn answer(ctx: &AnswerContext, job: AgentJob, last_attempt: bool) -> Result<Outcome, AnswerError> {
    match run(ctx, job, last_attempt).await {
        Err(e) if !e.kind.is_retryable() || last_attempt => {
            let reason = if e.kind.is_retryable() {
                format!("gave up: {}", e.message)
            } else {
                e.message.clone()
            };
            let mut tx = ctx.store.user_tx(job.user_id).await?;
            conversations::give_up(&mut tx, job.request_id, &reason).await?;
            tx.commit().await?;
            Ok(Outcome::Failed(reason))
        }
        other => other,
    }
}

async fn run(ctx: &AnswerContext, job: AgentJob, last_attempt: bool) -> Result<Outcome, AnswerError> {
    let user = job.user_id;
    // The semaphore is never closed.
    let preparing = ctx.preparing.acquire().await.ok();
    let mut tx = ctx.store.user_tx(user).await?;
    let request = match conversations::request(&mut tx, job.request_id).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Ok(Outcome::Skipped("request deleted")),
        Err(e) => return Err(e.into()),
    };
    if matches!(
        request.status()?,
        RequestStatus::Completed | RequestStatus::Failed | RequestStatus::Cancelled
    ) || request.message_status()? != MessageStatus::Streaming
    {
        return Ok(Outcome::Skipped("request already ended"));
    }
    // Text an earlier attempt streamed before it stopped: this attempt continues after it.
    let written = if request.message_bytes > 0 {
        conversations::message(&mut tx, MessageId(request.assistant_message_id))
            .await?
            .content
    } else {
        String::new()
    };
    conversations::start(&mut tx, request.id).await?;
    let history = conversations::history(
        &mut tx,
        ConversationId(request.conversation_id),
        MessageId(request.user_message_id),
        HISTORY_MESSAGES,
    )
    .await?;
    tx.commit().await?;

    let mode: SearchMode = request
        .retrieval
        .get("mode")
        .and_then(|m| m.as_str())
        .and_then(|m| m.parse().ok())
        .unwrap_or_default();
    let k = request
        .retrieval
        .get("k")
        .and_then(|k| k.as_u64())
        .map_or(8, |k| k.clamp(1, 100) as u32);
    let (query, query_from) = retrieval_query(ctx, user, &request, &history).await;
    let search = SearchRequest {
        query: search_query(&query).to_owned(),
        mode,
        k,
        document_ids: Vec::new(),
        metadata: None,
        highlight: false,
    };
    let (sources, rerank): (Vec<Source>, _) = if search.query.trim().is_empty() {
        (Vec::new(), None)
    } else {
        // The query's embedding calls (and a rerank call) are recorded as they happen, under
        // keys of their own: an attempt that fails later (or is retried) has still made them.
        let searched = ctx
            .retriever
            .search_ranked(
                user,
                &search,
                &QueryUsage::agent(request.id, request.assistant_message_id),
            )
            .await
            .map_err(|e| AnswerError {
                kind: e.kind(),
                message: format!("retrieving passages: {e}"),
            })?;
        (searched.hits.iter().map(source_of).collect(), searched.rerank)
    };

    let turns = pair_turns(&history);
    let prompt = assemble(
        &ctx.prompts,
        &ctx.tokens,
        &PromptInput {
            question: &request.question,
            sources: &sources,
            history: &turns,
        },
        prompt_budget(&ctx.config.chat),
    )
    .map_err(|e| AnswerError::permanent(e.to_string()))?;
    let mut tx = ctx.store.user_tx(user).await?;
    conversations::merge_results(
        &mut tx,
        request.id,
        &serde_json::json!({
            "context": prompt.context,
            "prompt_tokens": prompt.tokens,
            "history_turns": prompt.history_turns,
            "sources_dropped": prompt.sources_dropped,
            "model": ctx.chat.model(),
            "search_query": search.query,
            "search_query_from": query_from,
            "rerank": rerank,
        }),
        0.3,
    )
    .await?;
    tx.commit().await?;
    drop(preparing);

    stream_answer(ctx, user, &request, prompt, &written, last_attempt).await
}

/// What to search for the question of `request`, and where that came from: the question
/// itself (`question`: a first turn), a query condensed from the conversation by the chat model
/// (`condensed`, kept in the request's results so a retry reuses it instead of asking again),
/// or the offline carry-over of the earlier questions' salient terms (`carried`: no chat model,
/// or the condense call failed).
async fn retrieval_query(
    ctx: &AnswerContext,
    user: UserId,
    request: &AgentRequest,
    history: &[conversations::HistoryMessage],
) -> (String, &'static str) {
    let earlier_questions: Vec<&str> = history
        .iter()
        .filter(|m| m.role == "user" && !m.content.trim().is_empty())
        .map(|m| m.content.as_str())
        .collect();
    if earlier_questions.is_empty() {
        return (request.question.clone(), "question");
    }
    if request.results.get("search_query_from").and_then(|v| v.as_str()) == Some("condensed")
        && let Some(q) = request.results.get("search_query").and_then(|v| v.as_str())
    {
        return (q.to_owned(), "condensed");
    }
    let carried = || {
        (
            followup::retrieval_query(&request.question, &earlier_questions),
            "carried",
        )
    };
    if ctx.chat.is_offline() {
        return carried();
    }
    match condense(ctx, user, request, history).await {
        Ok(query) => (query, "condensed"),
        Err(e) => {
            tracing::warn!(request_id = %request.id, error = %e, kind = ?e.kind, "condensing the follow-up failed; carrying its terms over");
            carried()
        }
    }
}

/// Asks the chat model for a standalone query (`prompts/condense.md`), records the call as a
/// chat usage event keyed `agent:{request}:condense` and keeps the query in the request's
/// results, both in one transaction.
async fn condense(
    ctx: &AnswerContext,
    user: UserId,
    request: &AgentRequest,
    history: &[conversations::HistoryMessage],
) -> Result<String, AnswerError> {
    let earlier: Vec<followup::Said<'_>> = history
        .iter()
        .filter(|m| m.role == "user" || (m.role == "assistant" && m.status == "complete"))
        .map(|m| followup::Said {
            user: m.role == "user",
            text: m.content.as_str(),
        })
        .collect();
    let messages = followup::condense_messages(&ctx.prompts, &ctx.tokens, &earlier, &request.question);
    let prompt_tokens_counted = ragpipe_llm::count_prompt_tokens(&ctx.tokens, &messages);
    let model_error = |e: LlmError| AnswerError {
        kind: e.kind(),
        message: format!("condensing the question with {}: {e}", ctx.chat.model()),
    };
    let mut stream = ctx
        .chat
        .stream(ChatRequest {
            messages,
            max_tokens: followup::CONDENSE_MAX_TOKENS,
            sources: Vec::new(),
        })
        .await
        .map_err(model_error)?;
    let requests = stream.requests();
    let mut text = String::new();
    let mut usage = None;
    loop {
        match stream.next().await {
            Some(Ok(ChatEvent::Delta(delta))) => text.push_str(&delta),
            Some(Ok(ChatEvent::Usage {
                prompt_tokens,
                completion_tokens,
                counted_locally,
            })) if !counted_locally => usage = Some((prompt_tokens, completion_tokens)),
            Some(Ok(ChatEvent::Finish { .. })) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(model_error(e)),
            None => {
                return Err(model_error(LlmError::StreamIncomplete {
                    context: format!("condensing with {}", ctx.chat.model()),
                    deltas: 0,
                }));
            }
        }
    }
    drop(stream);
    let (prompt_tokens, completion_tokens) =
        usage.unwrap_or_else(|| (prompt_tokens_counted, ctx.tokens.count(&text) as u64));
    let model = ctx.chat.model();
    let event = NewUsage {
        kind: UsageKind::Chat,
        model,
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
        requests,
        cost: ctx.prices.cost(model, prompt_tokens, completion_tokens),
        idempotency_key: format!("{}:condense", usage_key(request.id)),
        document_id: None,
        message_id: Some(request.assistant_message_id),
        request_id: Some(request.id),
        origin: UsageOrigin::User,
    };
    let query = followup::clean_condensed(&text);
    // The call was made: it is recorded whether or not its answer is usable.
    retry("recording the condense call", RetryPolicy::POLLING, || async {
        let mut tx = ctx.store.user_tx(user).await?;
        ragpipe_store::usage::record(&mut tx, &event).await?;
        if let Some(q) = &query {
            conversations::merge_results(
                &mut tx,
                request.id,
                &serde_json::json!({ "search_query": q, "search_query_from": "condensed" }),
                0.1,
            )
            .await?;
        }
        tx.commit().await
    })
    .await?;
    query.ok_or_else(|| AnswerError::permanent(format!("{model} gave no usable query: {text:?}")))
}

/// Longest query sent to search, in bytes (the search refuses longer ones).
const MAX_QUERY_BYTES: usize = 4096;

/// The question as a search query: cut on a character boundary to what search accepts.
fn search_query(question: &str) -> &str {
    if question.len() <= MAX_QUERY_BYTES {
        return question;
    }
    let mut end = MAX_QUERY_BYTES;
    while !question.is_char_boundary(end) {
        end -= 1;
    }
    &question[..end]
}

/// A search hit as a source for the prompt.
pub fn source_of(hit: &SearchHit) -> Source {
    Source {
        chunk_id: hit.chunk_id,
        document_id: hit.document_id,
        filename: hit.filename.clone(),
        page_first: hit.page_first,
        page_last: hit.page_last,
        heading_path: hit.heading_path.clone(),
        score: hit.score,
        text: hit.content.clone(),
        also_in: hit
            .also_in
            .iter()
            .map(|a| crate::sources::AlsoIn {
                document_id: a.document_id,
                filename: a.filename.clone(),
            })
            .collect(),
    }
}

/// Pairs the history's questions with their complete answers, oldest first; questions whose
/// answer failed, was cancelled or is missing are left out.
pub fn pair_turns(history: &[conversations::HistoryMessage]) -> Vec<Turn> {
    let mut turns = Vec::new();
    for pair in history.windows(2) {
        let (q, a) = (&pair[0], &pair[1]);
        if q.role == "user" && a.role == "assistant" && a.status == "complete" && !a.content.is_empty() {
            turns.push(Turn {
                question: q.content.clone(),
                answer: a.content.clone(),
            });
        }
    }
    turns
}

/// How a stream ended.
enum End {
    Finished {
        reason: String,
    },
    Failed(LlmError),
    /// The model's new answer did not repeat the text an earlier attempt wrote.
    Diverged,
    Cancelled,
    Superseded,
}

/// The reason an answer ends with when its continuation differs from the text already sent.
const DIVERGED: &str = "the answer was interrupted, and the model answered differently when asked again; ask again";

/// Where a (possibly continued) answer's new stream stands against the text already written.
struct Continuation<'a> {
    /// The text earlier attempts wrote.
    written: &'a str,
    /// Whether the new stream has repeated all of it.
    caught_up: bool,
}

impl<'a> Continuation<'a> {
    fn new(written: &'a str) -> Self {
        Continuation {
            written,
            caught_up: written.is_empty(),
        }
    }

    /// `received` (the new stream's whole text so far) just grew by `delta`: the text to
    /// write now, or `None` when the stream departs from the written text.
    fn advance<'r>(&mut self, received: &'r str, delta: &'r str) -> Option<&'r str> {
        if self.caught_up {
            return Some(delta);
        }
        if received.len() < self.written.len() {
            return self.written.starts_with(received).then_some("");
        }
        if !received.starts_with(self.written) {
            return None;
        }
        self.caught_up = true;
        Some(&received[self.written.len()..])
    }
}

async fn stream_answer(
    ctx: &AnswerContext,
    user: UserId,
    request: &AgentRequest,
    prompt: Prompt,
    already: &str,
    last_attempt: bool,
) -> Result<Outcome, AnswerError> {
    let message = MessageId(request.assistant_message_id);
    let mut subscription = ctx.feed.subscribe_writer(message);
    let chat_request = ChatRequest {
        messages: prompt.messages.clone(),
        max_tokens: 0,
        sources: prompt.passages.clone(),
    };
    // Failures before the first delta were retried inside; what is left is returned for the
    // queue to retry (the next attempt starts over, or continues after text already written).
    let mut stream = ctx.chat.stream(chat_request).await.map_err(|e| AnswerError {
        kind: e.kind(),
        message: format!("asking {}: {e}", ctx.chat.model()),
    })?;
    let requests = stream.requests();

    let flush = ctx.flush;
    let mut written = already.len() as i64;
    let mut continuation = Continuation::new(already);
    let mut pending = String::new();
    let mut received = String::new();
    let mut usage: Option<(u64, u64)> = None;
    let mut last_flush = Instant::now() - flush.interval;
    let end = loop {
        let flush_at = (!pending.is_empty()).then_some(last_flush + flush.interval);
        tokio::select! {
            biased;
            _ = subscription.changed(Duration::from_secs(3600)) => {
                if subscription.status() == Some(MessageStatus::Cancelled) {
                    break End::Cancelled;
                }
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                match append(ctx, user, message, &mut written, &mut pending).await? {
                    None => last_flush = Instant::now(),
                    Some(end) => break end,
                }
            }
            event = stream.next() => match event {
                Some(Ok(ChatEvent::Delta(text))) => {
                    received.push_str(&text);
                    match continuation.advance(&received, &text) {
                        Some(new) => pending.push_str(new),
                        None => break End::Diverged,
                    }
                    if pending.len() >= flush.max_bytes || last_flush.elapsed() >= flush.interval {
                        match append(ctx, user, message, &mut written, &mut pending).await? {
                            None => last_flush = Instant::now(),
                            Some(end) => break end,
                        }
                    }
                }
                Some(Ok(ChatEvent::Usage { prompt_tokens, completion_tokens, counted_locally })) => {
                    // Server counts when reported; otherwise ragpipe's tiktoken counts of the
                    // prompt as assembled and of the text received (the same numbers the
                    // model client computes, from the same messages).
                    usage = Some(if counted_locally {
                        (prompt.tokens as u64, ctx.tokens.count(&received) as u64)
                    } else {
                        (prompt_tokens, completion_tokens)
                    });
                }
                Some(Ok(ChatEvent::Finish { .. })) if !continuation.caught_up => break End::Diverged,
                Some(Ok(ChatEvent::Finish { reason })) => break End::Finished { reason: reason.as_str().to_owned() },
                Some(Err(e)) => break End::Failed(e),
                None => break End::Failed(LlmError::StreamIncomplete {
                    context: format!("chat with {}", ctx.chat.model()),
                    deltas: 0,
                }),
            }
        }
    };
    // Stop generating now (dropping the stream closes the connection), before the writes.
    drop(stream);
    drop(subscription);
    let end = match end {
        // Broken after text went out: keep what arrived, and let the queue run the job again,
        // which continues after it. Nothing is recorded: the call that completes the answer is.
        End::Failed(e) if e.kind().is_retryable() && !last_attempt => {
            match append(ctx, user, message, &mut written, &mut pending).await? {
                None => {
                    return Err(AnswerError {
                        kind: e.kind(),
                        message: format!("streaming from {}: {e}", ctx.chat.model()),
                    });
                }
                Some(end) => end,
            }
        }
        end => end,
    };

    let (prompt_tokens, completion_tokens) =
        usage.unwrap_or_else(|| (prompt.tokens as u64, ctx.tokens.count(&received) as u64));
    let model = ctx.chat.model();
    let mut ending = Ending {
        request: request.id,
        message,
        expected_bytes: written,
        tail: &pending,
        model,
        prompt_tokens,
        completion_tokens,
        cost: ctx.prices.cost(model, prompt_tokens, completion_tokens),
        results: serde_json::json!({}),
    };
    let usage_event = NewUsage {
        kind: UsageKind::Chat,
        model,
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
        requests,
        cost: ending.cost,
        idempotency_key: usage_key(request.id),
        document_id: None,
        message_id: Some(message.0),
        request_id: Some(request.id),
        origin: UsageOrigin::User,
    };
    // What the end writes, decided once; written in one transaction, retried whole when the
    // connection is lost (the call was made: its usage must not be lost with it).
    let close = match &end {
        End::Finished { reason } => {
            ending.results = serde_json::json!({ "finish_reason": reason });
            let cited = citations(&received, &prompt.context);
            Close::Complete {
                reason: reason.clone(),
                cited: serde_json::to_value(&cited).unwrap_or_default(),
            }
        }
        End::Failed(e) => {
            ending.results = serde_json::json!({ "error_kind": e.kind() });
            Close::Fail { reason: e.to_string() }
        }
        End::Diverged => {
            // None of the new answer is written.
            ending.tail = "";
            ending.results = serde_json::json!({ "error_kind": ErrorKind::Permanent });
            Close::Fail {
                reason: DIVERGED.to_owned(),
            }
        }
        End::Cancelled => Close::Cancel,
        End::Superseded => return Ok(Outcome::Skipped("another run owns the message")),
    };
    // Made once, so that replaying the transaction cannot count the call twice.
    let superseded_key = format!("{}:superseded:{}", usage_key(request.id), Uuid::new_v4());
    let outcome = retry("ending an answer", RetryPolicy::POLLING, || async {
        let mut ending = ending.clone();
        let mut tx = ctx.store.user_tx(user).await?;
        let written = match &close {
            Close::Complete { cited, .. } => conversations::complete(&mut tx, &ending, cited).await?,
            Close::Fail { reason } => conversations::fail(&mut tx, &ending, reason).await?,
            Close::Cancel => Written::Refused {
                status: MessageStatus::Cancelled,
                bytes: 0,
            },
        };
        let outcome = match (written, &close) {
            (Written::Done { bytes }, Close::Complete { reason, .. }) => Outcome::Completed {
                bytes,
                finish_reason: reason.clone(),
            },
            (Written::Done { .. }, Close::Fail { reason }) => Outcome::Failed(reason.clone()),
            (Written::Done { .. }, Close::Cancel)
            | (
                Written::Refused {
                    status: MessageStatus::Cancelled,
                    ..
                },
                _,
            ) => {
                if matches!(close, Close::Complete { .. }) {
                    ending.tail = "";
                }
                conversations::settle_cancelled(&mut tx, &ending).await?;
                Outcome::Cancelled
            }
            (Written::Refused { .. }, Close::Complete { .. }) => {
                // Another run of the job (a duplicate delivery) wrote the answer first. This
                // run's call finished all the same and was billed: it is recorded, under a key
                // of its own (the answer's key is the other run's).
                let superseded = NewUsage {
                    idempotency_key: superseded_key.clone(),
                    ..usage_event.clone()
                };
                ragpipe_store::usage::record(&mut tx, &superseded).await?;
                tx.commit().await?;
                return Ok(Outcome::Skipped("another run owns the message"));
            }
            (Written::Refused { .. }, _) => {
                tx.rollback().await?;
                return Ok(Outcome::Skipped("another run owns the message"));
            }
        };
        ragpipe_store::usage::record(&mut tx, &usage_event).await?;
        tx.commit().await?;
        Ok(outcome)
    })
    .await?;
    Ok(outcome)
}

/// What ending an answer writes.
enum Close {
    Complete { reason: String, cited: serde_json::Value },
    Fail { reason: String },
    Cancel,
}

/// The usage event key of an agent request: one event per question, whatever the retries.
pub fn usage_key(request: Uuid) -> String {
    format!("agent:{request}")
}

/// Writes the pending text. `Some(end)` when the message no longer takes text.
async fn append(
    ctx: &AnswerContext,
    user: UserId,
    message: MessageId,
    written: &mut i64,
    pending: &mut String,
) -> Result<Option<End>, AnswerError> {
    if pending.is_empty() {
        return Ok(None);
    }
    // A lost connection costs a pause, not the answer. A retry after a commit whose reply was
    // lost finds the text already there: the length says so.
    let expected = *written + pending.len() as i64;
    let started = Instant::now();
    let result = retry("appending to an answer", RetryPolicy::POLLING, || async {
        let mut tx = ctx.store.user_tx(user).await?;
        let result = conversations::append(&mut tx, message, *written, pending).await?;
        tx.commit().await?;
        Ok(result)
    })
    .await?;
    metrics::histogram!(APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(match result {
        Written::Refused {
            status: MessageStatus::Streaming,
            bytes,
        } if bytes == expected => {
            ctx.feed.wrote(message, *written, pending);
            *written = bytes;
            pending.clear();
            None
        }
        Written::Done { bytes } => {
            ctx.feed.wrote(message, bytes - pending.len() as i64, pending);
            *written = bytes;
            pending.clear();
            None
        }
        Written::Refused {
            status: MessageStatus::Cancelled,
            ..
        } => Some(End::Cancelled),
        Written::Refused { .. } => Some(End::Superseded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_store::conversations::HistoryMessage;

    fn m(role: &str, content: &str, status: &str) -> HistoryMessage {
        HistoryMessage {
            role: role.into(),
            content: content.into(),
            status: status.into(),
        }
    }

    #[test]
    fn turns_pair_questions_with_complete_answers() {
        let history = vec![
            m("user", "q1", "complete"),
            m("assistant", "a1", "complete"),
            m("user", "q2", "complete"),
            m("assistant", "partial", "failed"),
            m("user", "q3", "complete"),
            m("assistant", "a3", "complete"),
        ];
        let turns = pair_turns(&history);
        assert_eq!(
            turns
                .iter()
                .map(|t| (t.question.as_str(), t.answer.as_str()))
                .collect::<Vec<_>>(),
            vec![("q1", "a1"), ("q3", "a3")]
        );
    }

    /// Feeds `deltas` to a continuation of `written`: what each step writes, `None` once it
    /// departs.
    fn continue_after(written: &str, deltas: &[&str]) -> Vec<Option<String>> {
        let mut continuation = Continuation::new(written);
        let mut received = String::new();
        deltas
            .iter()
            .map(|d| {
                received.push_str(d);
                continuation.advance(&received, d).map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_fresh_answer_writes_every_delta() {
        assert_eq!(
            continue_after("", &["Work", "ers ", "restart."]),
            [Some("Work".into()), Some("ers ".into()), Some("restart.".into())]
        );
    }

    #[test]
    fn a_continuation_writes_only_what_follows_the_written_text() {
        // The written text ends inside the second delta, and inside a character's bytes of
        // no delta: the split falls where the new stream passes it.
        assert_eq!(
            continue_after("Workers re", &["Work", "ers restart", " after", " a drop."]),
            [
                Some(String::new()),
                Some("start".into()),
                Some(" after".into()),
                Some(" a drop.".into())
            ]
        );
        assert_eq!(
            continue_after("Grüße ", &["Grü", "ße ", "aus ", "Köln"]),
            [
                Some(String::new()),
                Some(String::new()),
                Some("aus ".into()),
                Some("Köln".into())
            ]
        );
    }

    #[test]
    fn a_continuation_that_departs_from_the_written_text_is_refused() {
        // Differs before the written text's end, and at it.
        assert_eq!(
            continue_after("Workers restart", &["Work", "s fine"]),
            [Some(String::new()), None]
        );
        assert_eq!(
            continue_after("Workers", &["Worker", "z and more"]),
            [Some(String::new()), None]
        );
    }
}
