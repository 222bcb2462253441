//! The connection every repository stands on, and the helpers its statements share.
//!
//! - `connection.rs`: the bounded connection and its handles;
//! - `pool.rs`: opening the pool, with the checks on acquire and release;
//! - `monitor.rs`: the failure monitor that declares a failover;
//! - `replica.rs`: the read replica, its monitor, and the rule that sends a read to it;
//! - `route.rs`: the writer's and the reader's pools, and where each statement goes (`Conn`,
//!   `Unit`);
//! - `simple.rs`: statements behind a transaction-mode pooler, one simple query each, values
//!   as typed literals;
//! - `sql.rs`: the stored clock, raw statements, array parameters, placeholders;
//! - `page.rs`: keyset pages; `validate.rs`: input checks that run before any statement.
//!
//! Which handle when:
//!
//! | handle | what it is | use it for |
//! |---|---|---|
//! | `Db` | the pool, every call bounded | the store's own handle; not passed to repositories |
//! | `Tx` | a transaction or savepoint on the pool | a [`crate::Transaction`]'s statements |
//! | `Pools` | the writer's `Db` and the read replica's | what a session holds |
//! | `Conn` | the pools (the writer; for a replica read the reader when it may serve) or a caller's `Tx` | what a repository's `Cx` holds: one statement |
//! | `Unit` | a transaction of its own on the pool, or the caller's `Tx` | a method of several statements: `cx.db().unit()`, then `commit` |
//! | `Cx` (`context/cx.rs`) | a `Conn` and who acts | every repository struct's one field (two with the blob store) |
//!
//! `Session` and `Transaction` are the public faces: a session's repositories hold a
//! `Conn::Pool`, a transaction's a `Conn::Tx`.

pub(crate) mod connection;
pub(crate) mod monitor;
pub(crate) mod page;
pub(crate) mod pool;
pub(crate) mod replica;
pub(crate) mod route;
pub(crate) mod simple;
pub(crate) mod sql;
pub(crate) mod validate;
