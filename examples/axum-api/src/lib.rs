//! How an application handler uses Vega's storage: build one [`Store`] at start-up, hand it
//! to axum as `State`, authenticate each request into a [`Principal`], and act through
//! `store.session(&principal)`, whose repositories reach only the principal's rows. Errors
//! become HTTP statuses here, at the edge ([`ApiError`]).
//!
//! Reads that may be stale (the project list) may be served by a read replica. A route that
//! writes answers with a `Vega-Write-Position` header; a client that sends it back on its next
//! request reads its own writes there, whichever replica or writer serves it.
//!
//! User routes take a user's API key (user-wide or restricted to a project); worker routes
//! take a worker credential (`vgw_...`). The key's scopes decide what it may do; its reach
//! decides which rows.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vega_entity::{Provider, TriggerKind, projects, repositories, scans};
use vega_repository::{
    Error, Lease, NewFinding, NewProject, NewRepository, NewScan, Principal, PrincipalKind,
    Session, Store, WritePosition,
};

/// The header that carries a session's [`WritePosition`]: answered by a route that wrote,
/// sent back by the client so its next reads see the write.
pub const WRITE_POSITION: &str = "vega-write-position";

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

/// The API's routes and `GET /metrics` (the Prometheus text format, see `vega-telemetry`).
pub fn with_metrics(store: Store, metrics: vega_telemetry::Metrics) -> Router {
    router(store.clone()).merge(metrics.routes(store))
}

/// An error response: a status and `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    /// From the storage layer.
    Store(Error),
    /// No valid credential.
    Unauthorized,
    /// The key lacks a scope.
    MissingScope(&'static str),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError::Store(err)
    }
}

