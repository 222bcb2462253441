//! Who may act: users (`users.rs`), API keys and authentication (`api_keys.rs`), scan
//! workers' credentials and heartbeats (`workers.rs`), and the token format both kinds of
//! secret share (`token.rs`).

pub(crate) mod api_keys;
pub(crate) mod token;
pub(crate) mod users;
pub(crate) mod workers;
