//! An answer when things go wrong: the model's stream is cut (the answer is continued), the
//! user cancels, the model refuses before answering, the job runs again.

mod agent_support;

use agent_support::{QUESTION, delta_text, shape, start, start_with};
use ragpipe_agent::AnswerContext;
use ragpipe_agent::answer::{Outcome, answer};
use ragpipe_core::UserId;
use ragpipe_store::conversations::AgentJob;
use ragpipe_tests::openai_server::{Fault, Route, ScriptedReply};
use reqwest::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;

#[sqlx::test(migrations = false)]
async fn a_stream_cut_mid_answer_is_continued_to_the_whole_answer_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let full = reply.full_text();
    // The cut attempt and the one that continues it get the same answer.
    system.model().push_reply(reply.clone());
    system.model().push_reply(reply);
    system
        .model()
        .inject(Route::ChatCompletions, Fault::CutAfter { deltas: 5 }, 1);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let events = system.ask_answered(alice, &conversation, QUESTION).await;
    assert_eq!(delta_text(&events), full, "the whole answer, no gap and no repeat");

    let message_id = events[0].json()["message_id"].as_str().expect("id").to_owned();
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], full.as_str());
    // Asked again, with the same prompt.
    let asked = system.model().requests_to(Route::ChatCompletions);
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].body["messages"], asked[1].body["messages"]);
    // One usage event: the call that completed the answer, as the model counted it (the cut
    // one was not billed).
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let billed = system.model().billed(Route::ChatCompletions);
    assert_eq!(
        (rows[0].1 as u64, rows[0].2 as u64),
        (billed.prompt_tokens, billed.completion_tokens)
    );
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_continuation_that_differs_from_the_text_sent_fails_the_message_keeping_its_text(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let deltas = reply.stream_deltas();
    system.model().push_reply(reply);
    // Asked again, the model answers something else.
    system.model().push_reply(ScriptedReply::text(
        "A different answer altogether, which must not be spliced on.",
    ));
    system
        .model()
        .inject(Route::ChatCompletions, Fault::CutAfter { deltas: 5 }, 1);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let events = system.ask_stream(alice, &conversation, QUESTION).await.rest().await;
    assert_eq!(shape(&events), ["message", "context", "delta*", "error"], "{events:#?}");
    let error = events.last().expect("error").json();
    assert_eq!(error["code"], "answer_failed");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("differently")),
        "{error}"
    );
    let partial = delta_text(&events);
    assert_eq!(
        partial,
        deltas[..5].concat(),
        "the text received before the cut, nothing after"
    );

    let message_id = events[0].json()["message_id"].as_str().expect("id").to_owned();
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["status"], "failed");
    assert_eq!(message["content"], partial.as_str(), "partial text kept");
    assert_eq!(system.model().requests_to(Route::ChatCompletions).len(), 2);
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (status, error): (String, Option<String>) = sqlx::query_as("SELECT status, error FROM agent_requests")
        .fetch_one(system.app.pool())
        .await
        .expect("request");
    assert_eq!(status, "failed");
    assert!(error.is_some());
    // Resuming after the end replays the error.
    let again = agent_support::SseClient::new(system.events(alice, &message_id, Some("2")).await)
        .rest()
        .await;
    assert_eq!(shape(&again).last().map(String::as_str), Some("error"));
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_stream_ending_without_a_finish_reason_is_continued(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    system.model().set_llama_cpp_mode(true);
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let full = reply.full_text();
    system.model().push_reply(reply.clone());
    system.model().push_reply(reply);
    system
        .model()
        .inject(Route::ChatCompletions, Fault::EndWithoutFinish { deltas: 3 }, 1);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let events = system.ask_stream(alice, &conversation, QUESTION).await.rest().await;
    assert_eq!(shape(&events), ["message", "context", "delta*", "usage", "done"]);
    assert_eq!(delta_text(&events), full);
    assert_eq!(system.model().requests_to(Route::ChatCompletions).len(), 2);
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn cancelling_mid_answer_stops_the_model_and_keeps_the_text(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("slow-long-answer").expect("fixture");
    let full = reply.full_text();
    system.model().push_reply(reply);
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let mut sse = system.ask_stream(alice, &conversation, QUESTION).await;
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e: &&agent_support::SseEvent| e.event == "delta")
        .count()
        < 2
    {
        events.push(sse.next().await.expect("more events"));
    }
    let message_id = events[0].json()["message_id"].as_str().expect("id").to_owned();
    let cancel = |key: String| {
        let request = system.app.request(
            reqwest::Method::POST,
            &key,
            &format!("/v1/messages/{message_id}/cancel"),
        );
        async move { ragpipe_tests::app::json_of(request.send().await.expect("POST cancel")).await }
    };
    let (status, body) = cancel(alice.key.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");

    // The stream ends with `done` (cancelled); the text is what was written before the cancel.
    events.extend(sse.rest().await);
    assert_eq!(shape(&events), ["message", "context", "delta*", "done"], "{events:#?}");
    let done = events.last().expect("done").json();
    assert_eq!(done["finish_reason"], "cancelled");
    assert_eq!(done["status"], "cancelled");
    let text = delta_text(&events);
    assert!(text.len() < full.len() && full.starts_with(&text), "{text}");

    // The worker stopped generating: it closed the model's stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !system.model().requests_to(Route::ChatCompletions)[0].disconnected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model stream was not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["status"], "cancelled");
    assert_eq!(message["content"], text.as_str());
    // Usage of what was generated is recorded once the worker has settled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM agent_requests")
            .fetch_one(system.app.pool())
            .await
            .expect("request");
        assert_eq!(status, "cancelled");
        if system.chat_usage().await.len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "usage of the cancelled answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Cancelling again is harmless; cancelling a finished answer or a question is a conflict.
    let (status, _) = cancel(alice.key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    system.model().push_reply(ScriptedReply::text("Short answer [1]."));
    let finished = system.ask(alice, &conversation, "And then?").await;
    let finished_id = finished["assistant_message"]["id"].as_str().expect("id").to_owned();
    system.wait_finished(alice, &finished_id).await;
    let (status, body) = ragpipe_tests::app::json_of(
        system
            .app
            .request(
                reqwest::Method::POST,
                &alice.key,
                &format!("/v1/messages/{finished_id}/cancel"),
            )
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "answer_finished");
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn refusals_before_the_first_delta_are_retried_and_the_answer_written_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // The chat client retries once; the second 500 goes back to the queue, whose next attempt
    // answers.
    let system = start_with(agent_support::pool(options, connect).await, true, |c| {
        c.chat.max_retries = 1;
    })
    .await;
    system.model().inject(Route::ChatCompletions, Fault::server_error(), 2);
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    system.model().push_reply(reply.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let events = system.ask_answered(alice, &conversation, QUESTION).await;
    assert_eq!(delta_text(&events), reply.full_text());
    assert_eq!(system.model().requests_to(Route::ChatCompletions).len(), 3);
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    system.app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_job_run_again_writes_no_second_text_or_usage(options: PgPoolOptions, connect: PgConnectOptions) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let Answered {
        message_id,
        request_id,
        job,
        ctx,
    } = answered_once(&system, &reply).await;
    let alice = &system.alice;

    // Delivered again after it completed: nothing to do.
    assert!(matches!(answer(&ctx, job, false).await, Ok(Outcome::Skipped(_))));
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["content"], reply.full_text().as_str());

    // A run that died mid-answer left text behind: the next one asks again, keeps that text,
    // appends the rest, and records no second usage event.
    sqlx::query(
        "UPDATE copilot_messages SET status = 'streaming', content = left(content, 20), completed_at = NULL WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&message_id).expect("uuid"))
    .execute(system.app.pool())
    .await
    .expect("rewind");
    sqlx::query("UPDATE agent_requests SET status = 'running' WHERE id = $1")
        .bind(request_id)
        .execute(system.app.pool())
        .await
        .expect("rewind");
    system.model().push_reply(reply.clone());
    let outcome = answer(&ctx, job, false).await.expect("answer");
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
    let message = system.message(alice, &message_id).await;
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], reply.full_text().as_str(), "the whole text, once");
    assert_eq!(system.chat_usage().await.len(), 1);
    assert_eq!(
        system.model().requests_to(Route::ChatCompletions).len(),
        2,
        "the model was asked again"
    );

    // A job for a request that does not exist (deleted conversation) is skipped.
    let gone = AgentJob {
        user_id: UserId::new(),
        request_id: uuid::Uuid::now_v7(),
    };
    assert!(matches!(answer(&ctx, gone, false).await, Ok(Outcome::Skipped(_))));
    system.app.shutdown().await;
}

/// Two runs of one answer (a job delivered again while its first run still streams): the run
/// that loses the race to write has still made a model call that was billed, and it is
/// recorded, under a key of its own.
#[sqlx::test(migrations = false)]
async fn a_run_superseded_after_its_call_finished_still_records_the_call(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let system = start(agent_support::pool(options, connect).await, true).await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    let Answered {
        message_id,
        request_id,
        job,
        ctx,
    } = answered_once(&system, &reply).await;
    let message_uuid = uuid::Uuid::parse_str(&message_id).expect("uuid");

    // The answer is back to streaming with all its text, as if its run had died before the
    // end: a second run repeats the text (slowly) and would only complete it.
    sqlx::query("UPDATE copilot_messages SET status = 'streaming', completed_at = NULL WHERE id = $1")
        .bind(message_uuid)
        .execute(system.app.pool())
        .await
        .expect("rewind");
    sqlx::query("UPDATE agent_requests SET status = 'running' WHERE id = $1")
        .bind(request_id)
        .execute(system.app.pool())
        .await
        .expect("rewind");
    system
        .model()
        .push_reply(reply.clone().with_delta_delay(Duration::from_millis(150)));
    let run = tokio::spawn(async move { answer(&ctx, job, false).await });
    // Meanwhile another run writes to the message: the second run's ending is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("UPDATE copilot_messages SET content = content || ' (another run)' WHERE id = $1")
        .bind(message_uuid)
        .execute(system.app.pool())
        .await
        .expect("another writer");
    let outcome = run.await.expect("join").expect("answer");
    assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
    assert_eq!(system.model().requests_to(Route::ChatCompletions).len(), 2);
    let rows = system.chat_usage().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().any(|r| r.3.contains(":superseded:")), "{rows:?}");
    let billed = system.model().billed(Route::ChatCompletions);
    let recorded: i64 = rows.iter().map(|r| r.1 + r.2).sum();
    assert_eq!(recorded as u64, billed.prompt_tokens + billed.completion_tokens);
    system.app.shutdown().await;
}

/// A question answered once, end to end, with `reply`; and what it takes to run its job again.
struct Answered {
    message_id: String,
    request_id: uuid::Uuid,
    job: AgentJob,
    ctx: AnswerContext,
}

async fn answered_once(system: &agent_support::System, reply: &ScriptedReply) -> Answered {
    system.model().push_reply(reply.clone());
    let alice = &system.alice;
    let conversation = system.conversation(alice).await;
    let asked = system.ask(alice, &conversation, QUESTION).await;
    let message_id = asked["assistant_message"]["id"].as_str().expect("id").to_owned();
    let request_id: uuid::Uuid = asked["request_id"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("request id");
    system.wait_finished(alice, &message_id).await;
    let job = AgentJob {
        user_id: alice.id,
        request_id,
    };
    let ctx = AnswerContext::new(system.app.store.clone(), Arc::clone(&system.app.config))
        .await
        .expect("context");
    Answered {
        message_id,
        request_id,
        job,
        ctx,
    }
}
