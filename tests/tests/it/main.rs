//! Cross-crate tests, one binary: the schema's invariants, the README's try-it commands, the wire
//! types, the repository's import order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod imports;
mod schema;
mod try_it;
mod wire_types;
