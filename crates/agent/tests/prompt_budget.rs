//! Property: whatever the sources, history, question and budget, an assembled prompt never
//! exceeds its budget (counted as the chat API counts messages), keeps the system message and
//! the question, numbers its sources 1..=n in rank order, and keeps whole exchanges, the newest.

use proptest::prelude::*;
use ragpipe_agent::prompt::{PromptError, PromptInput, Prompts, Turn, assemble};
use ragpipe_agent::sources::Source;
use ragpipe_llm::{Role, TokenCounter, count_prompt_tokens};
use uuid::Uuid;

fn text(words: usize, seed: usize) -> String {
    const WORDS: &[&str] = &[
        "embedding",
        "batch",
        "retry",
        "の",
        "token",
        "PDF",
        "über",
        "chunk",
        "x",
        "1234",
        "—",
        "HNSW",
        "\n\n",
    ];
    (0..words)
        .map(|i| WORDS[(i * 7 + seed) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn prompts_fit_their_budget(
        source_words in prop::collection::vec(0usize..1500, 0..30),
        turn_words in prop::collection::vec((0usize..300, 0usize..900), 0..40),
        question_words in 0usize..2000,
        budget in 150usize..12_000,
    ) {
        let prompts = Prompts::embedded();
        let tokens = TokenCounter::default();
        let sources: Vec<Source> = source_words.iter().enumerate().map(|(i, w)| Source {
            chunk_id: i as i64,
            document_id: Uuid::nil(),
            filename: format!("f{i}.pdf"),
            page_first: Some(1),
            page_last: Some(2),
            heading_path: vec!["H".into()],
            score: 1.0,
            text: text(*w, i),
            also_in: Vec::new(),
        }).collect();
        let history: Vec<Turn> = turn_words.iter().enumerate().map(|(i, (q, a))| Turn {
            question: format!("q{i} {}", text(*q, i)),
            answer: format!("a{i} {} [1]", text(*a, i + 3)),
        }).collect();
        let question = format!("Q {}", text(question_words, 5));
        let input = PromptInput { question: &question, sources: &sources, history: &history };
        match assemble(&prompts, &tokens, &input, budget) {
            Ok(p) => {
                let counted = count_prompt_tokens(&tokens, &p.messages) as usize;
                prop_assert_eq!(counted, p.tokens);
                prop_assert!(counted <= budget, "{} > {}", counted, budget);
                prop_assert_eq!(p.messages[0].role, Role::System);
                prop_assert_eq!(p.messages.last().map(|m| m.role), Some(Role::User));
                prop_assert_eq!(p.messages.len(), 2 + 2 * p.history_turns);
                let numbers: Vec<u32> = p.context.iter().map(|c| c.n).collect();
                prop_assert_eq!(numbers, (1..=p.context.len() as u32).collect::<Vec<_>>());
                if p.history_turns > 0 {
                    let newest = &p.messages[p.messages.len() - 2].content;
                    let expected = format!("a{} ", history.len() - 1);
                    prop_assert!(newest.starts_with(&expected), "the newest turn is kept");
                }
            }
            // Only when even the system prompt and the frame do not fit.
            Err(PromptError::BudgetTooSmall { .. }) => prop_assert!(budget < 400),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
