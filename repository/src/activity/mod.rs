//! What happened and what was used: the events feed (`events.rs`), metered usage
//! (`usage.rs`), and retention, which moves old events into archives in the blob store and
//! exports archived and live events as one stream (`retention.rs`), on Postgres a whole month
//! at a time (`partitions.rs`: the monthly partitions of `events`).

pub(crate) mod events;
pub(crate) mod partitions;
pub(crate) mod retention;
pub(crate) mod usage;
