//! How an application handler gets Vega's [`Store`]: build it once at start-up, hand it to
//! axum as `State`, and call repositories from handlers. Errors map to HTTP statuses through
//! [`vega_repository::Error::http_status`].
//!
//! Every route needs `Authorization: Bearer vgk_...`; the key's scopes decide what it may do.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;
use vega_entity::{Provider, TriggerKind, api_keys};
use vega_repository::{Claim, Lease, NewFinding, NewProject, NewRepository, NewScan, Store};

/// The API's routes, over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/projects", post(create_project).get(list_projects))
        .route("/projects/{project_id}/repositories", post(add_repository))
        .route("/repositories/{repository_id}/scans", post(enqueue_scan))
        .route("/worker/claim", post(claim))
        .route("/worker/complete", post(complete))
        .route("/health", get(|| async { "ok" }))
        .with_state(store)
}

/// An error response: a status and `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    /// From the repository layer, with its own status.
    Store(vega_repository::Error),
    /// No valid API key.
    Unauthorized,
    /// The key lacks a scope.
    Forbidden(&'static str),
}

impl From<vega_repository::Error> for ApiError {
    fn from(err: vega_repository::Error) -> Self {
        ApiError::Store(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            // A passing failure (a restart, a failover, a timeout): the client may retry.
            ApiError::Store(err) if err.is_retryable() => {
                tracing::warn!(%err, "request failed for a passing reason");
                let body = Json(serde_json::json!({ "error": "temporarily unavailable; retry" }));
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(axum::http::header::RETRY_AFTER, "1")],
                    body,
                )
                    .into_response();
            }
            ApiError::Store(err) => {
                let status = StatusCode::from_u16(err.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if status.is_server_error() {
                    tracing::error!(%err, "request failed");
                    (status, "internal error; see the server log".to_owned())
                } else {
                    (status, err.to_string())
                }
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid API key is required".into(),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                format!("the key lacks the `{scope}` scope"),
            ),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The authenticated caller: the API key a request presented.
pub struct Caller(api_keys::Model);

impl Caller {
    fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        let granted = self
            .0
            .scopes
            .as_array()
            .is_some_and(|s| s.iter().any(|v| v == scope));
        if granted {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

impl FromRequestParts<Store> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, store: &Store) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let key = store
            .api_keys()
            .authenticate(token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        store.api_keys().touch(&key, None).await?;
        Ok(Caller(key))
    }
}

#[derive(Deserialize)]
struct CreateProject {
    name: String,
    slug: String,
    description: Option<String>,
}

async fn create_project(
    State(store): State<Store>,
    caller: Caller,
    Json(body): Json<CreateProject>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("projects:write")?;
    let project = store
        .projects()
        .create(NewProject {
            owner_id: caller.0.user_id,
            name: body.name,
            slug: body.slug,
            description: body.description,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[derive(Deserialize)]
struct ListProjects {
    after: Option<Uuid>,
    limit: Option<u64>,
}

async fn list_projects(
    State(store): State<Store>,
    caller: Caller,
    Query(q): Query<ListProjects>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("projects:read")?;
    let page = store
        .projects()
        .list_for_owner(caller.0.user_id, q.after, q.limit.unwrap_or(50))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct AddRepository {
    provider: Provider,
    provider_xid: Option<String>,
    full_name: Option<String>,
    default_branch: Option<String>,
}

async fn add_repository(
    State(store): State<Store>,
    caller: Caller,
    Path(project_id): Path<Uuid>,
    Json(body): Json<AddRepository>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("projects:write")?;
    owned_project(&store, &caller, project_id).await?;
    let repository = store
        .repositories()
        .add(NewRepository {
            project_id,
            provider: body.provider,
            provider_xid: body.provider_xid,
            full_name: body.full_name,
            clone_url: None,
            default_branch: body.default_branch,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(repository)))
}

#[derive(Deserialize)]
struct EnqueueScan {
    ref_name: Option<String>,
}

async fn enqueue_scan(
    State(store): State<Store>,
    caller: Caller,
    Path(repository_id): Path<Uuid>,
    Json(body): Json<EnqueueScan>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("scans:write")?;
    let repository = store.repositories().get(repository_id).await?;
    owned_project(&store, &caller, repository.project_id).await?;
    let mut scan = NewScan::full(repository_id, TriggerKind::Api, body.ref_name);
    scan.requested_by_api_key_id = Some(caller.0.id);
    let scan = store.scans().enqueue(scan).await?;
    Ok((StatusCode::CREATED, Json(scan)))
}

#[derive(Deserialize)]
struct ClaimRequest {
    worker_id: String,
    lease_seconds: u64,
}

async fn claim(
    State(store): State<Store>,
    caller: Caller,
    Json(body): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    caller.require("worker")?;
    let lease_for = std::time::Duration::from_secs(body.lease_seconds);
    let claimed: Vec<Claim> = store
        .scans()
        .claim_next(&body.worker_id, 1, lease_for)
        .await?;
    Ok(match claimed.into_iter().next() {
        Some(claim) => Json(claim).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Deserialize)]
struct CompleteRequest {
    lease: Lease,
    findings: Vec<NewFinding>,
}

async fn complete(
    State(store): State<Store>,
    caller: Caller,
    Json(body): Json<CompleteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("worker")?;
    Ok(Json(
        store.scans().complete(&body.lease, body.findings).await?,
    ))
}

/// The project, if the caller owns it; someone else's project is "not found", not "forbidden",
/// so ids cannot be probed.
async fn owned_project(store: &Store, caller: &Caller, project_id: Uuid) -> Result<(), ApiError> {
    let project = store.projects().get(project_id).await?;
    if project.owner_id == caller.0.user_id {
        Ok(())
    } else {
        Err(vega_repository::Error::NotFound {
            entity: "project",
            key: project_id.to_string(),
        }
        .into())
    }
}
