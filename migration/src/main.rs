//! `vega-migrate`: see `vega-migrate --help` and the README's "Migrations" section.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr so stdout carries only the command's result; sea-orm-migration's own
    // per-migration lines are left at warn because the runner prints each step with its time.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sea_orm_migration=warn,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    vega_migration::cli::Cli::parse().run().await
}
