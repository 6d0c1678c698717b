//! ragpipe

pub mod app;
pub mod openai_server;

/// A connection URL for the database behind `pool` (e.g. one `#[sqlx::test]` created), for
/// starting `ragpipe` processes against it.
pub fn database_url(pool: &sqlx::PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}
