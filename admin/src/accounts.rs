//! Accounts from the command line: users, their API keys, and worker credentials. Each
//! command acts as the system through the repositories (so each change is an audit event)
//! and prints a line, or with `--json` one JSON value. A plaintext token is printed once,
//! alone on stdout, so `TOKEN=$(vega-admin keys issue …)` captures exactly it.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use uuid::Uuid;
use vega_entity::{RevokeReason, UserStatus, api_keys, users};
use vega_repository::{ApiToken, NewApiKey, NewUser, Store};

use crate::print;

/// `vega-admin users …`.
#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create an active user.
    Create {
        /// Their email address (unique, case-insensitively).
        #[arg(long)]
        email: String,
        /// Their display name.
        #[arg(long)]
        name: Option<String>,
        /// Make them an administrator of the deployment.
        #[arg(long)]
        admin: bool,
    },
    /// Every user, in the order they were created.
    List,
    /// Suspend a user: their keys stop working at once.
    Suspend {
        /// The user's email.
        email: String,
    },
    /// Make a suspended user active again.
    Activate {
        /// The user's email.
        email: String,
    },
}

/// `vega-admin keys …`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Issue an API key and print its token, once.
    Issue {
        /// The owner's email.
        #[arg(long)]
        user: String,
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// A permission (repeatable): projects:read, projects:write, scans:read, scans:write,
        /// findings:read, findings:write.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Restrict the key to one of the owner's projects.
        #[arg(long)]
        project: Option<Uuid>,
        /// Make the key stop working after this long (`30d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// A user's keys, newest first, revoked ones included.
    List {
        /// The owner's email.
        #[arg(long)]
        user: String,
    },
    /// Revoke a key.
    Revoke {
        /// The key's id.
        id: Uuid,
    },
    /// Replace a live key with a new one (same owner, project, name, scopes and expiry) and
    /// print the new token, once; the old key is revoked.
    Rotate {
        /// The key's id.
        id: Uuid,
    },
}

/// `vega-admin workers …`.
#[derive(Subcommand)]
pub enum WorkersCommand {
    /// Issue the credential a scan worker authenticates with and print its token, once. The
    /// worker claims scans under NAME.
    IssueCredential {
        /// The worker's name.
        name: String,
    },
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub async fn users(store: &Store, json: bool, command: UsersCommand) -> Result<()> {
    let users = store.users();
    match command {
        UsersCommand::Create { email, name, admin } => {
            let user = users
                .create(NewUser {
                    email,
                    display_name: name,
                    is_admin: admin,
                })
                .await?;
            print(json, &user_json(&user), || {
                format!("created user {} ({})", user.email, user.id)
            });
        }
        UsersCommand::List => {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = users.list(after, 500).await?;
                after = page.last().map(|u| u.id);
                let done = page.len() < 500;
                all.extend(page);
                if done {
                    break;
                }
            }
            let listed: Vec<Value> = all.iter().map(user_json).collect();
            print(json, &listed, || {
                all.iter()
                    .map(|u| {
                        let admin = if u.is_admin { " admin" } else { "" };
                        format!("{}  {}  {}{admin}", u.id, u.email, u.status)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        UsersCommand::Suspend { email } => {
            set_status(store, json, &email, UserStatus::Suspended).await?
        }
        UsersCommand::Activate { email } => {
            set_status(store, json, &email, UserStatus::Active).await?
        }
    }
    Ok(())
}

async fn set_status(store: &Store, json: bool, email: &str, status: UserStatus) -> Result<()> {
    let user = user_by_email(store, email).await?;
    let user = store.users().set_status(user.id, status).await?;
    print(json, &user_json(&user), || {
        format!("user {} is {}", user.email, user.status)
    });
    Ok(())
}

pub async fn keys(store: &Store, json: bool, command: KeysCommand) -> Result<()> {
    let keys = store.api_keys();
    match command {
        KeysCommand::Issue {
            user,
            name,
            scopes,
            project,
            expires,
        } => {
            let owner = user_by_email(store, &user).await?;
            let expires_at = expires
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .map_err(|_| "--expires is too far in the future")?
                .map(|at| at.fixed_offset());
            let issued = keys
                .issue(NewApiKey {
                    user_id: owner.id,
                    project_id: project,
                    name,
                    scopes,
                    expires_at,
                })
                .await?;
            print_token(json, key_json(&issued.key), &issued.token);
        }
        KeysCommand::List { user } => {
            let owner = user_by_email(store, &user).await?;
            let listed = keys.list_for_user(owner.id).await?;
            let values: Vec<Value> = listed.iter().map(key_json).collect();
            print(json, &values, || {
                listed
                    .iter()
                    .map(|k| {
                        format!(
                            "{}  {}…{}  {}  {}  {}",
                            k.id,
                            k.token_prefix,
                            k.token_last4,
                            k.name,
                            scopes_of(k).join(","),
                            key_state(k)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        KeysCommand::Revoke { id } => {
            let key = keys.revoke(id, RevokeReason::Admin).await?;
            print(json, &key_json(&key), || format!("key {id} is revoked"));
        }
        KeysCommand::Rotate { id } => {
            let issued = keys.rotate(id).await?;
            print_token(json, key_json(&issued.key), &issued.token);
        }
    }
    Ok(())
}

pub async fn workers(store: &Store, json: bool, command: WorkersCommand) -> Result<()> {
    match command {
        WorkersCommand::IssueCredential { name } => {
            let issued = store.workers().issue_credential(&name).await?;
            let c = &issued.credential;
            let value = json!({
                "id": c.id,
                "name": c.name,
                "token_prefix": c.token_prefix,
                "created_at": c.created_at,
            });
            print_token(json, value, &issued.token);
        }
    }
    Ok(())
}

async fn user_by_email(store: &Store, email: &str) -> Result<users::Model> {
    Ok(store.users().find_by_email(email).await?.ok_or_else(|| {
        format!("no user has the email {email:?}; `vega-admin users list` shows who does")
    })?)
}

/// The token alone on stdout, or with `--json` the row's fields and the token.
fn print_token(json: bool, mut value: Value, token: &ApiToken) {
    if let Value::Object(fields) = &mut value {
        fields.insert("token".into(), token.expose().into());
    }
    print(json, &value, || token.expose().to_owned());
}

fn user_json(u: &users::Model) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "display_name": u.display_name,
        "is_admin": u.is_admin,
        "status": u.status,
        "created_at": u.created_at,
    })
}

fn key_json(k: &api_keys::Model) -> Value {
    json!({
        "id": k.id,
        "user_id": k.user_id,
        "project_id": k.project_id,
        "name": k.name,
        "token_prefix": k.token_prefix,
        "token_last4": k.token_last4,
        "scopes": scopes_of(k),
        "expires_at": k.expires_at,
        "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at,
        "state": key_state(k),
    })
}

fn scopes_of(k: &api_keys::Model) -> Vec<String> {
    serde_json::from_value(k.scopes.clone()).unwrap_or_default()
}

fn key_state(k: &api_keys::Model) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        "expired"
    } else {
        "live"
    }
}
