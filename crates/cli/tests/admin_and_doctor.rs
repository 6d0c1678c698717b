//! The `ragpipe` binary's basics, run as a user would run it, against a fresh database.

use ragpipe_tests::database_url;
use sqlx::PgPool;
use std::process::{Command, Output};

fn ragpipe(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RAGPIPE_EMBEDDING_BASE_URL")
        // The hashed embedder, pinned: with the local model installed it would be the default.
        .env("RAGPIPE_EMBEDDING_PROVIDER", "hashed")
        .env_remove("RAGPIPE_CHAT_BASE_URL")
        .env_remove("RAGPIPE_CONFIG")
        .env_remove("RAGPIPE_READ_DATABASE_URL")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run ragpipe")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[sqlx::test(migrations = false)]
async fn doctor_fails_clearly_until_migrated_then_passes(pool: PgPool) {
    let url = database_url(&pool);
    let before = ragpipe(&url, &["doctor"]);
    assert!(!before.status.success());
    let out = text(&before);
    assert!(
        out.contains("pgvector") && out.contains("not created in this database"),
        "{out}"
    );
    assert!(out.contains("pending"), "{out}");

    let migrate = ragpipe(&url, &["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    let again = ragpipe(&url, &["migrate"]);
    assert!(text(&again).contains("schema is current"), "{}", text(&again));

    let after = ragpipe(&url, &["doctor", "--json"]);
    assert!(after.status.success(), "{}", text(&after));
    let report: serde_json::Value = serde_json::from_slice(&after.stdout).expect("json");
    assert_eq!(report["ok"], true);
    assert!(report["checks"].as_array().is_some_and(|c| c.len() == 5), "{report}");
}

/// With `RAGPIPE_READ_DATABASE_URL`, doctor says whether it names a standby and how far behind
/// it is; one that is not a standby (here the primary itself) fails the check.
#[sqlx::test(migrations = false)]
async fn doctor_reports_the_read_replica(pool: PgPool) {
    let url = database_url(&pool);
    assert!(ragpipe(&url, &["migrate"]).status.success());
    let replica = ragpipe_tests::replica::Replica::attach(&pool).await;
    let doctor = |read_url: &str| {
        Command::new(env!("CARGO_BIN_EXE_ragpipe"))
            .args(["doctor", "--json"])
            .env("DATABASE_URL", &url)
            .env("RAGPIPE_READ_DATABASE_URL", read_url)
            .env("RAGPIPE_EMBEDDING_PROVIDER", "hashed")
            .env_remove("RAGPIPE_EMBEDDING_BASE_URL")
            .env_remove("RAGPIPE_CHAT_BASE_URL")
            .env_remove("RAGPIPE_CONFIG")
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .output()
            .expect("run ragpipe")
    };
    let check = |out: &Output| -> serde_json::Value {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "read replica").cloned())
            .unwrap_or_else(|| panic!("no read replica check: {report}"))
    };

    let out = doctor(&database_url(&replica.pool));
    assert!(out.status.success(), "{}", text(&out));
    let replica_check = check(&out);
    assert_eq!(replica_check["ok"], true, "{replica_check}");
    assert!(
        replica_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("a standby")),
        "{replica_check}"
    );

    let out = doctor(&url);
    assert!(!out.status.success(), "{}", text(&out));
    let primary_check = check(&out);
    assert_eq!(primary_check["ok"], false, "{primary_check}");
    assert!(
        primary_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not a standby")),
        "{primary_check}"
    );
}

#[test]
fn doctor_fails_clearly_against_an_unreachable_host() {
    let out = ragpipe("postgres://postgres@127.0.0.1:1/ragpipe", &["doctor"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("cannot reach the database") && t.contains("127.0.0.1:1"),
        "{t}"
    );
}

#[sqlx::test(migrations = false)]
async fn doctor_fails_when_a_model_endpoint_is_unreachable(pool: PgPool) {
    let url = database_url(&pool);
    assert!(ragpipe(&url, &["migrate"]).status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["doctor"])
        .env("DATABASE_URL", &url)
        .env("RAGPIPE_EMBEDDING_BASE_URL", "http://127.0.0.1:1/v1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("embedding model") && text(&out).contains("cannot reach http://127.0.0.1:1/v1"),
        "{}",
        text(&out)
    );
}

#[sqlx::test(migrations = false)]
async fn users_and_keys_are_created_and_the_key_is_shown_once(pool: PgPool) {
    let url = database_url(&pool);
    assert!(ragpipe(&url, &["migrate"]).status.success());
    let user = ragpipe(&url, &["users", "create", "--email", "ada@example.com", "--json"]);
    assert!(user.status.success(), "{}", text(&user));
    let user: serde_json::Value = serde_json::from_slice(&user.stdout).expect("json");
    let id = user["id"].as_str().expect("id").to_owned();
    assert_eq!(user["plan"], "free");

    let dup = ragpipe(&url, &["users", "create", "--email", "ADA@example.com"]);
    assert!(!dup.status.success());
    assert!(text(&dup).contains("already exists"), "{}", text(&dup));

    let key = ragpipe(&url, &["keys", "create", "--user", &id, "--json"]);
    assert!(key.status.success(), "{}", text(&key));
    let key: serde_json::Value = serde_json::from_slice(&key.stdout).expect("json");
    let secret = key["key"].as_str().expect("key");
    let store = ragpipe_store::Store::from_pool(pool.clone());
    let auth = ragpipe_store::api_keys::authenticate(&store, secret)
        .await
        .expect("auth")
        .expect("key works");
    assert_eq!(auth.user_id.to_string(), id);

    let stranger = ragpipe(&url, &["keys", "create", "--user", &uuid::Uuid::now_v7().to_string()]);
    assert!(!stranger.status.success());
    assert!(text(&stranger).contains("user not found"), "{}", text(&stranger));
}
