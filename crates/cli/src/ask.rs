//! `ragpipe ask`: ask a question over a user's documents and stream the answer to the terminal
//! as it is written, then list the sources it cited.
//!
//! The question goes through the store exactly as over HTTP (one transaction: messages, agent
//! request, job); an agent worker answers it (in this process unless `--no-local-workers`), and
//! the answer is followed through its message row and change notifications, as the SSE
//! endpoint does, so it streams the same whichever process writes it.

use anyhow::{Context, bail};
use clap::Args;
use ragpipe_agent::follow::{FollowError, Next};
use ragpipe_agent::retrieve::SearchMode;
use ragpipe_agent::sources::Citation;
use ragpipe_agent::{AnswerEvent, Cursor, Follower, MessageFeed};
use ragpipe_core::{Config, ConversationId, MessageId, MessageStatus, UserId};
use ragpipe_store::Store;
use ragpipe_store::conversations::{self, AskSettings};
use ragpipe_store::retry::{RetryPolicy, retry, retry_when, worth_retrying};
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// After this long without progress, say what is being waited for (once).
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct AskArgs {
    /// The user asking: their documents are searched and the conversation is theirs.
    #[arg(long)]
    pub user: UserId,
    /// Continue this conversation (default: start a new one).
    #[arg(long)]
    pub conversation: Option<ConversationId>,
    /// The question.
    #[arg(value_name = "QUESTION")]
    pub question: String,
    /// Retrieval mode: hybrid (default), vector or text.
    #[arg(long)]
    pub mode: Option<SearchMode>,
    /// Passages to retrieve (1..=100; default 8).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub k: Option<u32>,
    /// Only ask; let separate `ragpipe worker` processes answer.
    #[arg(long)]
    pub no_local_workers: bool,
    /// Print the finished answer as JSON instead of streaming it.
    #[arg(long)]
    pub json: bool,
}

/// A finished answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    /// The conversation (new unless one was given).
    pub conversation_id: Uuid,
    /// The answer's message.
    pub message_id: Uuid,
    /// `complete`, `failed` or `cancelled`.
    pub status: MessageStatus,
    /// Why the model stopped (`stop`, `length`, `cancelled`).
    pub finish_reason: Option<String>,
    /// The answer.
    pub text: String,
    /// The sources it cited.
    pub citations: Vec<Citation>,
    /// Passages retrieved for it.
    pub sources_retrieved: usize,
    /// Model.
    pub model: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    pub completion_tokens: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

pub async fn run(config: Config, args: AskArgs) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = (!args.no_local_workers).then(|| spawn_agent_worker(&store, &config, shutdown.clone()));
    let question = Question {
        conversation: args.conversation,
        mode: args.mode,
        k: args.k,
        ..Question::new(args.user, &args.question)
    };
    let result = if args.json {
        ask_and_stream(&store, &config, &question, &mut std::io::sink()).await
    } else {
        let mut stdout = std::io::stdout();
        ask_and_stream(&store, &config, &question, &mut stdout).await
    };
    shutdown.cancel();
    if let Some(w) = worker {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let answered = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answered)?);
    }
    match answered.status {
        MessageStatus::Complete => Ok(()),
        MessageStatus::Failed => bail!(
            "the answer failed: {}",
            answered.error.as_deref().unwrap_or("no reason recorded")
        ),
        MessageStatus::Cancelled => bail!("the answer was cancelled"),
        MessageStatus::Streaming => bail!("the answer did not finish"),
    }
}

/// Starts an agent worker in this process; it stops when `shutdown` is cancelled and finishes
/// the answers it holds.
pub fn spawn_agent_worker(
    store: &Store,
    config: &Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), ragpipe_agent_worker::WorkerError>> {
    ragpipe_agent_worker::spawn(store.clone(), Arc::clone(config), shutdown)
}

/// What to ask.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    /// Who asks.
    pub user: UserId,
    /// In which conversation (none: a new one).
    pub conversation: Option<ConversationId>,
    /// The question.
    pub text: &'a str,
    /// Retrieval mode (none: the conversation's).
    pub mode: Option<SearchMode>,
    /// Passages to retrieve (none: the conversation's).
    pub k: Option<u32>,
}

