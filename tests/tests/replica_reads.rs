//! Reads from a streaming replica (`RAGPIPE_READ_DATABASE_URL`), against the real hot standby
//! of `scripts/replica` (port 5433). Replay is paused to make the replica's lag as long as a
//! test likes: reads that may be stale are seen to come from the replica (they miss what another
//! process wrote meanwhile), while what the user just wrote through this process (an upload, a
//! conversation, a question and its answer) never goes missing from their lists, their answer's
//! replay or their searches.
//!
//! The tests take the replica's lock ([`Replica::attach`]), so they run one at a time. Without a
//! replica they fail and say how to make one.

use ragpipe_core::{DocumentId, UserId};
use ragpipe_store::{Store, conversations, documents};
use ragpipe_tests::app::{TestApp, TestUser, json_of};
use ragpipe_tests::replica::Replica;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

/// A pool with room for the API, two workers and the message feed.
async fn pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    options
        .max_connections(20)
        .connect_with(connect)
        .await
        .expect("connecting to the test database")
}

/// What a read on the replica sees of itself: whether the server is a standby, the role and
/// acting user row-level security goes by, and how statements are planned.
async fn server_facts(tx: &mut ragpipe_store::UserTx) -> (bool, String, String, String) {
    sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_user::text, current_setting('ragpipe.user_id', true), \
                current_setting('plan_cache_mode')",
    )
    .fetch_one(tx.conn())
    .await
    .expect("reading the transaction's settings")
}

async fn listed_names(store: &Store, user: UserId) -> (bool, Vec<String>) {
    let mut tx = store.read_tx(user).await.expect("read tx");
    let on_replica = tx.on_replica();
    let docs = documents::list(&mut tx, None, None, 100).await.expect("list");
    tx.commit().await.expect("commit");
    (on_replica, docs.into_iter().map(|d| d.filename).collect())
}

#[sqlx::test(migrations = false)]
async fn replica_reads_run_as_the_user_under_row_level_security_and_wait_for_the_users_writes(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let primary = pool(options, connect).await;
    let mut replica = Replica::attach(&primary).await;
    let store = Store::from_pool(primary.clone()).with_read_replica(replica.pool.clone());
    store
        .migrate(&ragpipe_core::Config::defaults().embedding)
        .await
        .expect("migrate");
    let mut users = Vec::new();
    for email in ["alice@example.com", "bob@example.com"] {
        let new = ragpipe_store::users::NewUser {
            email: email.into(),
            ..Default::default()
        };
        users.push(ragpipe_store::users::create(&store, &new).await.expect("user").id);
    }
    let (alice, bob) = (UserId(users[0]), UserId(users[1]));
    ragpipe_tests::upload_inline(&store, alice, "alice.txt", b"alice's notes")
        .await
        .expect("upload");
    ragpipe_tests::upload_inline(&store, bob, "bob.txt", b"bob's notes")
        .await
        .expect("upload");
    replica.wait_replayed(&primary).await;

    // Caught up: the read runs on the standby, as the application role acting as Alice, and
    // row-level security shows her rows only.
    let mut tx = store.read_tx(alice).await.expect("read tx");
    assert!(tx.on_replica(), "a caught-up replica serves the read");
    let (standby, role, acting, plans) = server_facts(&mut tx).await;
    assert!(standby, "pg_is_in_recovery() on the read's server");
    assert_eq!(
        (role.as_str(), acting, plans.as_str()),
        ("ragpipe_app", alice.0.to_string(), "auto")
    );
    let names: Vec<String> = documents::list(&mut tx, None, None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.filename)
        .collect();
    assert_eq!(names, ["alice.txt"]);
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(tx.conn())
        .await
        .expect("count");
    assert_eq!(all, 1, "row-level security applies on the replica");
    let write = sqlx::query("UPDATE documents SET metadata = '{}'")
        .execute(tx.conn())
        .await
        .expect_err("a write on the standby");
    assert!(
        write.to_string().contains("read-only"),
        "the standby refuses writes: {write}"
    );
    drop(tx);

    // The search transaction too, with its generic plans.
    let mut tx = store.search_read_tx(bob).await.expect("search read tx");
    assert!(tx.on_replica());
    let (standby, role, acting, plans) = server_facts(&mut tx).await;
    assert!(standby);
    assert_eq!(
        (role.as_str(), acting, plans.as_str()),
        ("ragpipe_app", bob.0.to_string(), "force_generic_plan")
    );
    tx.rollback().await.expect("rollback");

    // Replay paused: Alice uploads again. Her reads go to the primary and show it; Bob, who wrote
    // nothing since, still reads the replica.
    replica.pause().await;
    ragpipe_tests::upload_inline(&store, alice, "alice-2.txt", b"alice's second notes")
        .await
        .expect("upload");
    for _ in 0..3 {
        let (on_replica, mut names) = listed_names(&store, alice).await;
        names.sort();
        assert!(!on_replica, "a replica behind Alice's write does not serve her");
        assert_eq!(names, ["alice-2.txt", "alice.txt"]);
    }
    assert_eq!(listed_names(&store, bob).await, (true, vec!["bob.txt".to_owned()]));

    // Another process (a store that knows nothing of this one's writes) uploads for Bob: this
    // process's reads for Bob may miss it while the replica lags, and do; once replayed, they
    // show it, from the replica.
    let elsewhere = Store::from_pool(primary.clone());
    ragpipe_tests::upload_inline(&elsewhere, bob, "bob-elsewhere.txt", b"written elsewhere")
        .await
        .expect("upload");
    assert_eq!(listed_names(&store, bob).await, (true, vec!["bob.txt".to_owned()]));

    replica.resume().await;
    replica.wait_replayed(&primary).await;
    let (on_replica, mut names) = listed_names(&store, alice).await;
    names.sort();
    assert!(
        on_replica,
        "the replica serves Alice again once it has replayed her write"
    );
    assert_eq!(names, ["alice-2.txt", "alice.txt"]);
    let (on_replica, mut names) = listed_names(&store, bob).await;
    names.sort();
    assert!(on_replica);
    assert_eq!(names, ["bob-elsewhere.txt", "bob.txt"]);
}

