//! Serves the example API: `cargo run -p vega-example-api` (listens on `VEGA_LISTEN`,
//! default 127.0.0.1:8080; database settings as everywhere, see the README), with its
//! Prometheus metrics on `GET /metrics`.

use std::process::ExitCode;

use vega_repository::Store;

#[tokio::main]
async fn main() -> ExitCode {
    vega_telemetry::init_logging("info");
    // Each error says what is wrong and how to fix it; a Debug dump would say neither.
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let settings = vega_config::Settings::from_env()?;
    let store = Store::connect(&settings).await?;
    let addr = std::env::var("VEGA_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "listening");
    // With the peer's address, which `api_keys().touch` records as the key's last IP.
    let app = vega_example_api::with_metrics(store, vega_telemetry::Metrics::install()?)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}
