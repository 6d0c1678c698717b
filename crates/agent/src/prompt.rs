//! Prompt templates and prompt assembly within a token budget.
//!
//! The templates are the files of `prompts/` compiled into the binary; a directory given in
//! the configuration (`prompts_dir`) overrides any of them by file name. Assembly is a pure
//! function: system message, then the earlier turns that fit (oldest first in the result,
//! chosen newest first), then one user message with the numbered sources and the question.
//! The prompt's token count, as the chat API counts messages, never exceeds the budget.

use crate::sources::{ContextEntry, Source, strip_citations};
use ragpipe_core::Config;
use ragpipe_core::config::ModelEndpoint;
use ragpipe_llm::{ChatMessage, SourcePassage, TokenCounter, count_prompt_tokens};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tokens of framing the chat API adds per message (see [`count_prompt_tokens`]).
const MESSAGE_OVERHEAD: usize = 4;
/// Tokens that prime the answer, once per prompt.
const PROMPT_OVERHEAD: usize = 3;
/// A source is cut to fit only if at least this many tokens of it would remain; a shorter
/// stub is worth less than the room it takes.
const MIN_TRUNCATED_SOURCE_TOKENS: usize = 48;

/// A template file: its name in `prompts/`, its embedded text, the placeholders it may use
/// and those it must use.
struct TemplateSpec {
    file: &'static str,
    embedded: &'static str,
    allowed: &'static [&'static str],
    required: &'static [&'static str],
}

const SYSTEM: TemplateSpec = TemplateSpec {
    file: "system.md",
    embedded: include_str!("../../../prompts/system.md"),
    allowed: &[],
    required: &[],
};
const SOURCE: TemplateSpec = TemplateSpec {
    file: "source.md",
    embedded: include_str!("../../../prompts/source.md"),
    allowed: &["number", "filename", "pages", "headings", "also_in", "text"],
    required: &["number", "text"],
};
const QUESTION: TemplateSpec = TemplateSpec {
    file: "question.md",
    embedded: include_str!("../../../prompts/question.md"),
    allowed: &["sources", "question"],
    required: &["sources", "question"],
};
const NO_SOURCES: TemplateSpec = TemplateSpec {
    file: "no_sources.md",
    embedded: include_str!("../../../prompts/no_sources.md"),
    allowed: &[],
    required: &[],
};

const CONDENSE: TemplateSpec = TemplateSpec {
    file: "condense.md",
    embedded: include_str!("../../../prompts/condense.md"),
    allowed: &["conversation", "question"],
    required: &["conversation", "question"],
};

/// Why the prompt templates could not be loaded, or a prompt not assembled.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// An override file exists but cannot be read.
    #[error("reading prompt template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A template uses a placeholder it may not, lacks a required one, or is malformed.
    #[error("prompt template {file}: {message}")]
    Template {
        /// The file name (`question.md`, ...).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Even the system message and an empty question do not fit the budget.
    #[error(
        "the prompt budget of {budget} tokens cannot hold the system prompt and the question ({needed} tokens); \
         raise chat.max_input_tokens or lower chat.max_output_tokens"
    )]
    BudgetTooSmall {
        /// Tokens available for the prompt.
        budget: usize,
        /// Tokens the fixed parts need.
        needed: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Text(String),
    Var(String),
}

/// A parsed template: text with `{{name}}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    segments: Vec<Segment>,
}

impl Template {
    fn parse(spec: &TemplateSpec, text: &str) -> Result<Template, PromptError> {
        let bad = |message: String| PromptError::Template {
            file: spec.file.to_owned(),
            message,
        };
        // Files end with a newline; the assembly decides the spacing between parts.
        let text = text.trim_end();
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| bad("a `{{` is never closed with `}}`".into()))?;
            let name = after[..close].trim();
            if !spec.allowed.contains(&name) {
                let allowed = if spec.allowed.is_empty() {
                    "none".to_owned()
                } else {
                    spec.allowed.join(", ")
                };
                return Err(bad(format!("unknown placeholder {{{{{name}}}}} (allowed: {allowed})")));
            }
            segments.push(Segment::Var(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        for required in spec.required {
            if !segments.iter().any(|s| matches!(s, Segment::Var(v) if v == required)) {
                return Err(bad(format!("the placeholder {{{{{required}}}}} is required")));
            }
        }
        Ok(Template { segments })
    }

    fn render(&self, values: &HashMap<&str, &str>) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(v) => out.push_str(values.get(v.as_str()).copied().unwrap_or("")),
            }
        }
        out
    }
}

