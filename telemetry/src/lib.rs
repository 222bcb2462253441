//! Logs and metrics for Vega's binaries, set up the same way in each.
//!
//! - [`init_logging`]: `tracing` to stderr, filtered by `RUST_LOG`, colour only on a terminal.
//!   The repository's spans stay enabled whatever the filter, because its statement timings
//!   are labelled with them.
//! - [`Metrics`]: the Prometheus recorder behind the `metrics` facade the libraries write to,
//!   rendered in the Prometheus text format on `GET /metrics` ([`Metrics::routes`] for an
//!   axum application, [`Metrics::serve`] for a process without one). Each scrape first samples
//!   the store's gauges ([`Store::record_gauges`]: pool, queue).
//!
//! The `metrics` crate was chosen over OpenTelemetry: the libraries only need its facade
//! (counters, gauges, histograms by name and labels, free with no recorder installed), and
//! its Prometheus exporter renders without an HTTP server or an SDK pipeline of its own.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Identity, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use vega_repository::Store;

/// Seconds: from a fast index lookup to a statement that ran into its timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's `tracing` subscriber: formatted events on stderr, filtered by
/// `RUST_LOG` (else `default_filter`).
pub fn init_logging(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a log collector they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    // A layer that records nothing but keeps the repository's spans alive, so that
    // `vega_db_statement_seconds` knows which method ran a statement at any log level.
    let spans = Identity::new()
        .with_filter(Targets::new().with_target("vega_repository", tracing::Level::INFO));
    tracing_subscriber::registry().with(fmt).with(spans).init();
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or installed.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for (`VEGA_METRICS_LISTEN`).
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The process's Prometheus recorder: cheap to clone, one per process.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Installs the recorder, or returns the one already installed.
    pub fn install() -> Result<Self, MetricsError> {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        if let Some(handle) = HANDLE.get() {
            return Ok(Self {
                handle: handle.clone(),
            });
        }
        let handle = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .map_err(|e| MetricsError::Install(e.to_string()))?
            .install_recorder()
            .map_err(|e| MetricsError::Install(e.to_string()))?;
        describe();
        Ok(Self {
            handle: HANDLE.get_or_init(|| handle).clone(),
        })
    }

    /// The metrics in the Prometheus text format, the store's gauges sampled first. A store
    /// that cannot be sampled (the database is down) still gets the rest, and the failure is
    /// counted in `vega_metrics_sample_errors_total`.
    pub async fn render(&self, store: &Store) -> String {
        if let Err(err) = store.record_gauges().await {
            tracing::warn!(error = %err, "could not sample the pool and queue gauges");
            metrics::counter!("vega_metrics_sample_errors_total").increment(1);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// `GET /metrics` for an axum application.
    pub fn routes(self, store: Store) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state((self, store))
    }

    /// Serves `GET /metrics` on `addr` until `shutdown` completes.
    pub async fn serve(
        self,
        addr: SocketAddr,
        store: Store,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
        axum::serve(listener, self.routes(store))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })
    }
}

async fn scrape(State((metrics, store)): State<(Metrics, Store)>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(&store).await,
    )
        .into_response()
}

/// Help text for every metric the workspace records.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "vega_db_statement_seconds",
        Unit::Seconds,
        "Database statements by repository method, pool acquire included"
    );
    describe_counter!("vega_db_errors_total", "Failed database statements by kind");
    describe_histogram!(
        "vega_db_pool_acquire_seconds",
        Unit::Seconds,
        "Time to open a transaction: taking a pooled connection and its BEGIN"
    );
    describe_gauge!("vega_db_pool_connections", "Pooled connections by state");
    describe_gauge!("vega_db_pool_max_connections", "The pool's maximum size");
    describe_gauge!(
        "vega_db_pool_waiters",
        "Callers waiting for a pooled connection"
    );
    describe_gauge!(
        "vega_queue_scans",
        "Queued and running scans by status and priority"
    );
    describe_gauge!(
        "vega_queue_oldest_due_seconds",
        Unit::Seconds,
        "How long the longest-waiting due scan has waited"
    );
    describe_gauge!("vega_queue_scheduled_later", "Queued scans not yet due");
    describe_gauge!(
        "vega_queue_expired_leases",
        "Running scans whose lease expired"
    );
    describe_counter!(
        "vega_maintenance_runs_total",
        "Maintenance job runs by outcome"
    );
    describe_histogram!(
        "vega_maintenance_run_seconds",
        Unit::Seconds,
        "Maintenance job run time"
    );
    describe_counter!(
        "vega_maintenance_items_total",
        "What maintenance jobs did, by job and item (rescued, deleted, archived events, ...)"
    );
    describe_counter!(
        "vega_metrics_sample_errors_total",
        "Scrapes whose pool and queue gauges could not be sampled"
    );
}
