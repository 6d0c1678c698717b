//! `ragpipe doctor`: is everything this process needs there? Each check prints one line; any
//! failure exits non-zero with the reason.

use ragpipe_core::Config;
use ragpipe_core::config::ModelEndpoint;
use ragpipe_store::Store;
use ragpipe_store::migrate::Pgvector;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

pub async fn run(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let mut db = config.clone();
    db.database_max_connections = 2;
    match tokio::time::timeout(Duration::from_secs(15), Store::connect(&db)).await {
        Err(_) => checks.push(fail(
            "database",
            format!(
                "cannot reach {}: timed out",
                ragpipe_store::redact(&config.database_url)
            ),
        )),
        Ok(Err(e)) => checks.push(fail("database", format!("cannot reach the database: {e}"))),
        Ok(Ok(store)) => {
            checks.push(ok("database", ragpipe_store::redact(&config.database_url)));
            checks.push(pgvector(&store).await);
            if let Some(status) = store.read_replica_status().await {
                checks.push(read_replica(config, status));
            }
            checks.push(match store.pending_migrations().await {
                Ok(p) if p.is_empty() => ok("migrations", "current".into()),
                Ok(p) => fail(
                    "migrations",
                    format!("{} pending (first: {}): run `ragpipe migrate`", p.len(), p[0]),
                ),
                Err(e) => fail("migrations", e.to_string()),
            });
        }
    }
    checks.push(match config.embedding_provider() {
        ragpipe_core::config::EmbeddingProvider::Local => local_model(&config.embedding),
        ragpipe_core::config::EmbeddingProvider::Hashed => ok(
            "embedding model",
            format!("offline hashed embedder ({})", config.embedding.model),
        ),
        ragpipe_core::config::EmbeddingProvider::Api => {
            endpoint("embedding model", &config.embedding, "offline hashed embedder").await
        }
    });
    checks.push(endpoint("chat model", &config.chat, "offline extractive responder").await);

    let healthy = checks.iter().all(|c| c.ok);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": healthy, "checks": checks }))?
        );
    } else {
        for c in &checks {
            println!("{} {:<16} {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
        }
    }
    if healthy {
        Ok(ExitCode::SUCCESS)
    } else {
        let first = checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .unwrap_or_default();
        eprintln!("error: {first}");
        Ok(ExitCode::FAILURE)
    }
}

fn ok(name: &'static str, detail: String) -> Check {
    Check { name, ok: true, detail }
}

fn fail(name: &'static str, detail: String) -> Check {
    Check {
        name,
        ok: false,
        detail,
    }
}

/// The read replica (`RAGPIPE_READ_DATABASE_URL`): a standby, and how far behind.
fn read_replica(config: &Config, status: Result<ragpipe_store::ReplicaStatus, ragpipe_store::StoreError>) -> Check {
    let url = config
        .read_database_url
        .as_deref()
        .map(ragpipe_store::redact)
        .unwrap_or_default();
    match status {
        Ok(s) => match s.behind_bytes() {
            Some(behind) if s.in_recovery => ok(
                "read replica",
                format!("{url}: a standby, {behind} bytes of WAL behind the primary"),
            ),
            _ => fail(
                "read replica",
                format!("{url} is not a standby in recovery, so reads stay on the primary"),
            ),
        },
        Err(e) => fail("read replica", format!("{url}: {e}; reads go to the primary")),
    }
}

async fn pgvector(store: &Store) -> Check {
    match store.pgvector().await {
        Ok(Pgvector::Created(version)) => ok("pgvector", format!("version {version}")),
        Ok(Pgvector::Available(v)) => fail(
            "pgvector",
            format!("pgvector {v} is available but not created in this database: run `ragpipe migrate`"),
        ),
        Ok(Pgvector::Missing) => fail(
            "pgvector",
            "the pgvector extension is not installed on this server: run scripts/setup or install pgvector".into(),
        ),
        Err(e) => fail("pgvector", format!("checking for pgvector: {e}")),
    }
}

/// The local embedding model: its files present in its directory (loading it is left to the
/// commands that embed).
fn local_model(endpoint: &ModelEndpoint) -> Check {
    match endpoint.local_dir.as_deref() {
        Some(dir) if ragpipe_core::config::local_model_files_present(dir) => ok(
            "embedding model",
            format!("local model {} in {}", endpoint.model, dir.display()),
        ),
        Some(dir) => fail(
            "embedding model",
            format!(
                "no config.json, tokenizer.json and model.safetensors in {}: run scripts/setup or set RAGPIPE_EMBEDDING_LOCAL_DIR",
                dir.display()
            ),
        ),
        None => fail(
            "embedding model",
            "the local provider has no model directory: run scripts/setup or set RAGPIPE_EMBEDDING_LOCAL_DIR".into(),
        ),
    }
}

async fn endpoint(name: &'static str, endpoint: &ModelEndpoint, offline: &str) -> Check {
    let Some(base) = endpoint.base_url.as_deref() else {
        return ok(name, format!("{offline} ({})", endpoint.model));
    };
    let url = format!("{}/models", base.trim_end_matches('/'));
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => return fail(name, format!("building an HTTP client: {e}")),
    };
    let mut request = client.get(&url);
    if let Some(key) = &endpoint.api_key {
        request = request.bearer_auth(key);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => ok(name, format!("{} at {base}", endpoint.model)),
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
            fail(name, format!("{base} rejected the API key ({})", r.status()))
        }
        // Some servers do not list models; any HTTP answer proves the endpoint is reachable.
        Ok(r) => ok(
            name,
            format!("{} at {base} (GET /models answered {})", endpoint.model, r.status()),
        ),
        Err(e) => fail(name, format!("cannot reach {base}: {e}")),
    }
}
