//! `ragpipe users` and `ragpipe keys`.

use anyhow::Context;
use clap::Subcommand;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, api_keys, users};

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user.
    Create {
        /// Email address (unique).
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Plan: free, pro, team or enterprise.
        #[arg(long)]
        plan: Option<String>,
        /// Print the user as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key for a user. The key is printed once and stored only as a hash.
    Create {
        /// The user's id.
        #[arg(long)]
        user: UserId,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// Print the key as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn users(config: &Config, cmd: UsersCommand) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    match cmd {
        UsersCommand::Create {
            email,
            name,
            plan,
            json,
        } => {
            let user = users::create(
                &store,
                &users::NewUser {
                    email,
                    display_name: name,
                    plan,
                    id: None,
                },
            )
            .await
            .context("creating the user")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&user)?);
            } else {
                println!("{}", user.id);
                eprintln!("created user {} <{}> on plan {}", user.id, user.email, user.plan);
            }
        }
    }
    Ok(())
}

pub async fn keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    match cmd {
        KeysCommand::Create { user, name, json } => {
            let created = api_keys::create(&store, user, name.as_deref())
                .await
                .with_context(|| format!("creating a key for user {user}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created.key);
                eprintln!(
                    "created key {} for user {user}; it is shown only this once",
                    created.record.prefix
                );
            }
        }
    }
    Ok(())
}
