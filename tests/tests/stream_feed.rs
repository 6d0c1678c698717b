//! A reader of a streaming answer in the writer's own process takes the committed text from
//! memory ([`MessageFeed::wrote`]) instead of reading the message row after every write, and
//! reads the row whenever memory cannot be trusted to be whole: in another process (another
//! feed), when the status changes, and after the feed lost its connection.
//!
//! Each test changes the row's text behind the application's back (same length, so every
//! offset stays valid): a reader that shows the changed text read the row; one that shows the
//! written text did not.

use ragpipe_agent::follow::Next;
use ragpipe_agent::{AnswerEvent, Cursor, Follower, MessageFeed};
use ragpipe_core::{ConversationId, MessageId, UserId};
use ragpipe_store::conversations::{self, AskSettings, Ending, Written};
use ragpipe_store::{Store, users};
use sqlx::PgPool;
use std::time::Duration;

struct Answer {
    store: Store,
    pool: PgPool,
    user: UserId,
    request: uuid::Uuid,
    message: MessageId,
}

/// A user, a question, and its answer streaming with its (empty) context recorded.
async fn streaming_answer(pool: PgPool) -> Answer {
    let store = Store::from_pool(pool.clone());
    store
        .migrate(&ragpipe_core::Config::defaults().embedding)
        .await
        .expect("migrate");
    let user = users::create(
        &store,
        &users::NewUser {
            email: "reader@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .expect("user")
    .id;
    let user = UserId(user);
    let mut tx = store.user_tx(user).await.expect("tx");
    let conversation = conversations::create(&mut tx, None).await.expect("conversation");
    let asked = conversations::ask(
        &mut tx,
        ConversationId(conversation.id),
        "Where does the text come from?",
        &AskSettings {
            model: "test-model",
            retrieval_mode: None,
            k: None,
            max_attempts: 3,
        },
    )
    .await
    .expect("ask");
    conversations::merge_results(&mut tx, asked.request_id, &serde_json::json!({"context": []}), 0.5)
        .await
        .expect("context");
    tx.commit().await.expect("commit");
    Answer {
        store,
        pool,
        user,
        request: asked.request_id,
        message: MessageId(asked.assistant_message.id),
    }
}

impl Answer {
    /// Appends `text` as the worker does (committed, then handed to `feed` if given), then
    /// changes the row's copy of it behind the application's back to as many `#`.
    async fn write(&self, from: i64, text: &str, feed: Option<&MessageFeed>) {
        let mut tx = self.store.user_tx(self.user).await.expect("tx");
        let written = conversations::append(&mut tx, self.message, from, text)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        assert_eq!(
            written,
            Written::Done {
                bytes: from + text.len() as i64
            }
        );
        sqlx::query("UPDATE copilot_messages SET content = overlay(content placing $2 from $3::int + 1) WHERE id = $1")
            .bind(self.message.0)
            .bind("#".repeat(text.len()))
            .bind(from as i32)
            .execute(&self.pool)
            .await
            .expect("changing the row behind the application's back");
        if let Some(feed) = feed {
            feed.wrote(self.message, from, text);
        }
    }

    async fn complete(&self, at: i64) {
        let mut tx = self.store.user_tx(self.user).await.expect("tx");
        let ending = Ending {
            request: self.request,
            message: self.message,
            expected_bytes: at,
            tail: "",
            model: "test-model",
            prompt_tokens: 10,
            completion_tokens: 2,
            cost: 0.0,
            results: serde_json::json!({"finish_reason": "stop"}),
        };
        let written = conversations::complete(&mut tx, &ending, &serde_json::json!([]))
            .await
            .expect("complete");
        tx.commit().await.expect("commit");
        assert_eq!(written, Written::Done { bytes: at });
    }
}

/// The next event's name and, for a delta, its text.
async fn next(follower: &mut Follower) -> (String, String) {
    match tokio::time::timeout(Duration::from_secs(10), follower.next(Duration::from_secs(10)))
        .await
        .expect("an event within 10 s")
        .expect("following")
    {
        Next::Event(AnswerEvent::Delta { text, .. }) => ("delta".into(), text),
        Next::Event(e) => (e.name().into(), String::new()),
        other => (format!("{other:?}"), String::new()),
    }
}

async fn open(a: &Answer, feed: &MessageFeed) -> Follower {
    let mut follower = Follower::open(&a.store, feed, a.user, a.message, Cursor::Start)
        .await
        .expect("follow");
    assert_eq!(next(&mut follower).await.0, "message");
    assert_eq!(next(&mut follower).await.0, "context");
    follower
}

#[sqlx::test(migrations = false)]
async fn a_reader_beside_the_writer_sends_the_written_text_from_memory_and_reads_the_row_for_the_end(pool: PgPool) {
    let a = streaming_answer(pool).await;
    let feed = MessageFeed::start(&a.store).await.expect("feed");
    let mut follower = open(&a, &feed).await;

    a.write(0, "Hello", Some(&feed)).await;
    assert_eq!(next(&mut follower).await, ("delta".into(), "Hello".into()));
    a.write(5, ", wörld", Some(&feed)).await;
    assert_eq!(next(&mut follower).await, ("delta".into(), ", wörld".into()));

    // The end is read from the row: its usage and status are not in memory.
    a.complete(13).await;
    assert_eq!(next(&mut follower).await.0, "usage");
    assert_eq!(next(&mut follower).await.0, "done");
    // A reader that joins now reads the row, changed text and all.
    let mut late = Follower::open(&a.store, &feed, a.user, a.message, Cursor::Start)
        .await
        .expect("follow");
    let mut events = Vec::new();
    loop {
        match next(&mut late).await {
            (name, _) if name == "End" => break,
            e => events.push(e),
        }
    }
    assert!(events.contains(&("delta".into(), "#############".into())), "{events:?}");
}

#[sqlx::test(migrations = false)]
async fn a_reader_in_another_process_reads_the_row_after_every_signal(pool: PgPool) {
    let a = streaming_answer(pool).await;
    let writers = MessageFeed::start(&a.store).await.expect("the writer's feed");
    // Another process's feed: the notification reaches it, the written text does not.
    let elsewhere = MessageFeed::start(&a.store).await.expect("another feed");
    let mut follower = open(&a, &elsewhere).await;
    let _writer_side = writers.subscribe(a.message);

    a.write(0, "Hello", Some(&writers)).await;
    assert_eq!(next(&mut follower).await, ("delta".into(), "#####".into()));
}

#[sqlx::test(migrations = false)]
async fn after_the_feed_loses_its_connection_the_reader_reads_the_row(pool: PgPool) {
    let a = streaming_answer(pool).await;
    let feed = MessageFeed::start(&a.store).await.expect("feed");
    let mut follower = open(&a, &feed).await;
    a.write(0, "Hello", Some(&feed)).await;
    assert_eq!(next(&mut follower).await, ("delta".into(), "Hello".into()));

    // The listening connection is cut: signals may have been missed while it was down.
    let probe = feed.subscribe(a.message);
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&a.pool)
    .await
    .expect("terminating the listener");
    assert_eq!(cut, 1, "one listening connection");
    let reconnected = async {
        while probe.latest().resyncs == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reconnected)
        .await
        .expect("the feed reconnects");
    // Text written (and handed over) meanwhile is still sent, but from the row, which the
    // reader reads once it learns of the reconnection.
    a.write(5, " again", Some(&feed)).await;
    assert_eq!(next(&mut follower).await, ("delta".into(), "######".into()));
}

#[sqlx::test(migrations = false)]
async fn a_notification_ahead_of_the_handover_waits_for_it_while_the_writer_is_here(pool: PgPool) {
    let a = streaming_answer(pool).await;
    let feed = MessageFeed::start(&a.store).await.expect("feed");
    let mut follower = open(&a, &feed).await;
    let writer = feed.subscribe_writer(a.message);
    let notified = |bytes: i64| {
        let probe = feed.subscribe(a.message);
        async move {
            while probe.latest().bytes < bytes {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // The notification comes first; the text is handed over 200 ms later, and sent from memory.
    let waiting = notified(5);
    a.write(0, "Hello", None).await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("notified");
    let (event, ()) = tokio::join!(next(&mut follower), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        feed.wrote(a.message, 0, "Hello");
    });
    assert_eq!(event, ("delta".into(), "Hello".into()));

    // A writer that goes away without handing its text over leaves the readers to the row.
    let waiting = notified(11);
    a.write(5, " again", None).await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("notified");
    let (event, ()) = tokio::join!(next(&mut follower), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(writer);
    });
    assert_eq!(event, ("delta".into(), "######".into()));
}
