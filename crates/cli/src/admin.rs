//! `ragpipe users`, `ragpipe keys` and `ragpipe plans`.

use anyhow::Context;
use clap::Subcommand;
use ragpipe_core::{Config, UserId};
use ragpipe_store::quotas::{self, Limit, Quota, UserBudget};
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
    /// Show a user's budgets and their use; with options, first give the user budgets of
    /// their own (or, with `plan`, back to the plan's).
    Quota {
        /// The user's id.
        id: UserId,
        /// Tokens per calendar month (UTC).
        #[arg(long, value_name = "N|unlimited|plan")]
        monthly_tokens: Option<UserBudget>,
        /// Bytes of documents stored.
        #[arg(long, value_name = "N|unlimited|plan")]
        storage_bytes: Option<UserBudget>,
        /// Print the budgets as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlansCommand {
    /// List the plans and their budgets.
    List {
        /// Print the plans as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a plan's budgets (for every user on it without budgets of their own).
    Set {
        /// The plan: free, pro, team or enterprise.
        name: String,
        /// Tokens per calendar month (UTC).
        #[arg(long, value_name = "N|unlimited")]
        monthly_tokens: Option<Limit>,
        /// Bytes of documents stored.
        #[arg(long, value_name = "N|unlimited")]
        storage_bytes: Option<Limit>,
        /// Print the plan as JSON.
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
        UsersCommand::Quota {
            id,
            monthly_tokens,
            storage_bytes,
            json,
        } => {
            for (quota, budget) in [
                (Quota::MonthlyTokens, monthly_tokens),
                (Quota::StorageBytes, storage_bytes),
            ] {
                if let Some(budget) = budget {
                    quotas::set_user_budget(&store, id, quota, budget)
                        .await
                        .with_context(|| format!("setting the {} budget of user {id}", quota.as_str()))?;
                }
            }
            let mut tx = store.user_tx(id).await?;
            let status = quotas::status(&mut tx)
                .await
                .with_context(|| format!("reading the quotas of user {id}"))?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                crate::usage::print_quota(&status);
            }
        }
    }
    Ok(())
}

pub async fn plans(config: &Config, cmd: PlansCommand) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    let show = |limit: Option<i64>| limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match cmd {
        PlansCommand::List { json } => {
            let plans = quotas::plans(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plans)?);
            } else {
                println!("{:<12} {:>16} {:>16}", "plan", "monthly tokens", "storage bytes");
                for p in &plans {
                    println!(
                        "{:<12} {:>16} {:>16}",
                        p.name,
                        show(p.monthly_tokens),
                        show(p.storage_bytes)
                    );
                }
            }
        }
        PlansCommand::Set {
            name,
            monthly_tokens,
            storage_bytes,
            json,
        } => {
            if monthly_tokens.is_none() && storage_bytes.is_none() {
                anyhow::bail!("nothing to change: give --monthly-tokens and/or --storage-bytes");
            }
            let plan = quotas::set_plan(&store, &name, monthly_tokens, storage_bytes)
                .await
                .with_context(|| format!("changing plan {name:?}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!(
                    "plan {}: {} tokens a month, {} bytes stored",
                    plan.name,
                    show(plan.monthly_tokens),
                    show(plan.storage_bytes)
                );
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
