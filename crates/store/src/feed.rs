//! Change signals for assistant messages, from PostgreSQL `LISTEN`.
//!
//! Writers (the agent worker, the cancel route) announce every change of an assistant message
//! on [`MESSAGE_EVENTS_CHANNEL`] in the transaction that makes it. A [`MessageFeed`] is one
//! listening connection per process and database, fanning the signals out to subscribers by
//! message id; a subscriber re-reads the row when signalled. The notification carries no text
//! (anyone who may `LISTEN` could read it, past row-level security), so the row stays the
//! source of truth and the feed works whichever process wrote the change. A writer in the same
//! process also hands its committed text to the feed ([`MessageFeed::wrote`]), and readers here
//! take it from memory instead of reading the row again: while an answer streams, a reader in
//! the writer's process reads the row only when the feed reconnected, a timer ran out, or the
//! status changed.
//!
//! Signals can be lost (the listening connection drops and reconnects); subscribers are woken
//! on every reconnection and should also re-read on a timer as a safety net. The connection is
//! re-established after any failure, with capped exponential backoff and jitter, for as long as
//! the feed lives. Its liveness is a [`Component`] (`message_feed`): the feed notifies itself on
//! [`FEED_PING_CHANNEL`] every [`FEED_HEARTBEAT`] and beats when the ping comes back through
//! the listening connection, so a connection that is up but deaf shows as stale.

use crate::conversations::{MESSAGE_EVENTS_CHANNEL, MessageEvent};
use crate::liveness::Component;
use crate::retry::Backoff;
use crate::{Store, StoreError};
use ragpipe_core::{MessageId, MessageStatus};
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// What the latest signal for a message said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// Signals received for the message since the subscription began.
    pub seq: u64,
    /// Bytes of content the writer had written.
    pub bytes: i64,
    /// The message's status then (none before the first signal).
    pub status: Option<MessageStatus>,
    /// Text a writer in this process committed ([`MessageFeed::wrote`]), if any: the
    /// content from byte `from`, so that readers here need not read the row for it.
    pub written: Option<WrittenText>,
    /// How many times the feed may have missed signals (its connection was lost) since the
    /// subscription began: a reader that sees this change must read the row.
    pub resyncs: u64,
    /// Whether the message's writer is in this process ([`MessageFeed::subscribe_writer`]):
    /// then it hands over each write's text right after its commit, and a notification of text
    /// not handed over yet is followed by the handover (or by this turning false).
    pub writer_here: bool,
}

/// Committed text of a message, as its writer in this process wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenText {
    /// Where `text` starts in the message's content, in bytes.
    pub from: i64,
    /// The content from `from`, as far as this process wrote it.
    pub text: Arc<str>,
}

impl WrittenText {
    /// Where it ends in the content, in bytes.
    pub fn end(&self) -> i64 {
        self.from + self.text.len() as i64
    }

    /// The content from byte `offset` to [`WrittenText::end`], when it holds that offset (on a
    /// character boundary).
    pub fn after(&self, offset: i64) -> Option<&str> {
        let start = usize::try_from(offset.checked_sub(self.from)?).ok()?;
        self.text.get(start..)
    }
}

/// Most bytes of written text a subscription keeps; past it the text restarts at the latest
/// write, and a reader further behind reads the row.
const WRITTEN_TEXT_LIMIT: usize = 64 * 1024;

type Slots = Arc<Mutex<HashMap<Uuid, Slot>>>;

struct Slot {
    sender: watch::Sender<Signal>,
    subscribers: usize,
    /// Subscriptions of writers ([`MessageFeed::subscribe_writer`]).
    writers: usize,
}

fn lock(slots: &Mutex<HashMap<Uuid, Slot>>) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
    // A panic while holding the lock leaves the map consistent (each operation is one call).
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The channel a feed pings itself on (a channel of its own, so that writers' signals and
/// older processes listening on [`MESSAGE_EVENTS_CHANNEL`] never see the pings).
pub const FEED_PING_CHANNEL: &str = "ragpipe_feed_ping";

/// How often a feed pings itself; three missed pings make it stale.
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(2);

/// The feed's name as a supervised component.
pub const FEED_COMPONENT: &str = "message_feed";

struct FeedInner {
    slots: Slots,
    component: Arc<Component>,
    task: tokio::task::JoinHandle<()>,
    pinger: tokio::task::JoinHandle<()>,
}

impl Drop for FeedInner {
    fn drop(&mut self) {
        self.task.abort();
        self.pinger.abort();
        self.component.stopped();
    }
}

/// One listening connection's signals, shared by every subscriber in the process. Cheap to
/// clone; the connection closes when the last clone and subscription are dropped.
#[derive(Clone)]
pub struct MessageFeed {
    inner: Arc<FeedInner>,
}

impl std::fmt::Debug for MessageFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageFeed")
            .field("subscribed", &lock(&self.inner.slots).len())
            .finish()
    }
}

