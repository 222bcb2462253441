//! Cross-crate tests, one binary: the schema's invariants, the README's try-it commands, the wire
//! types, the repository's import order, the replica reads' markers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod imports;
mod replica_reads;
mod schema;
mod try_it;
mod wire_types;
