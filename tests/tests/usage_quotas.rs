//! Usage reports and quotas through the real API, store and ingest worker: report totals are
//! the sums of the events (per day, model and kind, over half-open bounds), a retried ingest job
//! is counted once, and budgets refuse uploads (413 storage, 429 tokens) and questions (429)
//! with a message naming the budget and the use, until the period rolls over. Reprocessing is
//! reported but never charged.

use ragpipe_core::{DocumentId, UserId};
use ragpipe_ingest_worker::IngestContext;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::quotas::{self, Limit, Quota, UserBudget};
use ragpipe_store::usage::{self, GroupBy, NewUsage, Period, UsageKind, UsageOrigin};
use ragpipe_tests::app::{TestApp, TestUser, UploadFile, error_code, json_of};
use ragpipe_tests::openai_server::{Fault, OpenAiServer, Route};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

/// One usage event to record, at `at` (RFC 3339, UTC, `Z`) or, when `None`, now.
#[derive(Clone, Debug)]
struct Event {
    user: UserId,
    kind: UsageKind,
    model: &'static str,
    prompt: u64,
    completion: u64,
    cached: u64,
    requests: u32,
    cost: f64,
    origin: UsageOrigin,
    at: Option<&'static str>,
}

impl Event {
    fn chat(
        user: UserId,
        model: &'static str,
        prompt: u64,
        completion: u64,
        cost: f64,
        at: Option<&'static str>,
    ) -> Event {
        Event {
            user,
            kind: UsageKind::Chat,
            model,
            prompt,
            completion,
            cached: 0,
            requests: 1,
            cost,
            origin: UsageOrigin::User,
            at,
        }
    }

    fn embedding(
        user: UserId,
        model: &'static str,
        prompt: u64,
        cached: u64,
        cost: f64,
        at: Option<&'static str>,
    ) -> Event {
        Event {
            user,
            kind: UsageKind::Embedding,
            model,
            prompt,
            completion: 0,
            cached,
            requests: 2,
            cost,
            origin: UsageOrigin::User,
            at,
        }
    }

    fn reprocess(mut self) -> Event {
        self.origin = UsageOrigin::Reprocess;
        self
    }
}

/// Records `event` as the application does (through the user's transaction, keyed), then, as
/// the superuser, moves it to its time.
async fn record(app: &TestApp, event: &Event) {
    let key = format!("test:{}", uuid::Uuid::now_v7());
    let mut tx = app.store.user_tx(event.user).await.expect("user transaction");
    let new = usage::record(
        &mut tx,
        &NewUsage {
            kind: event.kind,
            model: event.model,
            prompt_tokens: event.prompt,
            completion_tokens: event.completion,
            cached_tokens: event.cached,
            requests: event.requests,
            cost: event.cost,
            idempotency_key: key.clone(),
            document_id: None,
            message_id: None,
            request_id: None,
            origin: event.origin,
        },
    )
    .await
    .expect("recording usage");
    assert!(new);
    tx.commit().await.expect("commit");
    if let Some(at) = event.at {
        sqlx::query("UPDATE usage_events SET created_at = $1::timestamptz WHERE idempotency_key = $2")
            .bind(at)
            .bind(&key)
            .execute(app.pool())
            .await
            .expect("dating the event");
    }
}

