//! What the `ragpipe bench` commands share: a deterministic random source and a scratch
//! database on the configured server.

use anyhow::Context;
use ragpipe_core::Config;
use ragpipe_store::Store;

/// Deterministic pseudo-random numbers (xorshift64*), so every run generates the same corpus.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A database named `name` on the configured server, for one benchmark run.
pub struct ScratchDatabase {
    admin: Store,
    name: String,
    /// The configuration pointing at the scratch database.
    pub config: Config,
}

impl ScratchDatabase {
    /// Connects to the configured server and, when `recreate`, drops and creates `name`.
    pub async fn open(config: Config, name: &str, recreate: bool) -> anyhow::Result<ScratchDatabase> {
        let mut url = url::Url::parse(&config.database_url).context("DATABASE_URL")?;
        let admin = Store::connect(&config).await?;
        let name = name.replace('"', "");
        if recreate {
            drop_database(&admin, &name).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(admin.pool())
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        url.set_path(&format!("/{name}"));
        let mut config = config;
        config.database_url = url.to_string();
        Ok(ScratchDatabase { admin, name, config })
    }

    /// Drops the database (its own connections must be closed first).
    pub async fn drop(self) -> anyhow::Result<()> {
        drop_database(&self.admin, &self.name).await
    }
}

async fn drop_database(admin: &Store, name: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin.pool())
    .await
    .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}
