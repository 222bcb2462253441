//! `vega-admin events export`: a project's events, archived and live, as one JSON-lines stream.

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use clap::Subcommand;
use uuid::Uuid;
use vega_repository::Store;

/// `vega-admin events …`.
#[derive(Subcommand)]
pub enum EventsCommand {
    /// Write a project's events in [--since, --until) to stdout as JSON lines, oldest first:
    /// those retention moved to the blob store, then those still in the table. The count goes
    /// to stderr.
    Export {
        /// The project.
        #[arg(long)]
        project: Uuid,
        /// From this time (RFC 3339, or a date: 2026-03-01), inclusive. Default: the start.
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<FixedOffset>>,
        /// Until this time (RFC 3339, or a date), exclusive. Default: now.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<FixedOffset>>,
    },
}

pub async fn events(
    store: &Store,
    command: EventsCommand,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        EventsCommand::Export {
            project,
            since,
            until,
        } => {
            let since = since.unwrap_or(DateTime::UNIX_EPOCH.fixed_offset());
            let until = until.unwrap_or_else(|| Utc::now().fixed_offset());
            let counted = crate::progress::Counted::new(tokio::io::stdout(), "exporting", true);
            let mut out = tokio::io::BufWriter::new(counted);
            let n = store
                .event_archives()
                .export(project, since, until, &mut out)
                .await;
            out.get_ref().finish();
            eprintln!("exported {} events", n?);
            Ok(())
        }
    }
}

/// An RFC 3339 time, or a date meaning its midnight UTC.
fn parse_time(text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc().fixed_offset())
        })
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a date (2026-03-01)"))
}