/// Live feeds by database, so that the API and in-process workers share one connection.
static FEEDS: LazyLock<Mutex<HashMap<String, Weak<FeedInner>>>> = LazyLock::new(Default::default);
/// Serialises starting feeds, so that concurrent first callers start only one.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl MessageFeed {
    /// The process's feed for `store`'s database, started (and listening) if it was not.
    pub async fn shared(store: &Store) -> Result<MessageFeed, StoreError> {
        let key = store.database();
        let existing = |key: &str| {
            FEEDS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .and_then(Weak::upgrade)
        };
        if let Some(inner) = existing(&key) {
            return Ok(MessageFeed { inner });
        }
        let _starting = STARTING.lock().await;
        if let Some(inner) = existing(&key) {
            return Ok(MessageFeed { inner });
        }
        let feed = MessageFeed::start(store).await?;
        let mut feeds = FEEDS.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.retain(|_, w| w.strong_count() > 0);
        feeds.insert(key, Arc::downgrade(&feed.inner));
        Ok(feed)
    }

    /// A feed of its own (not shared), listening once this returns.
    pub async fn start(store: &Store) -> Result<MessageFeed, StoreError> {
        let slots: Slots = Arc::default();
        let component = Component::new(FEED_COMPONENT, None, FEED_HEARTBEAT);
        let ping = Uuid::new_v4().simple().to_string();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(listen(
            store.clone(),
            Arc::clone(&slots),
            Arc::clone(&component),
            ping.clone(),
            ready_tx,
        ));
        let pinger = tokio::spawn(pings(store.clone(), ping));
        let inner = Arc::new(FeedInner {
            slots,
            component,
            task,
            pinger,
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(MessageFeed { inner }),
            Ok(Err(source)) => Err(StoreError::Database {
                context: "listening for message changes",
                source,
            }),
            Err(_) => Err(StoreError::Config("the message feed stopped before it started".into())),
        }
    }

    /// The feed's liveness (state, heartbeat, reconnections), for the process's registry.
    pub fn component(&self) -> Arc<Component> {
        Arc::clone(&self.inner.component)
    }

    /// Tells this process's readers of `message` that its writer committed `text` at byte
    /// `from` of the content (call after the commit). Readers in other processes learn of it
    /// from the notification and read the row; readers here take the text from memory. Only
    /// messages someone here follows keep it.
    pub fn wrote(&self, message: MessageId, from: i64, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(slot) = lock(&self.inner.slots).get(&message.0) {
            slot.sender.send_modify(|s| {
                s.seq += 1;
                let written = match s.written.take() {
                    Some(w) if w.end() == from && w.text.len() + text.len() <= WRITTEN_TEXT_LIMIT => WrittenText {
                        from: w.from,
                        text: format!("{}{text}", w.text).into(),
                    },
                    _ => WrittenText {
                        from,
                        text: text.into(),
                    },
                };
                s.bytes = s.bytes.max(written.end());
                s.written = Some(written);
            });
        }
    }

    /// Signals for `message` from now on.
    pub fn subscribe(&self, message: MessageId) -> Subscription {
        self.subscribe_as(message, false)
    }

    /// Signals for `message`, for its writer, which hands over every write's text with
    /// [`MessageFeed::wrote`] until the subscription is dropped.
    pub fn subscribe_writer(&self, message: MessageId) -> Subscription {
        self.subscribe_as(message, true)
    }

    fn subscribe_as(&self, message: MessageId, writer: bool) -> Subscription {
        let mut slots = lock(&self.inner.slots);
        let slot = slots.entry(message.0).or_insert_with(|| Slot {
            sender: watch::channel(Signal::default()).0,
            subscribers: 0,
            writers: 0,
        });
        slot.subscribers += 1;
        if writer {
            slot.writers += 1;
            slot.sender.send_modify(|s| s.writer_here = true);
        }
        let receiver = slot.sender.subscribe();
        Subscription {
            receiver,
            message: message.0,
            writer,
            feed: self.clone(),
        }
    }
}

