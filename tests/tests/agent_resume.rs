//! Leaving an answer's event stream and coming back with `Last-Event-ID`: the client ends with
//! exactly the whole answer, no gap and no duplicate, during the answer and after it; leaving
//! does not stop the answer; keep-alive comments flow while the model is silent.

mod agent_support;

use agent_support::{QUESTION, SseClient, delta_text, shape, start, start_with};
use ragpipe_tests::openai_server::{Fault, Route, ScriptedReply};
use reqwest::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

#[sqlx::test(migrations = false)]
async fn reconnecting_with_last_event_id_mid_answer_and_after_gives_exactly_the_whole_text(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("slow-long-answer").expect("fixture");
    let full = reply.full_text();
    system.model().push_reply(reply);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;

    // Read the opening and a few deltas, then go away mid-answer.
    let mut first = system.ask_stream(alice, &conversation, QUESTION).await;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&agent_support::SseEvent| e.event == "delta")
        .count()
        < 3
    {
        seen.push(first.next().await.expect("the stream goes on"));
    }
    let message_id = seen[0].json()["message_id"].as_str().expect("id").to_owned();
    let last_id = first.last_event_id.clone().expect("an id");
    drop(first);
    let before = delta_text(&seen);
    assert!(before.len() < full.len(), "left before the end");

    // Come back: only what was missed, then the end.
    let response = system.events(alice, &message_id, Some(&last_id)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let rest = SseClient::new(response).rest().await;
    assert_eq!(shape(&rest), ["delta*", "usage", "done"], "{rest:#?}");
    let after = delta_text(&rest);
    assert_eq!(format!("{before}{after}"), full, "no gap, no duplicate");

    // Leaving did not stop the answer: the model was read to the end and the row is whole.
    let message = system.wait_finished(alice, &message_id).await;
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], full.as_str());
    assert!(!system.model().requests_to(Route::ChatCompletions)[0].disconnected);

    // After the answer: resuming from any delta id gives the rest, from `message` everything
    // but the opening, from `done` nothing.
    let all = SseClient::new(system.events(alice, &message_id, None).await)
        .rest()
        .await;
    assert_eq!(shape(&all), ["message", "context", "delta*", "usage", "done"]);
    assert_eq!(delta_text(&all), full);
    let middle = all
        .iter()
        .filter(|e| e.event == "delta")
        .find(|e| {
            e.id.as_deref()
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|n| n >= full.len() / 2)
        })
        .and_then(|e| e.id.clone())
        .unwrap_or_else(|| before.len().to_string());
    let offset: usize = middle.parse().expect("numeric");
    let tail = SseClient::new(system.events(alice, &message_id, Some(&middle)).await)
        .rest()
        .await;
    assert_eq!(delta_text(&tail), full[offset..]);
    assert_eq!(shape(&tail).last().map(String::as_str), Some("done"));
    let from_message = SseClient::new(system.events(alice, &message_id, Some("message")).await)
        .rest()
        .await;
    assert_eq!(shape(&from_message), ["context", "delta*", "usage", "done"]);
    assert_eq!(delta_text(&from_message), full);
    let from_usage = SseClient::new(system.events(alice, &message_id, Some("usage")).await)
        .rest()
        .await;
    assert_eq!(shape(&from_usage), ["done"]);
    let from_done = SseClient::new(system.events(alice, &message_id, Some("done")).await)
        .rest()
        .await;
    assert!(from_done.is_empty(), "{from_done:?}");

    // Ids that are not in this answer are refused.
    for bad in ["banana", "-1", &(full.len() + 10).to_string()] {
        let response = system.events(alice, &message_id, Some(bad)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn several_readers_of_one_answer_each_get_all_of_it(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("slow-long-answer").expect("fixture");
    let full = reply.full_text();
    system.model().push_reply(reply);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let asked = system.ask(alice, &conversation, QUESTION).await;
    let message = asked["assistant_message"]["id"].as_str().expect("id").to_owned();
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(SseClient::new(system.events(alice, &message, None).await));
    }
    for mut r in readers {
        let events = r.rest().await;
        assert_eq!(delta_text(&events), full);
        assert_eq!(shape(&events), ["message", "context", "delta*", "usage", "done"]);
    }
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn keep_alive_comments_flow_while_the_model_is_silent(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start_with(agent_support::pool(options, connect).await, true, |c| {
        c.chat.timeout_secs = 30;
    })
    .await;
    let silence = ragpipe_api::sse::KEEP_ALIVE + Duration::from_millis(1500);
    system.model().inject(
        Route::ChatCompletions,
        Fault::StallAfter {
            deltas: 2,
            pause: silence,
        },
        1,
    );
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    system.model().push_reply(reply.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let mut sse = system.ask_stream(alice, &conversation, QUESTION).await;
    let events = sse.rest().await;
    assert!(sse.comments >= 1, "a keep-alive during {silence:?} of silence");
    assert_eq!(delta_text(&events), reply.full_text());
    assert_eq!(shape(&events), ["message", "context", "delta*", "usage", "done"]);
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn shutting_the_api_down_ends_open_streams_for_a_reconnect_elsewhere(pool: sqlx::PgPool) {
    // No agent worker: the answer stays `streaming`, and its stream would never end by itself.
    let app = ragpipe_tests::app::TestApp::builder(pool).start().await;
    let alice = app.create_user("alice@example.com").await;
    let (status, conversation) = ragpipe_tests::app::json_of(
        app.request(reqwest::Method::POST, &alice.key, "/v1/conversations")
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = conversation["id"].as_str().expect("id");
    let response = app
        .request(
            reqwest::Method::POST,
            &alice.key,
            &format!("/v1/conversations/{id}/messages"),
        )
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"content": "Anyone there?"}))
        .send()
        .await
        .expect("POST");
    let mut sse = SseClient::new(response);
    assert_eq!(sse.next().await.map(|e| e.event), Some("message".to_owned()));
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.shutdown()).await;
    assert!(stopped.is_ok(), "the server waited for a stream that could not end");
    // The stream ended without a terminal event: the client reconnects with its last id.
    assert_eq!(sse.next_within(Duration::from_secs(5)).await, Ok(None));
    assert_eq!(sse.last_event_id.as_deref(), Some("message"));
}
