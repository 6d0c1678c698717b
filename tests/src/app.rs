//! `TestApp`: the real API router on a random local port, over a fresh database.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) {
//! use ragpipe_tests::app::{TestApp, UploadFile};
//! let app = TestApp::spawn(pool).await;
//! let alice = app.create_user("alice@example.com").await;
//! let (status, body) = app.upload_json(&alice.key, vec![UploadFile::new("a.txt", b"hello".to_vec())]).await;
//! # }
//! ```
//!
//! The operations endpoints (`/metrics`, `/readyz` with details) are served on a second port,
//! as `ragpipe serve` serves them on `RAGPIPE_OPS_LISTEN`: [`TestApp::ops_url`].
//!
//! Background tasks (in-process ingest workers, for instance) plug in through
//! [`TestAppBuilder::with_task`]: each is started after the schema is migrated and before the
//! server accepts requests, gets the same store and configuration as the API, and a
//! cancellation token that [`TestApp::shutdown`] (or dropping the app) cancels.

use ragpipe_api::AppState;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, api_keys, users};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`TestApp::shutdown`] waits for the server and each task to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

type StartTask = Box<dyn FnOnce(Store, Arc<Config>, CancellationToken) -> JoinHandle<String> + Send>;

/// A running API over a test database.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// The operations listener's `http://127.0.0.1:PORT` (`/metrics`, `/healthz`, `/readyz`).
    pub ops_base_url: String,
    /// A client with a 60 s timeout.
    pub client: reqwest::Client,
    /// The store the API uses (the `#[sqlx::test]` pool).
    pub store: Store,
    /// The configuration the API (and every task) was started with.
    pub config: Arc<Config>,
    pool: PgPool,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    ops_server: Option<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<(String, JoinHandle<String>)>,
}

/// Configures a [`TestApp`] before it starts.
pub struct TestAppBuilder {
    pool: PgPool,
    read_replica: Option<PgPool>,
    config: Config,
    tasks: Vec<(String, StartTask)>,
}

/// A user with an API key.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user's id.
    pub id: UserId,
    /// Their email.
    pub email: String,
    /// A bearer API key of theirs.
    pub key: String,
}

/// One `file` part of an upload, with its optional `metadata` part.
#[derive(Debug, Clone)]
pub struct UploadFile {
    /// File name sent with the part.
    pub filename: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Sent as the following `metadata` part, when set.
    pub metadata: Option<Value>,
}

impl UploadFile {
    /// A file without metadata.
    pub fn new(filename: &str, bytes: impl Into<Vec<u8>>) -> UploadFile {
        UploadFile {
            filename: filename.to_owned(),
            bytes: bytes.into(),
            metadata: None,
        }
    }

    /// The same file with a `metadata` part.
    pub fn metadata(mut self, metadata: Value) -> UploadFile {
        self.metadata = Some(metadata);
        self
    }
}

impl TestAppBuilder {
    /// Changes the configuration (limits, worker settings, model endpoints...) before start.
    pub fn config(mut self, edit: impl FnOnce(&mut Config)) -> TestAppBuilder {
        edit(&mut self.config);
        self
    }

    /// Serves searches, lists and answer replays from `replica`, a pool on a streaming replica of
    /// the test database (as `RAGPIPE_READ_DATABASE_URL` does; see [`crate::replica`]).
    pub fn read_replica(mut self, replica: PgPool) -> TestAppBuilder {
        self.read_replica = Some(replica);
        self
    }

    /// Adds a background task, started with the app's store, configuration and shutdown
    /// token; for instance in-process ingest workers:
    ///
    /// ```ignore
    /// TestApp::builder(pool)
    ///     .with_task("ingest worker", |store, config, shutdown| {
    ///         ragpipe_ingest_worker::spawn(store, config, shutdown)
    ///     })
    /// ```
    ///
    /// Whatever the task returns is printed when the app shuts down; a panic in it fails
    /// [`TestApp::shutdown`].
    pub fn with_task<R, F>(mut self, name: &str, start: F) -> TestAppBuilder
    where
        R: std::fmt::Debug + Send + 'static,
        F: FnOnce(Store, Arc<Config>, CancellationToken) -> JoinHandle<R> + Send + 'static,
    {
        let start: StartTask = Box::new(move |store, config, token| {
            let handle = start(store, config, token);
            tokio::spawn(async move {
                match handle.await {
                    Ok(r) => format!("{r:?}"),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => format!("cancelled: {e}"),
                }
            })
        });
        self.tasks.push((name.to_owned(), start));
        self
    }