/// Signals for one message. Dropping it unsubscribes.
pub struct Subscription {
    receiver: watch::Receiver<Signal>,
    message: Uuid,
    writer: bool,
    feed: MessageFeed,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("message", &self.message)
            .field("latest", &*self.receiver.borrow())
            .finish()
    }
}

impl Subscription {
    /// Waits for the next signal, at most `timeout`; true when one came. Several signals that
    /// arrived since the last call count as one.
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.receiver.changed()).await, Ok(Ok(())))
    }

    /// The latest signal.
    pub fn latest(&self) -> Signal {
        self.receiver.borrow().clone()
    }

    /// The latest signal's status.
    pub fn status(&self) -> Option<MessageStatus> {
        self.receiver.borrow().status
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut slots = lock(&self.feed.inner.slots);
        if let Some(slot) = slots.get_mut(&self.message) {
            slot.subscribers -= 1;
            if self.writer {
                slot.writers -= 1;
                if slot.writers == 0 {
                    // Readers waiting for a handover read the row instead.
                    slot.sender.send_modify(|s| {
                        s.seq += 1;
                        s.writer_here = false;
                    });
                }
            }
            if slot.subscribers == 0 {
                slots.remove(&self.message);
            }
        }
    }
}

fn dispatch(slots: &Slots, payload: &str) {
    let Some(MessageEvent {
        message_id: id,
        bytes,
        status,
    }) = MessageEvent::parse(payload)
    else {
        tracing::warn!(payload, "unreadable message change signal");
        return;
    };
    if let Some(slot) = lock(slots).get(&id) {
        slot.sender.send_modify(|s| {
            s.seq += 1;
            s.bytes = s.bytes.max(bytes);
            s.status = Some(status);
        });
    }
}

/// Wakes every subscriber (after a reconnection, signals may have been missed).
fn wake_all(slots: &Slots) {
    for slot in lock(slots).values() {
        slot.sender.send_modify(|s| {
            s.seq += 1;
            s.resyncs += 1;
        });
    }
}

/// Notifies [`FEED_PING_CHANNEL`] with `ping` (this feed's id) every [`FEED_HEARTBEAT`]. A
/// failed ping is not retried: the missing heartbeat is the report.
async fn pings(store: Store, ping: String) {
    let mut tick = tokio::time::interval(FEED_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query!("SELECT pg_notify($1, $2)", FEED_PING_CHANNEL, &ping,)
            .execute(&store.pool)
            .await
        {
            if matches!(e, sqlx::Error::PoolClosed) {
                return;
            }
            tracing::debug!(error = %e, "message feed: ping failed");
        }
    }
}

async fn listen(
    store: Store,
    slots: Slots,
    component: Arc<Component>,
    ping: String,
    ready: oneshot::Sender<Result<(), sqlx::Error>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        component.starting();
        let connected = async {
            let mut listener = PgListener::connect_with(&store.pool).await?;
            listener.listen_all([MESSAGE_EVENTS_CHANNEL, FEED_PING_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    component.dead(&e);
                    let _ = ready.send(Err(e));
                    return;
                }
                if matches!(e, sqlx::Error::PoolClosed) {
                    component.stopped();
                    return;
                }
                component.restarting(&e);
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "message feed: reconnecting");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        component.heartbeat();
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => wake_all(&slots),
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == FEED_PING_CHANNEL => {
                    if n.payload() == ping {
                        component.heartbeat();
                    }
                }
                Ok(Some(n)) => dispatch(&slots, n.payload()),
                // The connection was lost and has been re-established: signals may be missing.
                Ok(None) => {
                    component.restarting(&"the listening connection was lost");
                    wake_all(&slots);
                }
                Err(sqlx::Error::PoolClosed) => {
                    component.stopped();
                    return;
                }
                Err(e) => {
                    // A terminated backend (57P01) lands here: start over on a new connection,
                    // and wake every follower, which re-reads its row, so no change is lost.
                    tracing::warn!(error = %e, "message feed: listening failed");
                    component.restarting(&e);
                    wake_all(&slots);
                    break;
                }
            }
        }
    }
}