/// The loaded prompt templates (see `prompts/README.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompts {
    system: String,
    source: Template,
    question: Template,
    no_sources: String,
    condense: Template,
    /// Override files that were used, for logs.
    overridden: Vec<String>,
}

impl Prompts {
    /// The templates compiled into the binary.
    pub fn embedded() -> Prompts {
        // The embedded files are checked by a unit test; parsing them cannot fail at run time.
        Prompts::load(None).unwrap_or_else(|e| unreachable!("embedded prompt templates are valid: {e}"))
    }

    /// The embedded templates, each replaced by the file of the same name in `dir` when that
    /// file exists.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, PromptError> {
        let mut overridden = Vec::new();
        let mut text = |spec: &TemplateSpec| -> Result<String, PromptError> {
            if let Some(dir) = dir {
                let path = dir.join(spec.file);
                match std::fs::read_to_string(&path) {
                    Ok(t) => {
                        overridden.push(spec.file.to_owned());
                        return Ok(t);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(PromptError::Read { path, source }),
                }
            }
            Ok(spec.embedded.to_owned())
        };
        let system = text(&SYSTEM)?;
        let source = text(&SOURCE)?;
        let question = text(&QUESTION)?;
        let no_sources = text(&NO_SOURCES)?;
        let condense = text(&CONDENSE)?;
        let plain = |spec: &TemplateSpec, t: &str| -> Result<String, PromptError> {
            Template::parse(spec, t)?;
            Ok(t.trim_end().to_owned())
        };
        Ok(Prompts {
            system: plain(&SYSTEM, &system)?,
            source: Template::parse(&SOURCE, &source)?,
            question: Template::parse(&QUESTION, &question)?,
            no_sources: plain(&NO_SOURCES, &no_sources)?,
            condense: Template::parse(&CONDENSE, &condense)?,
            overridden,
        })
    }

    /// The templates for `config` (its `prompts_dir`, if set).
    pub fn from_config(config: &Config) -> Result<Prompts, PromptError> {
        Prompts::load(config.prompts_dir.as_deref())
    }

    /// Names of the files that replaced embedded templates.
    pub fn overridden(&self) -> &[String] {
        &self.overridden
    }

    /// The system message.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// One source laid out for the model, numbered `number`.
    pub fn render_source(&self, number: u32, source: &Source, text: &str) -> String {
        let number = number.to_string();
        let pages = match (source.page_first, source.page_last) {
            (Some(a), Some(b)) if a != b => format!(" (pages {a}–{b})"),
            (Some(p), _) | (None, Some(p)) => format!(" (page {p})"),
            (None, None) => String::new(),
        };
        let headings = if source.heading_path.is_empty() {
            String::new()
        } else {
            format!(" — {}", source.heading_path.join(" › "))
        };
        let also_in = if source.also_in.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = source.also_in.iter().map(|a| a.filename.as_str()).collect();
            format!(" (also in {})", names.join(", "))
        };
        let values = HashMap::from([
            ("number", number.as_str()),
            ("filename", source.filename.as_str()),
            ("pages", pages.as_str()),
            ("headings", headings.as_str()),
            ("also_in", also_in.as_str()),
            ("text", text),
        ]);
        self.source.render(&values)
    }

    /// The condense prompt: earlier turns (`User: ...` / `Assistant: ...` lines) and the
    /// question to rewrite as a standalone search query.
    pub fn render_condense(&self, conversation: &str, question: &str) -> String {
        let values = HashMap::from([("conversation", conversation), ("question", question)]);
        self.condense.render(&values)
    }

    /// The last user message: the laid-out sources (or the no-sources note) and the question.
    pub fn render_question(&self, sources: &[String], question: &str) -> String {
        let joined;
        let sources = if sources.is_empty() {
            self.no_sources.as_str()
        } else {
            joined = sources.join("\n\n");
            joined.as_str()
        };
        let values = HashMap::from([("sources", sources), ("question", question)]);
        self.question.render(&values)
    }
}

/// One earlier exchange of the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    /// What the user asked.
    pub question: String,
    /// What the agent answered (complete answers only).
    pub answer: String,
}

/// What a prompt is built from.
#[derive(Clone, Copy, Debug)]
pub struct PromptInput<'a> {
    /// The question.
    pub question: &'a str,
    /// Retrieved passages, best first.
    pub sources: &'a [Source],
    /// Earlier turns of the conversation, oldest first.
    pub history: &'a [Turn],
}

/// The tokens a prompt may use: the model's context minus the room kept for the answer.
pub fn prompt_budget(chat: &ModelEndpoint) -> usize {
    chat.max_input_tokens.saturating_sub(chat.max_output_tokens) as usize
}