impl<'a> Question<'a> {
    /// `text` from `user`, in a new conversation, with the default retrieval.
    pub fn new(user: UserId, text: &'a str) -> Question<'a> {
        Question {
            user,
            conversation: None,
            text,
            mode: None,
            k: None,
        }
    }
}

/// Asks `question` and writes the answer to `out` as it arrives, then the sources it cited.
/// An agent worker must be running (in this process or another); this only asks and follows.
/// Returns the finished answer (check its status: a failed answer is not an `Err`).
pub async fn ask_and_stream<W: Write>(
    store: &Store,
    config: &Config,
    question: &Question<'_>,
    out: &mut W,
) -> anyhow::Result<Answered> {
    let text = question.text.trim();
    if text.is_empty() {
        bail!("the question is empty");
    }
    let user = question.user;
    let feed = retry("listening for the answer", RetryPolicy::POLLING, || {
        MessageFeed::shared(store)
    })
    .await
    .context("listening for the answer")?;
    let mut tx = store.user_tx(user).await?;
    let conversation = match question.conversation {
        Some(c) => c,
        None => ConversationId(conversations::create(&mut tx, None).await?.id),
    };
    let settings = AskSettings {
        model: &config.chat.model,
        retrieval_mode: question.mode.map(SearchMode::as_str),
        k: question.k,
        max_attempts: config.worker.max_attempts,
    };
    let asked = conversations::ask(&mut tx, conversation, text, &settings)
        .await
        .with_context(|| format!("asking in conversation {conversation}"))?;
    tx.commit().await?;
    let message = MessageId(asked.assistant_message.id);

    // From here the question is committed: a dropped connection costs a pause while following.
    let mut follower = retry_when(
        "following the answer",
        RetryPolicy::POLLING,
        follow_error_is_transient,
        || Follower::open(store, &feed, user, message, Cursor::Start),
    )
    .await
    .context("following the answer")?;
    let mut answered = Answered {
        conversation_id: conversation.0,
        message_id: message.0,
        status: MessageStatus::Streaming,
        finish_reason: None,
        text: String::new(),
        citations: Vec::new(),
        sources_retrieved: 0,
        model: None,
        prompt_tokens: None,
        completion_tokens: None,
        error: None,
    };
    let mut warned = false;
    let mut backoff = RetryPolicy::POLLING.backoff();
    let mut failing_since: Option<Instant> = None;
    loop {
        // A failed read leaves the follower where it was: it resumes from the same byte offset,
        // so no text is lost or repeated.
        let next = match follower.next(PATIENCE).await {
            Ok(next) => {
                backoff.reset();
                failing_since = None;
                next
            }
            Err(e)
                if follow_error_is_transient(&e)
                    && failing_since.get_or_insert_with(Instant::now).elapsed()
                        < RetryPolicy::POLLING.give_up_after =>
            {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "following the answer: retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(e).context("following the answer"),
        };
        match next {
            Next::Idle if !warned && answered.text.is_empty() => {
                eprintln!("(waiting for an agent worker to answer; is `ragpipe worker` or `ragpipe serve` running?)");
                warned = true;
            }
            Next::Idle => {}
            Next::End => break,
            Next::Event(event) => match event {
                AnswerEvent::Message { .. } => {}
                AnswerEvent::Context { sources } => answered.sources_retrieved = sources.len(),
                AnswerEvent::Delta { text, .. } => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                    answered.text.push_str(&text);
                }
                AnswerEvent::Usage {
                    model,
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    answered.model = model;
                    answered.prompt_tokens = prompt_tokens;
                    answered.completion_tokens = completion_tokens;
                }
                AnswerEvent::Done {
                    finish_reason,
                    status,
                    citations,
                } => {
                    answered.status = status;
                    answered.finish_reason = Some(finish_reason);
                    answered.citations = serde_json::from_value(citations).unwrap_or_default();
                }
                AnswerEvent::Error { message, .. } => {
                    answered.status = MessageStatus::Failed;
                    answered.error = Some(message);
                }
            },
        }
    }
    if !answered.text.ends_with('\n') {
        writeln!(out)?;
    }
    write_sources(out, &answered)?;
    out.flush()?;
    Ok(answered)
}

/// Whether a follower's failure is a transient database error (worth another read).
fn follow_error_is_transient(error: &FollowError) -> bool {
    matches!(error, FollowError::Store(e) if worth_retrying(e))
}

/// The sources block printed after an answer.
fn write_sources<W: Write>(out: &mut W, answered: &Answered) -> std::io::Result<()> {
    if answered.citations.is_empty() {
        return writeln!(
            out,
            "\nSources: none cited ({} passage(s) retrieved)",
            answered.sources_retrieved
        );
    }
    writeln!(out, "\nSources:")?;
    for c in &answered.citations {
        let pages = match c.pages {
            Some(p) if p.first != p.last => format!(", pages {}–{}", p.first, p.last),
            Some(p) => format!(", page {}", p.first),
            None => String::new(),
        };
        writeln!(out, "  [{}] {}{pages}", c.n, c.filename)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_agent::sources::Pages;

    #[test]
    fn sources_are_listed_with_pages() {
        let mut answered = Answered {
            conversation_id: Uuid::nil(),
            message_id: Uuid::nil(),
            status: MessageStatus::Complete,
            finish_reason: Some("stop".into()),
            text: "x [1][2]".into(),
            citations: vec![
                Citation {
                    n: 1,
                    chunk_id: 1,
                    document_id: Uuid::nil(),
                    filename: "report.pdf".into(),
                    pages: Some(Pages { first: 3, last: 4 }),
                },
                Citation {
                    n: 2,
                    chunk_id: 2,
                    document_id: Uuid::nil(),
                    filename: "notes.md".into(),
                    pages: None,
                },
            ],
            sources_retrieved: 5,
            model: None,
            prompt_tokens: None,
            completion_tokens: None,
            error: None,
        };
        let mut out = Vec::new();
        write_sources(&mut out, &answered).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "\nSources:\n  [1] report.pdf, pages 3–4\n  [2] notes.md\n"
        );
        answered.citations.clear();
        let mut out = Vec::new();
        write_sources(&mut out, &answered).expect("write");
        assert!(String::from_utf8_lossy(&out).contains("none cited (5 passage(s) retrieved)"));
    }
}