/// What the report must say: the events of `user` in `[from, to)` (RFC 3339 strings of one
/// format compare as instants), summed per key, as the JSON rows and total.
fn expected(events: &[Event], user: Option<UserId>, from: &str, to: &str, group_by: GroupBy) -> (Value, Value) {
    let mut groups: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    let mut all = Vec::new();
    for e in events {
        let at = e.at.expect("dated events");
        if user.is_some_and(|u| u != e.user) || at < from || at >= to {
            continue;
        }
        let key = match group_by {
            GroupBy::Day => at[..10].to_owned(),
            GroupBy::Model => e.model.to_owned(),
            GroupBy::Kind => e.kind.as_str().to_owned(),
        };
        groups.entry(key).or_default().push(e);
        all.push(e);
    }
    let totals = |events: &[&Event]| {
        let sum = |f: fn(&Event) -> u64| events.iter().map(|e| f(e)).sum::<u64>();
        let charged: u64 = events
            .iter()
            .filter(|e| e.origin == UsageOrigin::User)
            .map(|e| e.prompt + e.completion)
            .sum();
        json!({
            "events": events.len(),
            "requests": sum(|e| u64::from(e.requests)),
            "prompt_tokens": sum(|e| e.prompt),
            "completion_tokens": sum(|e| e.completion),
            "cached_tokens": sum(|e| e.cached),
            "total_tokens": sum(|e| e.prompt + e.completion),
            "charged_tokens": charged,
            "cost": events.iter().map(|e| e.cost).sum::<f64>(),
        })
    };
    let rows = groups
        .iter()
        .map(|(key, events)| {
            let mut row = totals(events);
            row["key"] = json!(key);
            row
        })
        .collect();
    (Value::Array(rows), totals(&all))
}