/// An assembled prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// The messages to send, oldest first: system, earlier turns, the question.
    pub messages: Vec<ChatMessage>,
    /// The sources laid out, numbered from 1 in rank order.
    pub context: Vec<ContextEntry>,
    /// Their texts as laid out (possibly cut to fit), for the offline responder.
    pub passages: Vec<SourcePassage>,
    /// Earlier turns included (the newest ones).
    pub history_turns: usize,
    /// Retrieved sources left out for lack of room.
    pub sources_dropped: usize,
    /// The prompt's tokens as the chat API counts them (never above the budget).
    pub tokens: usize,
    /// Whether the question itself had to be cut to fit.
    pub question_truncated: bool,
}

/// Builds the prompt for `input` within `budget` tokens (see [`prompt_budget`]): the system
/// message and the question always; then sources in rank order while they fit (one that does
/// not is skipped, and a first source too long for the room left is cut); then earlier turns,
/// newest first, until one does not fit. Counts are exact: the finished prompt is counted with
/// `tokens` and trimmed further in the rare case that joining the parts cost more than the
/// parts did apart.
pub fn assemble(
    prompts: &Prompts,
    tokens: &TokenCounter,
    input: &PromptInput<'_>,
    budget: usize,
) -> Result<Prompt, PromptError> {
    let count = |text: &str| tokens.count(text);
    let system_tokens = count(prompts.system()) + MESSAGE_OVERHEAD;
    // The question message without sources: its template, the question, and the no-sources
    // note (which an empty source list leaves in; with sources it is replaced, and sources
    // are counted on their own below).
    let empty_frame = prompts.render_question(&[], "");
    let frame_tokens = count(&empty_frame) + MESSAGE_OVERHEAD;
    let fixed = PROMPT_OVERHEAD + system_tokens + frame_tokens;
    if fixed > budget {
        return Err(PromptError::BudgetTooSmall { budget, needed: fixed });
    }
    let (question, question_tokens) = tokens.truncate_counted(input.question, budget - fixed);
    let question_truncated = question.len() < input.question.len();
    let mut remaining = budget - fixed - question_tokens;

    // Sources, best first. Each costs its block plus the blank line joining it to the next.
    let separator = count("\n\n");
    let mut blocks: Vec<String> = Vec::new();
    let mut chosen: Vec<(u32, &Source, String)> = Vec::new();
    for source in input.sources {
        let number = chosen.len() as u32 + 1;
        let block = prompts.render_source(number, source, &source.text);
        let cost = count(&block) + separator;
        if cost <= remaining {
            remaining -= cost;
            blocks.push(block);
            chosen.push((number, source, source.text.clone()));
        } else if chosen.is_empty() {
            // The best source alone is too long: keep as much of it as fits.
            let header = count(&prompts.render_source(number, source, "")) + separator;
            let room = remaining.saturating_sub(header + 2);
            if room >= MIN_TRUNCATED_SOURCE_TOKENS {
                let cut = tokens.truncate(&source.text, room).to_owned();
                let block = prompts.render_source(number, source, &cut);
                let cost = count(&block) + separator;
                if cost <= remaining {
                    remaining -= cost;
                    blocks.push(block);
                    chosen.push((number, source, cut));
                }
            }
        }
    }

    // Earlier turns, newest first, in whole exchanges (chat templates of some servers insist
    // that user and assistant alternate).
    let mut turns: Vec<(String, String)> = Vec::new();
    for turn in input.history.iter().rev() {
        let answer = strip_citations(&turn.answer);
        let cost = count(&turn.question) + count(&answer) + 2 * MESSAGE_OVERHEAD;
        if cost > remaining {
            break;
        }
        remaining -= cost;
        turns.push((turn.question.clone(), answer));
    }
    turns.reverse();

    // Exact count of the finished prompt; trim oldest turns, then lowest-ranked sources, in
    // the rare case the joined text tokenises longer than its parts.
    loop {
        let messages = build_messages(prompts, &turns, &blocks, question);
        let total = count_prompt_tokens(tokens, &messages) as usize;
        if total <= budget {
            let context: Vec<ContextEntry> = chosen.iter().map(|(n, s, _)| ContextEntry::new(*n, s)).collect();
            let passages = chosen
                .iter()
                .map(|(n, _, text)| SourcePassage {
                    number: *n,
                    text: text.clone(),
                })
                .collect();
            return Ok(Prompt {
                messages,
                history_turns: turns.len(),
                sources_dropped: input.sources.len() - chosen.len(),
                context,
                passages,
                tokens: total,
                question_truncated,
            });
        }
        if !turns.is_empty() {
            turns.remove(0);
        } else if !blocks.is_empty() {
            blocks.pop();
            chosen.pop();
        } else {
            return Err(PromptError::BudgetTooSmall { budget, needed: total });
        }
    }
}

