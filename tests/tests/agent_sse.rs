//! Asking over HTTP and reading the answer as server-sent events, through the real API, queue,
//! agent worker and chat client, with the OpenAI-compatible test server as the model.

mod agent_support;

use agent_support::{QUESTION, delta_text, shape, start};
use ragpipe_llm::TokenCounter;
use ragpipe_tests::openai_server::{Route, ScriptedReply, is_condense_request};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::HashSet;

#[sqlx::test(migrations = false)]
async fn a_scripted_answer_streams_in_order_is_saved_cited_and_accounted_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    system.model().push_reply(reply.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;

    let mut sse = system.ask_stream(alice, &conversation, QUESTION).await;
    let events = sse.rest().await;
    assert_eq!(
        shape(&events),
        ["message", "context", "delta*", "usage", "done"],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.id.is_some()), "every event has an id");
    // Delta ids are the byte offsets where each ends: strictly increasing, the last one the
    // answer's length.
    let offsets: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.id.as_deref().and_then(|i| i.parse().ok()).expect("numeric delta id"))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    let ids = events[0].json();
    let message_id = ids["message_id"].as_str().expect("message id").to_owned();
    assert_eq!(ids["conversation_id"], conversation.as_str());
    assert!(
        ids["user_message_id"].is_string() && ids["request_id"].is_string(),
        "{ids}"
    );

    let context = events[1].json();
    let sources = context["sources"].as_array().expect("sources");
    assert!(sources.len() >= 2, "{context}");
    for s in sources {
        for field in ["n", "chunk_id", "document_id", "filename", "score"] {
            assert!(!s[field].is_null(), "source has {field}: {s}");
        }
    }

    let text = delta_text(&events);
    assert_eq!(text, reply.full_text(), "the deltas are the model's answer");
    assert_eq!(*offsets.last().expect("deltas"), text.len() as i64);

    let usage = events.iter().find(|e| e.event == "usage").expect("usage").json();
    assert_eq!(usage["prompt_tokens"], 812, "server-reported counts: {usage}");
    assert_eq!(usage["completion_tokens"], 41);
    let done = events.last().expect("done").json();
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["status"], "complete");

    // The saved message is exactly the concatenation of the deltas.
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], text.as_str());
    assert_eq!(message["model"], "test-chat");
    assert_eq!(
        (message["prompt_tokens"].as_i64(), message["completion_tokens"].as_i64()),
        (Some(812), Some(41))
    );

    // Citations: [1] and [2], each a chunk that was in the context.
    let context_chunks: HashSet<i64> = sources.iter().filter_map(|s| s["chunk_id"].as_i64()).collect();
    let citations = message["citations"].as_array().expect("citations");
    assert_eq!(
        citations
            .iter()
            .map(|c| c["n"].as_i64().unwrap_or_default())
            .collect::<Vec<_>>(),
        [1, 2],
        "{message}"
    );
    for c in citations {
        assert!(
            context_chunks.contains(&c["chunk_id"].as_i64().unwrap_or_default()),
            "{c}"
        );
        let source = sources.iter().find(|s| s["n"] == c["n"]).expect("numbered source");
        assert_eq!(source["chunk_id"], c["chunk_id"]);
        assert_eq!(source["filename"], c["filename"]);
    }

    // One usage event with the server's counts, keyed by the request.
    let usage_rows = system.chat_usage().await;
    assert_eq!(usage_rows.len(), 1, "{usage_rows:?}");
    assert_eq!((usage_rows[0].1, usage_rows[0].2), (812, 41));
    assert_eq!(
        usage_rows[0].3,
        format!("agent:{}", ids["request_id"].as_str().unwrap_or_default())
    );

    // The model was sent plain-string messages with the numbered sources and max_tokens.
    let request = &system.model().requests_to(Route::ChatCompletions)[0].body;
    assert!(request["max_tokens"].is_u64(), "{request}");
    assert_eq!(request["stream_options"]["include_usage"], true);
    let last = request["messages"].as_array().and_then(|m| m.last()).expect("messages");
    let prompt = last["content"].as_str().expect("plain string content");
    assert!(
        prompt.contains("[1] ") && prompt.contains("[2] ") && prompt.contains(QUESTION),
        "{prompt}"
    );

    // The conversation lists the question and the answer; the request is completed.
    let (status, page) = system
        .app
        .get_json(&alice.key, &format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let roles: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    let (status,): (String,) = sqlx::query_as("SELECT status FROM agent_requests")
        .fetch_one(system.app.pool())
        .await
        .expect("request");
    assert_eq!(status, "completed");
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn without_server_usage_tokens_are_counted_with_tiktoken(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    system.model().set_llama_cpp_mode(true);
    let reply = ScriptedReply::fixture("sources-do-not-answer").expect("fixture");
    system.model().push_reply(reply.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let mut sse = system
        .ask_stream(alice, &conversation, "What colour is the sky on Mars?")
        .await;
    let events = sse.rest().await;
    assert_eq!(shape(&events), ["message", "context", "delta*", "usage", "done"]);
    let text = delta_text(&events);
    assert_eq!(text, reply.full_text());

    let tokens = TokenCounter::default();
    let usage = events.iter().find(|e| e.event == "usage").expect("usage").json();
    assert_eq!(usage["completion_tokens"], tokens.count(&text) as i64, "{usage}");
    // The prompt count is tiktoken's over the messages actually sent, framing included.
    let sent = &system.model().requests_to(Route::ChatCompletions)[0].body;
    let messages: Vec<ragpipe_llm::ChatMessage> =
        serde_json::from_value(sent["messages"].clone()).expect("messages as sent");
    let expected = ragpipe_llm::count_prompt_tokens(&tokens, &messages) as i64;
    assert_eq!(usage["prompt_tokens"], expected);
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1, rows[0].2), (expected, tokens.count(&text) as i64));
    // No citations: the answer cites nothing.
    let done = events.last().expect("done").json();
    assert_eq!(done["citations"], Value::Array(vec![]));
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn the_offline_responder_answers_end_to_end(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, false).await;
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let mut sse = system
        .ask_stream(alice, &conversation, "How many inputs does a batch hold?")
        .await;
    let events = sse.rest().await;
    assert_eq!(
        shape(&events),
        ["message", "context", "delta*", "usage", "done"],
        "{events:#?}"
    );
    let text = delta_text(&events);
    assert!(text.starts_with(ragpipe_llm::NO_MODEL_NOTICE), "{text}");
    assert!(text.contains("sixty-four inputs"), "{text}");
    let message_id = events[0].json()["message_id"].as_str().expect("id").to_owned();
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["content"], text.as_str());
    assert_eq!(message["model"], "ragpipe-extractive-v1");
    let citations = message["citations"].as_array().expect("citations");
    assert!(!citations.is_empty(), "the quoted passage is cited: {message}");
    assert!(citations.iter().any(|c| c["filename"] == "batching.txt"), "{message}");
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 1, "one usage event offline too: {rows:?}");
    assert_eq!(rows[0].0, "ragpipe-extractive-v1");
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn another_user_gets_404_on_conversations_messages_and_streams(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, false).await;
    let alice = &system.alice;
    let bob = system.app.create_user("bob@example.com").await;
    let conversation = system.conversation(alice).await;
    let asked = system.ask(alice, &conversation, QUESTION).await;
    let message = asked["assistant_message"]["id"].as_str().expect("id").to_owned();
    let question = asked["user_message"]["id"].as_str().expect("id").to_owned();
    assert_eq!(asked["events_url"], format!("/v1/messages/{message}/events"));
    system.wait_finished(alice, &message).await;

    let app = &system.app;
    for path in [
        format!("/v1/conversations/{conversation}/messages"),
        format!("/v1/messages/{message}"),
        format!("/v1/messages/{question}"),
    ] {
        let (status, body) = app.get_json(&bob.key, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let response = system.events(&bob, &message, None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = system.events(&bob, &message, Some("10")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    for (path, body) in [
        (
            format!("/v1/conversations/{conversation}/messages"),
            serde_json::json!({"content": "mine now?"}),
        ),
        (format!("/v1/messages/{message}/cancel"), serde_json::json!({})),
    ] {
        let response = app
            .request(reqwest::Method::POST, &bob.key, &path)
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let (status, list) = app.get_json(&bob.key, "/v1/conversations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["conversations"], Value::Array(vec![]));
    // Alice still sees hers, titled by her question.
    let (_, list) = app.get_json(&alice.key, "/v1/conversations").await;
    assert_eq!(list["conversations"][0]["title"], QUESTION);
    // A question is not an answer: it has no events.
    assert_eq!(
        system.events(alice, &question, None).await.status(),
        StatusCode::NOT_FOUND
    );
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn bad_questions_are_refused(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, false).await;
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    for (body, status) in [
        (serde_json::json!({"content": "  "}), StatusCode::BAD_REQUEST),
        (serde_json::json!({"question": "x"}), StatusCode::BAD_REQUEST),
        (serde_json::json!({"content": "x", "k": 0}), StatusCode::BAD_REQUEST),
        (
            serde_json::json!({"content": "x", "mode": "fuzzy"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"content": "x".repeat(40_000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let response = system
            .app
            .request(
                reqwest::Method::POST,
                &alice.key,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .json(&body)
            .send()
            .await
            .expect("POST");
        let (got, error) = ragpipe_tests::app::json_of(response).await;
        assert_eq!(got, status, "{body}: {error}");
    }
    let missing = uuid::Uuid::now_v7();
    let response = system
        .app
        .request(
            reqwest::Method::POST,
            &alice.key,
            &format!("/v1/conversations/{missing}/messages"),
        )
        .json(&serde_json::json!({"content": "hello"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_follow_up_carries_the_conversation_and_chains_its_request(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let first = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let second = ScriptedReply::fixture("stopped-at-max-tokens").expect("fixture");
    system.model().push_reply(first.clone());
    system.model().push_reply(second.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    system.ask_stream(alice, &conversation, QUESTION).await.rest().await;
    let events = system
        .ask_stream(alice, &conversation, "And what happens at the rate limit?")
        .await
        .rest()
        .await;
    let done = events.last().expect("done").json();
    assert_eq!(done["finish_reason"], "length", "{done}");
    assert_eq!(done["status"], "complete");
    assert_eq!(delta_text(&events), second.full_text());

    // Before retrieving, the second question was condensed with the conversation.
    let (condense, requests): (Vec<_>, Vec<_>) = system
        .model()
        .requests_to(Route::ChatCompletions)
        .into_iter()
        .partition(|r| is_condense_request(&r.body));
    assert_eq!(condense.len(), 1);
    // The second prompt holds the first exchange, its answer without the old [n] markers.
    let messages = requests[1].body["messages"].as_array().expect("messages").clone();
    let roles: Vec<&str> = messages.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[1]["content"], QUESTION);
    let earlier = messages[2]["content"].as_str().expect("text");
    assert!(
        earlier.starts_with("Embedding requests are batched") && !earlier.contains("[1]"),
        "{earlier}"
    );

    // One session for the conversation; the second request points at the first.
    let chain: Vec<(uuid::Uuid, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT id, previous_request_id FROM agent_requests ORDER BY created_at")
            .fetch_all(system.app.pool())
            .await
            .expect("requests");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].1, None);
    assert_eq!(chain[1].1, Some(chain[0].0));
    let (sessions, last): (i64, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT count(*), max(last_request_id::text)::uuid FROM agent_sessions")
            .fetch_one(system.app.pool())
            .await
            .expect("sessions");
    assert_eq!((sessions, last), (1, Some(chain[1].0)));
    system.app.shutdown().await;
}

/// A passage uploaded twice (a second copy of a document under another name) is one source of
/// the answer: the context event lists the copy in that source's `also_in`, and the prompt the
/// model receives names it beside the passage ("also in ..."), once.
#[sqlx::test(migrations = false)]
async fn a_duplicated_passage_is_one_source_that_names_its_copies(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let alice = &system.alice;
    let copy = system
        .app
        .upload_one(
            &alice.key,
            "batching-copy.md",
            // Other bytes (an upload of identical bytes is the same document), same passage.
            format!("{}\n", agent_support::BATCHING_DOC.replace(". ", ".  ")).into_bytes(),
        )
        .await;
    let copy_id = copy["id"].as_str().expect("document id").to_owned();
    let done = system
        .app
        .wait_for_document(&alice.key, &copy_id, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "ready", "{done}");
    system
        .model()
        .push_reply(ScriptedReply::text("Batched by count and tokens [1]."));
    let conversation = system.conversation(alice).await;
    let events = system.ask_answered(alice, &conversation, QUESTION).await;
    let context = events[1].json();
    let sources = context["sources"].as_array().expect("sources");
    let batching: Vec<&Value> = sources
        .iter()
        .filter(|s| matches!(s["filename"].as_str(), Some("batching.txt" | "batching-copy.md")))
        .collect();
    assert_eq!(batching.len(), 1, "the passage is one source: {context}");
    let also = batching[0]["also_in"].as_array().expect("also_in");
    assert_eq!(also.len(), 1, "{context}");
    let names = [batching[0]["filename"].as_str(), also[0]["filename"].as_str()];
    assert!(
        names.contains(&Some("batching.txt")) && names.contains(&Some("batching-copy.md")),
        "{context}"
    );
    for other in sources.iter().filter(|s| s["filename"] == "retries.txt") {
        assert!(other.get("also_in").is_none(), "no copies, no field: {other}");
    }
    let prompt = system
        .model()
        .requests_to(Route::ChatCompletions)
        .into_iter()
        .map(|r| r.body.to_string())
        .find(|b| !is_condense_request(&serde_json::from_str(b).unwrap_or_default()))
        .expect("the answer's chat request");
    let named = format!("(also in {})", also[0]["filename"].as_str().expect("filename"));
    assert_eq!(prompt.matches(&named).count(), 1, "{prompt}");
}

/// The test client's decoder: a character split across network chunks, and a `\r\n` split
/// between its two bytes, come out whole (decoding each chunk on its own would turn the
/// character into two U+FFFD and the line ending into a stray `\r`).
#[test]
fn the_client_decodes_characters_and_line_endings_split_across_chunks() {
    let stream = "data: {\"text\":\"Grüße, 東京 🦀\"}\r\n\r\n".as_bytes();
    for cut in 1..stream.len() {
        let mut text = agent_support::SseText::default();
        let mut out = text.push(&stream[..cut]);
        out.push_str(&text.push(&stream[cut..]));
        assert_eq!(out, "data: {\"text\":\"Grüße, 東京 🦀\"}\n\n", "cut at byte {cut}");
    }
}

/// Many answers stream at once, but only a few are prepared (read, retrieval, prompt) at once:
/// `worker.concurrency` × `PREPARING_PER_WORKER_SLOT`. Seen at the model server: six follow-up
/// questions asked together each condense the conversation while being prepared, and with each
/// condense call held 300 ms, they arrive in pairs.
#[sqlx::test(migrations = false)]
async fn a_burst_of_questions_is_prepared_a_few_at_a_time(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = agent_support::pool(options, connect).await;
    let sys = agent_support::start_with(pool, true, |c| c.worker.concurrency = 1).await;
    let preparing = ragpipe_agent::answer::PREPARING_PER_WORKER_SLOT;
    let mut conversations = Vec::new();
    for _ in 0..6 {
        let c = sys.conversation(&sys.alice).await;
        sys.ask_answered(&sys.alice, &c, QUESTION).await;
        conversations.push(c);
    }
    let model = sys.model();
    let before = model.requests_to(Route::ChatCompletions).len();
    model.inject(
        Route::ChatCompletions,
        ragpipe_tests::openai_server::Fault::Delay(std::time::Duration::from_millis(300)),
        12,
    );
    let asks = conversations
        .iter()
        .map(|c| sys.ask_answered(&sys.alice, c, "And how are they retried?"));
    futures::future::join_all(asks).await;

    let mut condensed: Vec<std::time::Instant> = model.requests_to(Route::ChatCompletions)[before..]
        .iter()
        .filter(|r| is_condense_request(&r.body))
        .map(|r| r.received_at)
        .collect();
    assert_eq!(condensed.len(), 6, "one condense call a follow-up question");
    condensed.sort();
    let most_at_once = condensed
        .iter()
        .map(|t| {
            condensed
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < std::time::Duration::from_millis(250))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(most_at_once, preparing, "{condensed:?}");
}