/// `GET /v1/usage?{query}` as `user`: 200 and the body.
async fn usage_report(app: &TestApp, user: &TestUser, query: &str) -> Value {
    let (status, body) = app.get_json(&user.key, &format!("/v1/usage?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// Alice's and Bob's events around a window of 2026-10-03 .. 2026-10-06 (costs are binary
/// fractions, so their sums are exact in every representation).
fn october_events(alice: UserId, bob: UserId) -> Vec<Event> {
    vec![
        // Exactly at `from`: counted.
        Event::chat(alice, "chat-a", 100, 20, 0.25, Some("2026-10-03T00:00:00Z")),
        Event::embedding(alice, "embed-a", 1000, 50, 0.125, Some("2026-10-03T23:59:59Z")),
        Event::embedding(alice, "embed-a", 3000, 0, 0.0625, Some("2026-10-04T12:00:00Z")).reprocess(),
        Event::chat(alice, "chat-b", 50, 5, 0.03125, Some("2026-10-04T13:00:00Z")),
        Event::chat(alice, "chat-a", 7, 3, 0.5, Some("2026-10-05T23:59:59Z")),
        // Exactly at `to`, and just before `from`: not counted.
        Event::chat(alice, "chat-a", 999, 999, 8.0, Some("2026-10-06T00:00:00Z")),
        Event::embedding(alice, "embed-a", 999, 0, 8.0, Some("2026-10-02T23:59:59Z")),
        // Another user's, inside the window: never in Alice's report.
        Event::chat(bob, "chat-a", 11, 13, 1.0, Some("2026-10-04T08:00:00Z")),
        Event::embedding(bob, "embed-b", 17, 0, 2.0, Some("2026-10-05T08:00:00Z")),
    ]
}

#[sqlx::test(migrations = false)]
async fn usage_totals_are_the_sums_of_the_callers_events_by_day_model_and_kind(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    let events = october_events(alice.id, bob.id);
    for e in &events {
        record(&app, e).await;
    }

    for (group_by, name) in [
        (GroupBy::Day, "day"),
        (GroupBy::Model, "model"),
        (GroupBy::Kind, "kind"),
    ] {
        let body = usage_report(&app, &alice, &format!("from=2026-10-03&to=2026-10-06&group_by={name}")).await;
        let (rows, total) = expected(
            &events,
            Some(alice.id),
            "2026-10-03T00:00:00Z",
            "2026-10-06T00:00:00Z",
            group_by,
        );
        assert_eq!(body["rows"], rows, "by {name}: {body}");
        assert_eq!(body["total"], total, "by {name}: {body}");
        assert_eq!(body["group_by"], name);
        assert_eq!(body["from"], "2026-10-03T00:00:00Z");
        assert_eq!(body["to"], "2026-10-06T00:00:00Z");
    }
    // Reprocessing is reported (in total_tokens) but not charged.
    let body = usage_report(&app, &alice, "from=2026-10-03&to=2026-10-06&group_by=kind").await;
    assert_eq!(body["total"]["total_tokens"], 100 + 20 + 1000 + 3000 + 50 + 5 + 7 + 3);
    assert_eq!(body["total"]["charged_tokens"], 100 + 20 + 1000 + 50 + 5 + 7 + 3);

    // Instants as bounds, to the second: 2026-10-03T23:59:59Z is in, 2026-10-05T23:59:59Z out.
    let body = usage_report(
        &app,
        &alice,
        "from=2026-10-03T12:00:00Z&to=2026-10-05T23:59:59Z&group_by=model",
    )
    .await;
    let (rows, total) = expected(
        &events,
        Some(alice.id),
        "2026-10-03T12:00:00Z",
        "2026-10-05T23:59:59Z",
        GroupBy::Model,
    );
    assert_eq!(body["rows"], rows, "{body}");
    assert_eq!(body["total"], total, "{body}");
    assert_eq!(body["total"]["events"], 3);

    // Bob sees only his own.
    let body = usage_report(&app, &bob, "from=2026-10-01&to=2026-11-01&group_by=model").await;
    let (rows, total) = expected(
        &events,
        Some(bob.id),
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        GroupBy::Model,
    );
    assert_eq!((&body["rows"], &body["total"]), (&rows, &total), "{body}");

    // Without bounds: this month, grouped by day, with the quota status.
    record(&app, &Event::chat(alice.id, "chat-a", 40, 2, 0.5, None)).await;
    let body = usage_report(&app, &alice, "").await;
    assert_eq!(body["group_by"], "day");
    assert_eq!(body["total"]["events"], 1, "{body}");
    assert_eq!(body["total"]["total_tokens"], 42);
    assert_eq!(body["quota"]["plan"], "free");
    assert_eq!(body["quota"]["monthly_tokens"]["used"], 42);
    assert_eq!(body["quota"]["period_start"], body["from"]);
    // Nothing in a window: no rows, a zero total.
    let body = usage_report(&app, &alice, "from=2020-01-01&to=2020-02-01").await;
    assert_eq!(body["rows"], json!([]));
    assert_eq!(body["total"]["events"], 0);
    assert_eq!(body["total"]["cost"], 0.0);

    // Bad parameters are 400 with the one error shape; no key is 401.
    for query in [
        "group_by=user",
        "from=yesterday",
        "from=2026-10-06&to=2026-10-03",
        "from=2026-10-03&to=2026-10-03",
        "since=2026-10-01",
    ] {
        let (status, body) = app.get_json(&alice.key, &format!("/v1/usage?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(error_code(&body), "invalid_request", "{query}: {body}");
    }
    let response = app
        .client
        .get(app.url("/v1/usage"))
        .send()
        .await
        .expect("GET /v1/usage");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn the_reports_the_cli_prints_are_the_sums_of_the_events_and_all_users_stay_out_of_user_transactions(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    let events = october_events(alice.id, bob.id);
    for e in &events {
        record(&app, e).await;
    }
    let period = Period::from_bounds_now(Some("2026-10-03"), Some("2026-10-06")).expect("period");
    for group_by in [GroupBy::Day, GroupBy::Model, GroupBy::Kind] {
        // `ragpipe usage --user ID --json` prints exactly what GET /v1/usage returns.
        let mut tx = app.store.user_tx(alice.id).await.expect("tx");
        let mine = usage::report(&mut tx, period, group_by).await.expect("report");
        tx.commit().await.expect("commit");
        let http = usage_report(
            &app,
            &alice,
            &format!("from=2026-10-03&to=2026-10-06&group_by={}", group_by.as_str()),
        )
        .await;
        let mine = serde_json::to_value(&mine).expect("JSON");
        for field in ["from", "to", "group_by", "rows", "total"] {
            assert_eq!(mine[field], http[field], "{field} by {group_by:?}");
        }

        // `ragpipe usage` without --user: every user's events.
        let all = usage::report_all(&app.store, period, group_by)
            .await
            .expect("all-users report");
        let all = serde_json::to_value(&all).expect("JSON");
        let (rows, total) = expected(&events, None, "2026-10-03T00:00:00Z", "2026-10-06T00:00:00Z", group_by);
        assert_eq!(all["rows"], rows, "all users by {group_by:?}");
        assert_eq!(all["total"], total, "all users by {group_by:?}");
    }

    // The all-users aggregate is refused inside a user's transaction (a user learns nothing of
    // anyone else's usage), and the events table shows a user only their own rows.
    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    let refused = sqlx::query("SELECT * FROM ragpipe_usage_by_day('2026-10-01', '2026-11-01')")
        .fetch_all(tx.conn())
        .await
        .expect_err("refused in a user transaction");
    assert!(
        refused.to_string().contains("cannot be read in a user's transaction"),
        "{refused}"
    );
    drop(tx);
    let mut tx = app.store.user_tx(alice.id).await.expect("tx");
    let (others,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage_events WHERE user_id <> $1")
        .bind(alice.id.0)
        .fetch_one(tx.conn())
        .await
        .expect("count");
    assert_eq!(others, 0);
    drop(tx);
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_retried_ingest_job_is_counted_once_and_priced_from_the_table(pool: PgPool) {
    let server = OpenAiServer::start().await;
    let mut embedding = server.embedding_endpoint();
    // No retries inside the client: the failure reaches the job, which the queue runs again.
    embedding.max_retries = 0;
    let app = TestApp::builder(pool)
        .config(move |c| {
            c.embedding = embedding;
            c.prices = Some("test-embedding=0.5/0".into());
            c.worker.max_attempts = 3;
        })
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    server.inject(Route::Embeddings, Fault::server_error(), 1);

    let text = "Usage is recorded once per job, whatever happens to the job. ".repeat(60);
    let doc = app.upload_one(&alice.key, "usage.txt", text.into_bytes()).await;
    let id = doc["id"].as_str().expect("document id").to_owned();
    let done = app.wait_for_document(&alice.key, &id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "ready", "{done}");
    let requests = server.requests_to(Route::Embeddings);
    assert!(
        requests.iter().any(|r| r.fault.is_some()) && requests.iter().any(|r| r.fault.is_none()),
        "one failed attempt, then one that succeeded: {:?}",
        requests.iter().map(|r| &r.fault).collect::<Vec<_>>()
    );

    let events: Vec<(i64, f64, String)> =
        sqlx::query_as("SELECT prompt_tokens, cost::float8, idempotency_key FROM usage_events WHERE user_id = $1")
            .bind(alice.id.0)
            .fetch_all(app.pool())
            .await
            .expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let (tokens, cost, key) = events[0].clone();
    assert!(tokens > 0);
    assert!(
        (cost - tokens as f64 * 0.5 / 1e6).abs() < 1e-8,
        "{cost} for {tokens} tokens"
    );
    let report = usage_report(&app, &alice, "group_by=kind").await;
    let expected_rows = json!([{
        "key": "embedding", "events": 1, "requests": report["total"]["requests"], "prompt_tokens": tokens,
        "completion_tokens": 0, "cached_tokens": 0, "total_tokens": tokens, "charged_tokens": tokens, "cost": cost,
    }]);
    assert_eq!(report["rows"], expected_rows, "{report}");

    // At-least-once delivery: the same job again, as after a crash between its commit and its
    // acknowledgement. It derives the same key and records nothing new.
    let job_key = key.strip_prefix("ingest:").expect("an ingest key").to_owned();
    let ctx = IngestContext::new(app.store.clone(), app.config.clone()).expect("ingest context");
    let document = DocumentId(id.parse().expect("uuid"));
    ragpipe_ingest_worker::ingest_document(&ctx, &IngestJob::upload(alice.id, document), &job_key)
        .await
        .expect("the job again");
    let again = usage_report(&app, &alice, "group_by=kind").await;
    assert_eq!(again["rows"], report["rows"], "{again}");
    assert_eq!(again["total"], report["total"]);
    assert_eq!(again["quota"]["monthly_tokens"]["used"], tokens);
    app.shutdown().await;
}

async fn set_budget(app: &TestApp, user: &TestUser, quota: Quota, budget: UserBudget) {
    quotas::set_user_budget(&app.store, user.id, quota, budget)
        .await
        .expect("setting a budget");
}

/// The start of the current token period as the database sees it, `YYYY-MM-DD`.
async fn period_start(app: &TestApp) -> String {
    let (day,): (String,) =
        sqlx::query_as("SELECT to_char(date_trunc('month', now(), 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
            .fetch_one(app.pool())
            .await
            .expect("period start");
    day
}

async fn new_conversation(app: &TestApp, user: &TestUser) -> String {
    let response = app
        .request(reqwest::Method::POST, &user.key, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .expect("POST /v1/conversations");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("conversation id").to_owned()
}

async fn ask(app: &TestApp, user: &TestUser, conversation: &str) -> (StatusCode, Value) {
    let response = app
        .request(
            reqwest::Method::POST,
            &user.key,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .json(&json!({"content": "What does the budget allow?"}))
        .send()
        .await
        .expect("POST messages");
    json_of(response).await
}

#[sqlx::test(migrations = false)]
async fn an_upload_over_the_storage_budget_is_refused_with_413_naming_the_budget_and_the_use(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    set_budget(&app, &alice, Quota::StorageBytes, UserBudget::Own(Limit::At(100))).await;
    let sixty = |c: u8| vec![c; 60];

    let first = app.upload_one(&alice.key, "a.txt", sixty(b'a')).await;
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("b.txt", sixty(b'b'))])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "storage_budget_exceeded");
    assert_eq!(
        body["error"]["message"],
        "storage budget of 100 bytes would be exceeded: 60 bytes stored, this upload adds 60"
    );
    // Nothing of the refused upload was kept.
    let (status, list) = app.get_json(&alice.key, "/v1/documents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["documents"].as_array().map(Vec::len), Some(1), "{list}");

    // Bytes already stored cost nothing again: the same file again, and with it (and twice
    // over within the request) a new one that exactly fills the budget.
    let (status, body) = app
        .upload_json(
            &alice.key,
            vec![
                UploadFile::new("a-again.txt", sixty(b'a')),
                UploadFile::new("c.txt", vec![b'c'; 40]),
                UploadFile::new("c-again.txt", vec![b'c'; 40]),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["documents"][0]["id"], first["id"]);
    let (_, usage) = app.get_json(&alice.key, "/v1/usage").await;
    assert_eq!(
        usage["quota"]["storage_bytes"],
        json!({"limit": 100, "used": 100, "source": "user"})
    );
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("d.txt", b"d".to_vec())])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        body["error"]["message"],
        "storage budget of 100 bytes would be exceeded: 100 bytes stored, this upload adds 1"
    );

    // Deleting a document makes room.
    let id = first["id"].as_str().expect("id");
    let (status, _) = app.delete(&alice.key, &format!("/v1/documents/{id}")).await;
    assert!(status.is_success(), "{status}");
    app.upload_one(&alice.key, "d.txt", b"d".to_vec()).await;

    // Bob is on the plan's budget (100 MiB on free) and unaffected by Alice's.
    app.upload_one(&bob.key, "b.txt", sixty(b'b')).await;

    // Two uploads at once that each fit alone but not together: one is refused.
    set_budget(&app, &bob, Quota::StorageBytes, UserBudget::Own(Limit::At(150))).await;
    let (one, two) = tokio::join!(
        app.upload_json(&bob.key, vec![UploadFile::new("x.txt", sixty(b'x'))]),
        app.upload_json(&bob.key, vec![UploadFile::new("y.txt", sixty(b'y'))]),
    );
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::PAYLOAD_TOO_LARGE],
        "{} {}",
        one.1,
        two.1
    );
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn uploads_and_questions_are_refused_with_429_once_the_months_tokens_are_used_up_until_the_month_rolls_over(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    let conversation = new_conversation(&app, &alice).await;
    let since = period_start(&app).await;
    // The plan's budget applies to everyone on the plan.
    quotas::set_plan(&app.store, "free", Some(Limit::At(1000)), None)
        .await
        .expect("setting the plan");
    record(&app, &Event::chat(alice.id, "chat-a", 900, 300, 0.5, None)).await;
    let message = format!("monthly token budget of 1000 tokens is used up (1200 used since {since})");

    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("a.txt", b"hello".to_vec())])
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "token_budget_exceeded");
    assert_eq!(body["error"]["message"], message.as_str());

    let (status, body) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["message"], message.as_str());
    // The refused question left nothing behind.
    let (_, page) = app
        .get_json(&alice.key, &format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(page["messages"], json!([]), "{page}");
    // Asking in a conversation that does not exist is still a 404.
    let (status, _) = ask(&app, &alice, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob, on the same plan, has used nothing.
    app.upload_one(&bob.key, "b.txt", b"bob's".to_vec()).await;

    // A budget of Alice's own overrides the plan's; back on the plan she is refused again.
    set_budget(&app, &alice, Quota::MonthlyTokens, UserBudget::Own(Limit::Unlimited)).await;
    let (status, body) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    set_budget(&app, &alice, Quota::MonthlyTokens, UserBudget::Plan).await;
    let (status, _) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The month rolls over: this month's events are last month's.
    sqlx::query("UPDATE usage_events SET created_at = created_at - interval '1 month' WHERE user_id = $1")
        .bind(alice.id.0)
        .execute(app.pool())
        .await
        .expect("moving the events back a month");
    let (status, body) = app
        .upload_json(&alice.key, vec![UploadFile::new("a.txt", b"hello".to_vec())])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, usage) = app.get_json(&alice.key, "/v1/usage").await;
    assert_eq!(
        usage["quota"]["monthly_tokens"],
        json!({"limit": 1000, "used": 0, "source": "plan"})
    );
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn reprocessing_is_reported_but_not_charged_to_the_quota(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice@example.com").await;
    let conversation = new_conversation(&app, &alice).await;
    set_budget(&app, &alice, Quota::MonthlyTokens, UserBudget::Own(Limit::At(1000))).await;
    // An operator's reprocessing run re-embeds far more than the budget.
    record(
        &app,
        &Event::embedding(alice.id, "embed-a", 5000, 0, 0.25, None).reprocess(),
    )
    .await;

    app.upload_one(&alice.key, "a.txt", b"still allowed".to_vec()).await;
    let (status, body) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, usage) = app.get_json(&alice.key, "/v1/usage?group_by=kind").await;
    assert_eq!(usage["total"]["total_tokens"], 5000, "reported: {usage}");
    assert_eq!(usage["total"]["charged_tokens"], 0);
    assert_eq!(usage["quota"]["monthly_tokens"]["used"], 0, "not charged: {usage}");

    // The user's own use is charged, and only it is named in the refusal.
    record(&app, &Event::chat(alice.id, "chat-a", 800, 200, 0.5, None)).await;
    let (status, body) = ask(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let since = period_start(&app).await;
    assert_eq!(
        body["error"]["message"],
        format!("monthly token budget of 1000 tokens is used up (1000 used since {since})").as_str()
    );
    app.shutdown().await;
}
