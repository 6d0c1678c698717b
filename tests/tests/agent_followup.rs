//! Follow-up questions through the API: the second turn of a conversation retrieves with the
//! first. Offline, the first question's salient terms are carried over; with a chat model, the
//! question is condensed into a standalone query first (its call recorded as usage), and a
//! failed condense call falls back to the carry-over.

mod agent_support;

use agent_support::{System, start};
use ragpipe_tests::app::TestUser;
use ragpipe_tests::openai_server::{Fault, Route, ScriptedReply, is_condense_request};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

/// Two settings documented alike, and a page about defaults in general that a question
/// naming no setting ("and what is its default?") finds first.
const DOCUMENTS: [(&str, &str); 3] = [
    (
        "keepalive.txt",
        "KeepAliveTimeout controls how long the server waits for a further request on a persistent \
         connection before it closes the connection. The default is 5 seconds.",
    ),
    (
        "userdir.txt",
        "UserDir controls which directory in a user's home is published on the web. The default is public_html.",
    ),
    (
        "defaults.txt",
        "Default values. Every default can be changed. A default applies when a setting is not given, \
         and the defaults are listed per module.",
    ),
];
const FIRST: &str = "What does KeepAliveTimeout control?";
const FOLLOW_UP: &str = "And what is its default?";

async fn upload_documents(system: &System) {
    let alice = &system.alice;
    for (name, text) in DOCUMENTS {
        let doc = system.app.upload_one(&alice.key, name, text.as_bytes().to_vec()).await;
        let id = doc["id"].as_str().expect("document id").to_owned();
        let done = system
            .app
            .wait_for_document(&alice.key, &id, Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "ready", "{done}");
    }
}

/// Asks `question` in `conversation` with one passage retrieved (`k` 1), waits for the answer
/// and returns its request's results (what was searched, the passage in the prompt).
async fn ask(system: &System, user: &TestUser, conversation: &str, question: &str) -> Value {
    let response = system
        .app
        .request(
            reqwest::Method::POST,
            &user.key,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .json(&serde_json::json!({ "content": question, "k": 1 }))
        .send()
        .await
        .expect("POST messages");
    let (status, body) = ragpipe_tests::app::json_of(response).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let message = body["assistant_message"]["id"].as_str().expect("id").to_owned();
    let done = system.wait_finished(user, &message).await;
    assert_eq!(done["status"], "complete", "{done}");
    let (results,): (Value,) =
        sqlx::query_as("SELECT results FROM agent_requests WHERE assistant_message_id = $1::uuid")
            .bind(&message)
            .fetch_one(system.app.pool())
            .await
            .expect("request");
    results
}

fn retrieved(results: &Value) -> Vec<&str> {
    results["context"]
        .as_array()
        .map(|c| c.iter().filter_map(|e| e["filename"].as_str()).collect())
        .unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn offline_a_follow_up_retrieves_with_the_previous_question(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, false).await;
    upload_documents(&system).await;
    let alice = &system.alice;

    // Asked alone, the follow-up finds the page about defaults in general.
    let alone = system.conversation(alice).await;
    let results = ask(&system, alice, &alone, FOLLOW_UP).await;
    assert_eq!(results["search_query_from"], "question", "{results}");
    assert_ne!(retrieved(&results), ["keepalive.txt"], "{results}");

    // After the first turn, the same words find KeepAliveTimeout's default.
    let conversation = system.conversation(alice).await;
    let first = ask(&system, alice, &conversation, FIRST).await;
    assert_eq!(retrieved(&first), ["keepalive.txt"], "{first}");
    let results = ask(&system, alice, &conversation, FOLLOW_UP).await;
    assert_eq!(results["search_query_from"], "carried", "{results}");
    assert_eq!(
        results["search_query"], "And what is its default? KeepAliveTimeout control",
        "{results}"
    );
    assert_eq!(retrieved(&results), ["keepalive.txt"], "{results}");
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn with_a_chat_model_a_follow_up_is_condensed_and_its_call_billed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    upload_documents(&system).await;
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    ask(&system, alice, &conversation, "What does UserDir control?").await;
    system
        .model()
        .push_condense_reply(ScriptedReply::text("What is the default directory UserDir publishes?"));
    let results = ask(&system, alice, &conversation, FOLLOW_UP).await;
    assert_eq!(results["search_query_from"], "condensed", "{results}");
    assert_eq!(
        results["search_query"],
        "What is the default directory UserDir publishes?"
    );
    assert_eq!(retrieved(&results), ["userdir.txt"], "{results}");

    // The condense request held the conversation, within its budget, and was billed once.
    let condense: Vec<_> = system
        .model()
        .requests_to(Route::ChatCompletions)
        .into_iter()
        .filter(|r| is_condense_request(&r.body))
        .collect();
    assert_eq!(condense.len(), 1);
    let prompt = condense[0].body["messages"][0]["content"].as_str().expect("prompt");
    assert!(prompt.contains("User: What does UserDir control?"), "{prompt}");
    assert!(prompt.contains("Last question: And what is its default?"), "{prompt}");
    let usage = system.chat_usage().await;
    let keys: Vec<&str> = usage.iter().map(|u| u.3.as_str()).collect();
    assert_eq!(usage.len(), 3, "two answers and one condense call: {keys:?}");
    let condensed = usage
        .iter()
        .find(|u| u.3.ends_with(":condense"))
        .expect("a condense event");
    assert_eq!(
        condensed.2 as u64,
        condense[0].usage.expect("counted").completion_tokens
    );
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_failed_condense_call_falls_back_to_the_carry_over(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    upload_documents(&system).await;
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    ask(&system, alice, &conversation, FIRST).await;
    // The next chat request is the condense call: refused for good (a 400 is not retried).
    system.model().inject(
        Route::ChatCompletions,
        Fault::Status {
            status: 400,
            body: r#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#.into(),
        },
        1,
    );
    let results = ask(&system, alice, &conversation, FOLLOW_UP).await;
    assert_eq!(results["search_query_from"], "carried", "{results}");
    assert_eq!(retrieved(&results), ["keepalive.txt"], "{results}");
    // Nothing answered the condense call, so nothing is billed for it.
    let usage = system.chat_usage().await;
    assert!(usage.iter().all(|u| !u.3.ends_with(":condense")), "{usage:?}");
    system.app.shutdown().await;
}