async fn send(app: &TestApp, user: &TestUser, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app.request(method, &user.key, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.expect("request")).await
}

async fn document_names(app: &TestApp, user: &TestUser) -> Vec<String> {
    let (status, body) = send(app, user, Method::GET, "/v1/documents?limit=100", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut names: Vec<String> = body["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["filename"].as_str().expect("filename").to_owned())
        .collect();
    names.sort();
    names
}

async fn conversation_ids(app: &TestApp, user: &TestUser) -> Vec<String> {
    let (status, body) = send(app, user, Method::GET, "/v1/conversations", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn search_files(app: &TestApp, user: &TestUser, query: &str) -> Vec<String> {
    let (status, body) = send(
        app,
        user,
        Method::POST,
        "/v1/search",
        Some(json!({"query": query, "mode": "text", "k": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array()
        .or_else(|| body["hits"].as_array())
        .expect("hits")
        .iter()
        .map(|h| h["filename"].as_str().expect("filename").to_owned())
        .collect()
}

/// The text of an answer's replay: `GET /v1/messages/{id}/events` read to its end.
async fn replayed_text(app: &TestApp, user: &TestUser, message: &str) -> (Vec<String>, String) {
    let response = app
        .request(Method::GET, &user.key, &format!("/v1/messages/{message}/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET events");
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the replay of an ended answer ends")
        .expect("reading the stream");
    let mut names = Vec::new();
    let mut text = String::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        let Some(name) = name else { continue };
        if name == "delta" {
            let delta: Value = serde_json::from_str(&data).expect("delta data is JSON");
            text.push_str(delta["text"].as_str().expect("delta text"));
        }
        if names.last() != Some(&name) || name != "delta" {
            names.push(name);
        }
    }
    (names, text)
}

#[sqlx::test(migrations = false)]
async fn with_replay_paused_just_written_documents_conversations_and_messages_stay_in_view_over_http(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let primary = pool(options, connect).await;
    let mut replica = Replica::attach(&primary).await;
    let app = TestApp::builder(primary.clone())
        .read_replica(replica.pool.clone())
        .with_task("ingest worker", ragpipe_ingest_worker::spawn)
        .with_task("agent worker", ragpipe_agent_worker::spawn)
        .start()
        .await;
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    let doc = app
        .upload_one(
            &bob.key,
            "zeppelins.md",
            "# Airships\n\nThe Hindenburg zeppelin was filled with hydrogen and crossed the Atlantic in 1936.\n",
        )
        .await;
    let bob_doc = doc["id"].as_str().expect("id").to_owned();
    let ready = app.wait_for_document(&bob.key, &bob_doc, Duration::from_secs(60)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    replica.wait_replayed(&primary).await;
    assert_eq!(search_files(&app, &bob, "zeppelin hydrogen").await, ["zeppelins.md"]);

    replica.pause().await;

    // Stale but allowed, and so seen to come from the replica: what another process writes for
    // Bob (here a store that shares nothing with the API's) is not in his view yet, neither in
    // his lists nor in his searches.
    let elsewhere = Store::from_pool(primary.clone());
    let mut tx = elsewhere.user_tx(UserId(bob.id.0)).await.expect("tx");
    let other = conversations::create(&mut tx, Some("asked elsewhere"))
        .await
        .expect("conversation");
    documents::delete(&mut tx, DocumentId(bob_doc.parse().expect("uuid")))
        .await
        .expect("delete");
    tx.commit().await.expect("commit");
    assert_eq!(document_names(&app, &bob).await, ["zeppelins.md"]);
    assert!(conversation_ids(&app, &bob).await.is_empty());
    assert_eq!(
        search_files(&app, &bob, "zeppelin hydrogen").await,
        ["zeppelins.md"],
        "the paused replica still has the document another process deleted"
    );

    // Alice's own writes through the API never vanish while the replica lags: her upload is in
    // her list at once, and searchable once the worker has ingested it.
    let doc = app
        .upload_one(
            &alice.key,
            "batching.txt",
            "Embedding requests are batched by input count and by total tokens. A batch holds at most \
             sixty-four inputs and eight thousand tokens.",
        )
        .await;
    let alice_doc = doc["id"].as_str().expect("id").to_owned();
    for _ in 0..3 {
        assert_eq!(document_names(&app, &alice).await, ["batching.txt"]);
    }
    let ready = app
        .wait_for_document(&alice.key, &alice_doc, Duration::from_secs(60))
        .await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(
        search_files(&app, &alice, "batched sixty-four inputs").await,
        ["batching.txt"]
    );

    // Her conversation, her question and its answer: in her lists and in the answer's replay.
    let (status, conversation) = send(&app, &alice, Method::POST, "/v1/conversations", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{conversation}");
    let conversation = conversation["id"].as_str().expect("id").to_owned();
    assert_eq!(
        conversation_ids(&app, &alice).await,
        std::slice::from_ref(&conversation)
    );
    let (status, asked) = send(
        &app,
        &alice,
        Method::POST,
        &format!("/v1/conversations/{conversation}/messages"),
        Some(json!({"content": "How are embedding requests batched?"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let answer = asked["assistant_message"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the answer's id in {asked}"))
        .to_owned();
    let (status, page) = send(
        &app,
        &alice,
        Method::GET,
        &format!("/v1/conversations/{conversation}/messages"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let roles: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["user", "assistant"], "{page}");
    let (events, text) = replayed_text(&app, &alice, &answer).await;
    assert_eq!(events.last().map(String::as_str), Some("done"), "{events:?}");
    assert!(!text.is_empty(), "the answer has text");
    let (status, message) = send(&app, &alice, Method::GET, &format!("/v1/messages/{answer}"), None).await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["status"], "complete", "{message}");
    assert_eq!(message["content"], text.as_str(), "the replay is the whole answer");

    // Bob still reads the paused replica throughout.
    assert!(conversation_ids(&app, &bob).await.is_empty());

    // Bob asks through another API process (no read replica, no workers); this one's worker
    // answers. The answer's stream, opened here, is complete although the replica has neither the
    // question nor the answer: a replay the replica cannot serve is read from the primary.
    let other_api = TestApp::builder(primary.clone()).start().await;
    let (status, asked) = send(
        &other_api,
        &bob,
        Method::POST,
        &format!("/v1/conversations/{}/messages", other.id),
        Some(json!({"content": "Which gas filled the zeppelin?"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let bobs_answer = asked["assistant_message"]["id"].as_str().expect("answer id").to_owned();
    let (bobs_events, bobs_text) = replayed_text(&app, &bob, &bobs_answer).await;
    assert_eq!(
        bobs_events.first().map(String::as_str),
        Some("message"),
        "{bobs_events:?}"
    );
    assert_eq!(bobs_events.last().map(String::as_str), Some("done"), "{bobs_events:?}");
    let (status, message) = send(&app, &bob, Method::GET, &format!("/v1/messages/{bobs_answer}"), None).await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["content"], bobs_text.as_str(), "the stream is the whole answer");
    other_api.shutdown().await;

    replica.resume().await;
    replica.wait_replayed(&primary).await;
    assert_eq!(conversation_ids(&app, &bob).await, [other.id.to_string()]);
    assert!(document_names(&app, &bob).await.is_empty());
    assert!(search_files(&app, &bob, "zeppelin hydrogen").await.is_empty());

    // An ended answer is replayed from the replica: with replay paused again, a change made on
    // the primary behind the application's back (an ended answer never changes otherwise) is not
    // in the replay, which is the replica's copy.
    replica.pause().await;
    sqlx::query("UPDATE copilot_messages SET content = content || ' (changed on the primary)' WHERE id = $1")
        .bind(answer.parse::<uuid::Uuid>().expect("uuid"))
        .execute(&primary)
        .await
        .expect("changing the answer on the primary");
    let (_, replayed) = replayed_text(&app, &alice, &answer).await;
    assert_eq!(replayed, text, "the ended answer's replay came from the replica");
    replica.resume().await;

    app.shutdown().await;
}

/// `RAGPIPE_READ_DATABASE_URL` as the processes read it: through `Config` and `Store::connect`.
#[sqlx::test(migrations = false)]
async fn the_configured_read_database_url_serves_reads_and_an_unreachable_one_falls_back_to_the_primary(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let primary = pool(options, connect).await;
    let replica = Replica::attach(&primary).await;
    let url = ragpipe_tests::database_url(&primary);
    let mut config = ragpipe_core::Config::defaults();
    config.database_url = url.clone();
    let store = Store::connect(&config).await.expect("connect");
    store.migrate(&config.embedding).await.expect("migrate");
    let user = UserId::new();
    replica.wait_replayed(&primary).await;

    config.read_database_url = Some(ragpipe_tests::database_url(&replica.pool));
    let store = Store::connect(&config).await.expect("connect with a read replica");
    assert!(store.has_read_replica());
    let mut tx = store.read_tx(user).await.expect("read tx");
    assert!(tx.on_replica(), "the configured replica serves the read");
    assert!(server_facts(&mut tx).await.0, "pg_is_in_recovery()");
    tx.rollback().await.expect("rollback");

    // Nothing listens on port 1: the read runs on the primary, without waiting long.
    config.read_database_url = Some("postgres://postgres@127.0.0.1:1/ragpipe".into());
    let store = Store::connect(&config)
        .await
        .expect("connect with an unreachable read replica");
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (on_replica, names) = listed_names(&store, user).await;
        assert!(!on_replica && names.is_empty());
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A read URL that is not a standby (here the primary itself) is not trusted as one.
    config.read_database_url = Some(url);
    let store = Store::connect(&config).await.expect("connect");
    let (on_replica, _) = listed_names(&store, user).await;
    assert!(
        !on_replica,
        "a server that is not in recovery does not serve replica reads"
    );
}