/// The HTTP status of a storage error. A row out of the caller's reach is `NotFound`, so it
/// answers 404 exactly like a row that does not exist.
fn status_of(err: &Error) -> StatusCode {
    use vega_repository::BlobError;
    match err {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict { .. } | Error::LeaseLost { .. } => StatusCode::CONFLICT,
        Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::SchemaOutdated { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Blob(BlobError::NotFound { .. }) => StatusCode::NOT_FOUND,
        Error::Blob(BlobError::AlreadyExists { .. }) => StatusCode::CONFLICT,
        Error::Blob(BlobError::InvalidKey { .. } | BlobError::InvalidExpiry { .. }) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Blob(BlobError::Unsupported(..)) => StatusCode::NOT_IMPLEMENTED,
        Error::Blob(BlobError::Io(_) | BlobError::S3 { .. } | BlobError::Timeout { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
                let status = status_of(&err);
                if status.is_server_error() {
                    tracing::error!(%err, "request failed");
                    (status, "internal error; see the server log".to_owned())
                } else {
                    (status, err.to_string())
                }
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid API key or worker credential is required".into(),
            ),
            ApiError::MissingScope(scope) => (
                StatusCode::FORBIDDEN,
                format!("the key lacks the `{scope}` scope"),
            ),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The authenticated caller of a user route: a user's key, user-wide or for one project, and
/// the write position its reads must see (the request's `Vega-Write-Position`).
pub struct Caller(Principal, Option<WritePosition>);

/// The authenticated caller of a worker route: a worker credential.
pub struct Worker(Principal);

impl Caller {
    /// The caller's session, reading at least what the caller last wrote.
    fn session<'s>(&'s self, store: &'s Store) -> Session<'s> {
        let session = store.session(&self.0);
        match self.1 {
            Some(position) => session.read_after(position),
            None => session,
        }
    }

    fn require(&self, scope: &'static str) -> Result<&Principal, ApiError> {
        if self.0.has_scope(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }
}

async fn principal(parts: &Parts, store: &Store) -> Result<Principal, ApiError> {
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let principal = store
        .api_keys()
        .authenticate(token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string());
    store.api_keys().touch(&principal, ip.as_deref()).await?;
    Ok(principal)
}

impl FromRequestParts<Store> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, store: &Store) -> Result<Self, ApiError> {
        let position = match parts.headers.get(WRITE_POSITION) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .unwrap_or_default()
                    .parse::<WritePosition>()?,
            ),
        };
        match principal(parts, store).await? {
            p if matches!(
                p.kind(),
                PrincipalKind::User { .. } | PrincipalKind::ProjectKey { .. }
            ) =>
            {
                Ok(Caller(p, position))
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}

impl FromRequestParts<Store> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, store: &Store) -> Result<Self, ApiError> {
        match principal(parts, store).await? {
            p if matches!(p.kind(), PrincipalKind::Worker { .. }) => Ok(Worker(p)),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// A project as the API shows it.
#[derive(Serialize)]
struct ProjectBody {
    id: Uuid,
    name: String,
    slug: String,
    description: Option<String>,
}

impl From<projects::Model> for ProjectBody {
    fn from(p: projects::Model) -> Self {
        Self {
            id: p.id,
            name: p.name,
            slug: p.slug,
            description: p.description,
        }
    }
}

/// A repository as the API shows it.
#[derive(Serialize)]
struct RepositoryBody {
    id: Uuid,
    project_id: Uuid,
    provider: String,
    full_name: Option<String>,
    default_branch: Option<String>,
}

impl From<repositories::Model> for RepositoryBody {
    fn from(r: repositories::Model) -> Self {
        Self {
            id: r.id,
            project_id: r.project_id,
            provider: r.provider,
            full_name: r.full_name,
            default_branch: r.default_branch,
        }
    }
}

/// A scan as the API shows it.
#[derive(Serialize)]
struct ScanBody {
    id: Uuid,
    project_id: Uuid,
    repository_id: Uuid,
    ref_name: Option<String>,
    status: String,
    findings_total: i32,
}

impl From<scans::Model> for ScanBody {
    fn from(s: scans::Model) -> Self {
        Self {
            id: s.id,
            project_id: s.project_id,
            repository_id: s.repository_id,
            ref_name: s.ref_name,
            status: s.status,
            findings_total: s.findings_total,
        }
    }
}

#[derive(Deserialize)]
struct CreateProject {
    name: String,
    slug: String,
    description: Option<String>,
    /// Also track this repository and queue its first scan, all in one transaction.
    repository: Option<AddRepository>,
}

async fn create_project(
    State(store): State<Store>,
    caller: Caller,
    Json(body): Json<CreateProject>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require("projects:write")?;
    let owner_id = principal.user_id().ok_or(ApiError::Unauthorized)?;
    let session = caller.session(&store);
    // The project, its first repository and its first scan commit together with their
    // events, or none of them does.
    let tx = session.begin().await?;
    let project = tx
        .projects()
        .create(NewProject {
            owner_id,
            name: body.name,
            slug: body.slug,
            description: body.description,
        })
        .await?;
    if let Some(repository) = body.repository {
        let branch = repository.default_branch.clone();
        let repository = tx
            .repositories()
            .add(repository.into_new(project.id))
            .await?;
        let mut scan = NewScan::full(repository.id, TriggerKind::Api, branch);
        scan.requested_by_api_key_id = principal.key_id();
        tx.scans().enqueue(scan).await?;
    }
    tx.commit().await?;
    positioned(
        &session,
        (StatusCode::CREATED, Json(ProjectBody::from(project))),
    )
    .await
}

/// `response` with the session's write position, for the client to send back.
async fn positioned(
    session: &Session<'_>,
    response: impl IntoResponse,
) -> Result<Response, ApiError> {
    let mut response = response.into_response();
    if let Some(position) = session.write_position().await? {
        let value = axum::http::HeaderValue::from(position.into_inner());
        response.headers_mut().insert(WRITE_POSITION, value);
    }
    Ok(response)
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
    let principal = caller.require("projects:read")?;
    let owner_id = principal.user_id().ok_or(ApiError::Unauthorized)?;
    let page = caller
        .session(&store)
        .projects()
        .list_for_owner(owner_id, q.after, q.limit.unwrap_or(50))
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

impl AddRepository {
    fn into_new(self, project_id: Uuid) -> NewRepository {
        NewRepository {
            project_id,
            provider: self.provider,
            provider_xid: self.provider_xid,
            full_name: self.full_name,
            clone_url: None,
            default_branch: self.default_branch,
        }
    }
}

async fn add_repository(
    State(store): State<Store>,
    caller: Caller,
    Path(project_id): Path<Uuid>,
    Json(body): Json<AddRepository>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("projects:write")?;
    let session = caller.session(&store);
    let repository = session
        .repositories()
        .add(body.into_new(project_id))
        .await?;
    positioned(
        &session,
        (StatusCode::CREATED, Json(RepositoryBody::from(repository))),
    )
    .await
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
    let principal = caller.require("scans:write")?;
    let mut scan = NewScan::full(repository_id, TriggerKind::Api, body.ref_name);
    scan.requested_by_api_key_id = principal.key_id();
    let session = caller.session(&store);
    let scan = session.scans().enqueue(scan).await?;
    positioned(&session, (StatusCode::CREATED, Json(ScanBody::from(scan)))).await
}

#[derive(Deserialize)]
struct ClaimRequest {
    lease_seconds: u64,
}

/// A claimed scan: what the worker needs to run it, and the lease for every later call.
#[derive(Serialize)]
struct ClaimBody {
    scan: ScanBody,
    lease: Lease,
}

async fn claim(
    State(store): State<Store>,
    Worker(worker): Worker,
    Json(body): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    let lease_for = std::time::Duration::from_secs(body.lease_seconds);
    let claimed = store
        .session(&worker)
        .scans()
        .claim_next(worker.label(), 1, lease_for)
        .await?;
    Ok(match claimed.into_iter().next() {
        Some(claim) => Json(ClaimBody {
            scan: claim.scan.into(),
            lease: claim.lease,
        })
        .into_response(),
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
    Worker(worker): Worker,
    Json(body): Json<CompleteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let scan = store
        .session(&worker)
        .scans()
        .complete(&body.lease, body.findings)
        .await?;
    Ok(Json(ScanBody::from(scan)))
}