    /// Migrates the database, starts the tasks, then serves the router on 127.0.0.1:0.
    pub async fn start(self) -> TestApp {
        let pool = self.pool.clone();
        let store = match self.read_replica {
            Some(replica) => Store::from_pool(self.pool).with_read_replica(replica),
            None => Store::from_pool(self.pool),
        };
        store
            .migrate(&self.config.embedding)
            .await
            .expect("migrating the test database");
        let config = Arc::new(self.config);
        let shutdown = CancellationToken::new();
        let tasks = self
            .tasks
            .into_iter()
            .map(|(name, start)| (name, start(store.clone(), config.clone(), shutdown.child_token())))
            .collect();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let addr = listener.local_addr().expect("the listener's address");
        let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port for the operations endpoints");
        let ops_addr = ops_listener.local_addr().expect("the ops listener's address");
        let state = AppState::new(store.clone(), config.clone()).expect("application state");
        let ops_server = tokio::spawn(ragpipe_api::serve_ops(
            state.clone(),
            ops_listener,
            shutdown.clone().cancelled_owned(),
        ));
        let server = tokio::spawn(ragpipe_api::serve(state, listener, shutdown.clone().cancelled_owned()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the HTTP client");
        TestApp {
            base_url: format!("http://{addr}"),
            ops_base_url: format!("http://{ops_addr}"),
            client,
            store,
            pool,
            config,
            shutdown,
            server: Some(server),
            ops_server: Some(ops_server),
            tasks,
        }
    }
}

impl TestApp {
    /// The API with default configuration and no background tasks.
    pub async fn spawn(pool: PgPool) -> TestApp {
        TestApp::builder(pool).start().await
    }

    /// A builder over `pool` (from `#[sqlx::test(migrations = false)]`) with
    /// `Config::defaults()` and the hashed embedder pinned.
    pub fn builder(pool: PgPool) -> TestAppBuilder {
        let mut config = Config::defaults();
        // Fast and deterministic; the tests that need a semantic model say so.
        config.embedding.provider = Some("hashed".into());
        TestAppBuilder {
            pool,
            read_replica: None,
            config,
            tasks: Vec::new(),
        }
    }

    /// The pool, for assertions straight on the database (as a superuser: RLS does not apply).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `ops_base_url` + `path`.
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.ops_base_url)
    }

    /// Creates a user and an API key for them.
    pub async fn create_user(&self, email: &str) -> TestUser {
        let user = users::create(
            &self.store,
            &users::NewUser {
                email: email.to_owned(),
                ..Default::default()
            },
        )
        .await
        .expect("creating a user");
        let key = api_keys::create(&self.store, UserId(user.id), Some("test"))
            .await
            .expect("creating an API key");
        TestUser {
            id: UserId(user.id),
            email: user.email,
            key: key.key,
        }
    }

    /// A request to `path` with `key` as the bearer key.
    pub fn request(&self, method: reqwest::Method, key: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// `GET path` as `key`, returning the status and the JSON body (`Value::Null` when empty).
    pub async fn get_json(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::GET, key, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        json_of(response).await
    }

    /// `DELETE path` as `key`, returning the status and the JSON body (`Value::Null` when empty).
    pub async fn delete(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::DELETE, key, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        json_of(response).await
    }

    /// The multipart body of an upload: each file as a `file` part, followed by its
    /// `metadata` part when it has one.
    pub fn upload_form(files: Vec<UploadFile>) -> reqwest::multipart::Form {
        let mut form = reqwest::multipart::Form::new();
        for file in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(file.bytes).file_name(file.filename),
            );
            if let Some(metadata) = file.metadata {
                form = form.text("metadata", metadata.to_string());
            }
        }
        form
    }

    /// `POST /v1/documents` as `key`.
    pub async fn upload(&self, key: &str, files: Vec<UploadFile>) -> reqwest::Response {
        self.request(reqwest::Method::POST, key, "/v1/documents")
            .multipart(Self::upload_form(files))
            .send()
            .await
            .expect("POST /v1/documents")
    }

    /// `POST /v1/documents` as `key`, returning the status and the JSON body.
    pub async fn upload_json(&self, key: &str, files: Vec<UploadFile>) -> (StatusCode, Value) {
        json_of(self.upload(key, files).await).await
    }

    /// Uploads one file, asserts it was stored (201 or 200) and returns its document.
    pub async fn upload_one(&self, key: &str, filename: &str, bytes: impl Into<Vec<u8>>) -> Value {
        let (status, body) = self.upload_json(key, vec![UploadFile::new(filename, bytes)]).await;
        assert!(status.is_success(), "uploading {filename}: {status} {body}");
        body["documents"][0].clone()
    }

    /// Polls `GET /v1/documents/{id}` until the document is `ready` or `failed`, and returns it.
    /// Panics after `timeout`.
    pub async fn wait_for_document(&self, key: &str, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, doc) = self.get_json(key, &format!("/v1/documents/{id}")).await;
            assert_eq!(status, StatusCode::OK, "reading document {id}: {doc}");
            if matches!(doc["status"].as_str(), Some("ready" | "failed")) {
                return doc;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "document {id} not done after {timeout:?}: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` on the operations listener (no key needed), as text.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .client
            .get(self.ops_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("reading /metrics")
    }

    /// Stops the server (requests in flight finish) and the tasks, waiting for each. Panics if
    /// one of them panicked or does not stop in time.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for server in [self.server.take(), self.ops_server.take()].into_iter().flatten() {
            tokio::time::timeout(SHUTDOWN_TIMEOUT, server)
                .await
                .expect("the server stops in time")
                .expect("the server task does not panic")
                .expect("the server ends without an I/O error");
        }
        for (name, task) in self.tasks.drain(..) {
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
                Ok(Ok(outcome)) => eprintln!("{name} stopped: {outcome}"),
                Ok(Err(e)) => panic!("{name} failed: {e}"),
                Err(_) => panic!("{name} did not stop within {SHUTDOWN_TIMEOUT:?}"),
            }
        }
    }
}

impl Drop for TestApp {
    /// A test that ends without [`TestApp::shutdown`] still stops the server and the tasks.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The status and JSON body of a response (`Value::Null` for an empty body). Panics, with the
/// body, when it is not JSON.
pub async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("reading the response body");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// The `error.code` of an error body, or "" when there is none.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}
