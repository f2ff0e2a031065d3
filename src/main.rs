//! The `pixelhub` binary: parses settings, sets up logging, runs the hub until SIGINT or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use pixelhub::{Application, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env_and_args();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PIXELHUB_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let app = Application::build(config.clone())
        .await
        .context("pixelhub could not start")?;
    let addr = app.local_addr();
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "listening");
    if config.demo {
        tracing::info!("demo brand site: http://{addr}/demo");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the demo is reachable from the network; set PIXELHUB_DEMO=false in production"
            );
        }
    }
    app.run_until(shutdown_signal())
        .await
        .context("serving failed")
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