fn build_messages(
    prompts: &Prompts,
    turns: &[(String, String)],
    blocks: &[String],
    question: &str,
) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(2 + 2 * turns.len());
    messages.push(ChatMessage::system(prompts.system()));
    for (q, a) in turns {
        messages.push(ChatMessage::user(q.clone()));
        messages.push(ChatMessage::assistant(a.clone()));
    }
    messages.push(ChatMessage::user(prompts.render_question(blocks, question)));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_llm::Role;
    use uuid::Uuid;

    fn source(i: usize, words: usize) -> Source {
        Source {
            chunk_id: i as i64,
            document_id: Uuid::from_u128(i as u128),
            filename: format!("manual-{i}.pdf"),
            page_first: Some(i as i32),
            page_last: Some(i as i32 + 1),
            heading_path: vec!["Setup".into(), format!("Step {i}")],
            score: 1.0 / (i as f64 + 1.0),
            text: format!("Passage {i} says: ")
                + &"embedding batches retry with backoff and jitter ".repeat(words / 7 + 1),
            also_in: Vec::new(),
        }
    }

    fn turn(i: usize, words: usize) -> Turn {
        Turn {
            question: format!("Question {i}: how does the worker handle failures?"),
            answer: format!("Answer {i} [1]: ") + &"the worker retries transient failures ".repeat(words / 5 + 1),
        }
    }

    #[test]
    fn embedded_templates_parse_and_have_their_placeholders() {
        let p = Prompts::embedded();
        assert!(p.system().contains("[1]"), "the system prompt shows how to cite");
        assert!(p.overridden().is_empty());
        let s = source(1, 10);
        let block = p.render_source(3, &s, "TEXT");
        assert_eq!(block, "[3] manual-1.pdf (pages 1–2) — Setup › Step 1\nTEXT");
        let copies = Source {
            also_in: vec![crate::sources::AlsoIn {
                document_id: Uuid::nil(),
                filename: "manual-1.docx".into(),
            }],
            ..s
        };
        assert_eq!(
            p.render_source(3, &copies, "TEXT"),
            "[3] manual-1.pdf (pages 1–2) — Setup › Step 1 (also in manual-1.docx)\nTEXT"
        );
    }

    /// Snapshot of a whole assembled prompt (`tests/snapshots/prompt.snap`). After an intended
    /// change, review the new text with `cargo insta review` (or accept it with
    /// `INSTA_UPDATE=always cargo test -p ragpipe-agent`) and review the diff like code.
    #[test]
    fn prompt_snapshot() {
        let p = Prompts::embedded();
        let sources = vec![
            Source {
                chunk_id: 11,
                document_id: Uuid::nil(),
                filename: "guide.md".into(),
                page_first: None,
                page_last: None,
                heading_path: vec!["Ingestion".into(), "Batching".into()],
                score: 0.9,
                text: "Embedding requests are batched by input count and by total tokens.".into(),
                also_in: Vec::new(),
            },
            Source {
                chunk_id: 42,
                document_id: Uuid::nil(),
                filename: "report.pdf".into(),
                page_first: Some(3),
                page_last: Some(3),
                heading_path: vec![],
                score: 0.5,
                text: "Failed requests are retried with exponential backoff.".into(),
                also_in: vec![
                    crate::sources::AlsoIn {
                        document_id: Uuid::from_u128(7),
                        filename: "report.docx".into(),
                    },
                    crate::sources::AlsoIn {
                        document_id: Uuid::from_u128(8),
                        filename: "report-v2.pdf".into(),
                    },
                ],
            },
        ];
        let history = vec![Turn {
            question: "What formats are supported?".into(),
            answer: "PDF, text, Markdown, HTML and DOCX [1].".into(),
        }];
        let prompt = assemble(
            &p,
            &TokenCounter::default(),
            &PromptInput {
                question: "How are embedding requests batched?",
                sources: &sources,
                history: &history,
            },
            4000,
        )
        .expect("fits");
        let mut rendered = String::new();
        for m in &prompt.messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            rendered.push_str(&format!("=== {role} ===\n{}\n", m.content));
        }
        rendered.push_str(&format!("=== {} tokens ===\n", prompt.tokens));
        insta::with_settings!({
            snapshot_path => "../tests/snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!("prompt", rendered);
        });
    }

    #[test]
    fn never_exceeds_the_budget_with_long_history_and_many_sources() {
        let p = Prompts::embedded();
        let tokens = TokenCounter::default();
        let sources: Vec<Source> = (0..40).map(|i| source(i, 150 + (i * 37) % 300)).collect();
        let history: Vec<Turn> = (0..60).map(|i| turn(i, 80 + (i * 53) % 400)).collect();
        for budget in [180, 300, 512, 1000, 2048, 4096, 7168, 16_000] {
            let prompt = assemble(
                &p,
                &tokens,
                &PromptInput {
                    question: "How do retries work?",
                    sources: &sources,
                    history: &history,
                },
                budget,
            )
            .unwrap_or_else(|e| panic!("budget {budget}: {e}"));
            let counted = count_prompt_tokens(&tokens, &prompt.messages) as usize;
            assert_eq!(prompt.tokens, counted);
            assert!(counted <= budget, "budget {budget}: {counted} tokens");
            // What is left over could not have held the next source or turn.
            assert!(
                !prompt.context.is_empty() || budget < 300,
                "budget {budget} holds a source"
            );
            // Numbers are 1..=n in rank order.
            let numbers: Vec<u32> = prompt.context.iter().map(|c| c.n).collect();
            assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
            // Messages: system, then user/assistant pairs, then the question.
            assert_eq!(prompt.messages.len(), 2 + 2 * prompt.history_turns);
            assert_eq!(prompt.messages[0].role, Role::System);
            assert_eq!(prompt.messages.last().map(|m| m.role), Some(Role::User));
            if prompt.history_turns > 0 {
                // The newest turns are the ones kept.
                let last_answer = &prompt.messages[prompt.messages.len() - 2].content;
                assert!(last_answer.starts_with("Answer 59"), "{last_answer}");
                assert!(!last_answer.contains("[1]"), "history answers lose their markers");
            }
        }
        // A big budget holds everything.
        let prompt = assemble(
            &p,
            &tokens,
            &PromptInput {
                question: "q",
                sources: &sources[..3],
                history: &history[..2],
            },
            100_000,
        )
        .expect("fits");
        assert_eq!(
            (prompt.context.len(), prompt.history_turns, prompt.sources_dropped),
            (3, 2, 0)
        );
    }

    #[test]
    fn a_long_first_source_is_cut_and_a_long_question_too() {
        let p = Prompts::embedded();
        let tokens = TokenCounter::default();
        let huge = source(0, 5000);
        let prompt = assemble(
            &p,
            &tokens,
            &PromptInput {
                question: "q?",
                sources: std::slice::from_ref(&huge),
                history: &[],
            },
            600,
        )
        .expect("fits");
        assert_eq!(prompt.context.len(), 1);
        assert!(prompt.passages[0].text.len() < huge.text.len());
        assert!(prompt.tokens <= 600);

        let question = "why ".repeat(2000);
        let prompt = assemble(
            &p,
            &tokens,
            &PromptInput {
                question: &question,
                sources: &[],
                history: &[],
            },
            400,
        )
        .expect("fits");
        assert!(prompt.question_truncated);
        assert!(prompt.tokens <= 400, "{}", prompt.tokens);
    }

    #[test]
    fn no_sources_says_so_and_tiny_budgets_fail_clearly() {
        let p = Prompts::embedded();
        let tokens = TokenCounter::default();
        let input = PromptInput {
            question: "Anything?",
            sources: &[],
            history: &[],
        };
        let prompt = assemble(&p, &tokens, &input, 2000).expect("fits");
        let last = &prompt.messages.last().expect("a question").content;
        assert!(last.contains("No passages"), "{last}");
        assert!(matches!(
            assemble(&p, &tokens, &input, 20),
            Err(PromptError::BudgetTooSmall { budget: 20, .. })
        ));
    }

    #[test]
    fn overrides_replace_files_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("ragpipe-prompts-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("system.md"), "Be brief.\n").expect("write");
        let p = Prompts::load(Some(&dir)).expect("loads");
        assert_eq!(p.system(), "Be brief.");
        assert_eq!(p.overridden(), ["system.md"]);

        std::fs::write(dir.join("question.md"), "{{question}} only").expect("write");
        let e = Prompts::load(Some(&dir)).expect_err("sources missing");
        assert!(e.to_string().contains("{{sources}} is required"), "{e}");
        std::fs::write(dir.join("question.md"), "{{sources}} {{question}} {{weather}}").expect("write");
        let e = Prompts::load(Some(&dir)).expect_err("unknown placeholder");
        assert!(e.to_string().contains("unknown placeholder {{weather}}"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
