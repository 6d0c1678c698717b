//! `ragpipe usage [--user ID] [--from DATE] [--to DATE] [--by day|model|kind] [--json]`: tokens
//! and cost from `usage_events`, grouped. With `--user`, that user's (read through their
//! transaction, with their quota status, the same JSON as `GET /v1/usage`); without, every
//! user's together (aggregates only, see `store::usage::report_all`).

use anyhow::Context;
use clap::Args;
use ragpipe_api::usage::UsageResponse;
use ragpipe_core::{Config, UserId};
use ragpipe_store::Store;
use ragpipe_store::quotas::{self, Budget, BudgetSource, QuotaStatus};
use ragpipe_store::usage::{self, GroupBy, Period, UsageReport, UsageTotals};

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Only this user's usage (default: every user's, summed).
    #[arg(long)]
    pub user: Option<UserId>,
    /// First instant counted: a date (2026-11-01, midnight UTC) or an RFC 3339 time (default:
    /// the start of this month, UTC).
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// First instant not counted (default: the start of next month).
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Group by day, model or kind.
    #[arg(long, default_value = "day")]
    pub by: GroupBy,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: Config, args: UsageArgs) -> anyhow::Result<()> {
    let period = Period::from_bounds_now(args.from.as_deref(), args.to.as_deref()).map_err(anyhow::Error::msg)?;
    let store = Store::connect(&config).await?;
    match args.user {
        Some(user) => {
            let mut tx = store.user_tx(user).await?;
            let report = usage::report(&mut tx, period, args.by)
                .await
                .with_context(|| format!("reading the usage of user {user}"))?;
            let quota = quotas::status(&mut tx)
                .await
                .with_context(|| format!("reading the quotas of user {user}"))?;
            tx.commit().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&UsageResponse { report, quota })?);
            } else {
                println!("usage of user {user}");
                print_report(&report);
                println!();
                print_quota(&quota);
            }
        }
        None => {
            let report = usage::report_all(&store, period, args.by)
                .await
                .context("reading the usage of all users")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("usage of all users");
                print_report(&report);
            }
        }
    }
    Ok(())
}

/// A table: one line per group, then the total.
pub fn print_report(report: &UsageReport) {
    println!(
        "from {} to {} (UTC), by {}",
        report.from.format("%Y-%m-%d %H:%M"),
        report.to.format("%Y-%m-%d %H:%M"),
        report.group_by.as_str()
    );
    let key_width = report
        .rows
        .iter()
        .map(|r| r.key.chars().count())
        .chain([report.group_by.as_str().len(), "total".len()])
        .max()
        .unwrap_or(5);
    println!(
        "{:<key_width$} {:>8} {:>9} {:>12} {:>12} {:>10} {:>12} {:>12} {:>14}",
        report.group_by.as_str(),
        "events",
        "requests",
        "prompt",
        "completion",
        "cached",
        "total",
        "charged",
        "cost"
    );
    for row in &report.rows {
        print_line(&row.key, &row.totals, key_width);
    }
    print_line("total", &report.total, key_width);
}

fn print_line(key: &str, t: &UsageTotals, key_width: usize) {
    println!(
        "{key:<key_width$} {:>8} {:>9} {:>12} {:>12} {:>10} {:>12} {:>12} {:>14.8}",
        t.events,
        t.requests,
        t.prompt_tokens,
        t.completion_tokens,
        t.cached_tokens,
        t.total_tokens,
        t.charged_tokens,
        t.cost
    );
}

/// The user's plan and each budget with its use.
pub fn print_quota(quota: &QuotaStatus) {
    println!(
        "plan {}; token period since {}",
        quota.plan,
        quota.period_start.format("%Y-%m-%d")
    );
    println!("monthly tokens: {}", budget_line(&quota.monthly_tokens));
    println!("storage bytes:  {}", budget_line(&quota.storage_bytes));
}

fn budget_line(b: &Budget) -> String {
    let source = match b.source {
        BudgetSource::Plan => "plan",
        BudgetSource::User => "user's own",
    };
    match b.limit {
        Some(limit) => format!("{} used of {limit} ({source})", b.used),
        None => format!("{} used, unlimited ({source})", b.used),
    }
}
