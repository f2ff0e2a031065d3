//! The `pixelhub` binary: parses settings, sets up logging, runs the hub until SIGINT or SIGTERM (or runs
//! one of its tools, such as `pixelhub import`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use pixelhub::config::{Cli, Command, LogFormat};
use pixelhub::{Application, Config};
use tracing_subscriber::EnvFilter;

/// How long the runtime waits at exit for blocking work still running: a store call stuck in the disk
/// must not keep the process alive after its shutdown (the hub's own drain is bounded already).
const EXIT_GRACE: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::from_env_and_args();
    let runtime = tokio::runtime::Runtime::new().context("the async runtime cannot start")?;
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Import(args)) => pixelhub::cli::import(args).await,
            Some(Command::RepairJournal(args)) => pixelhub::cli::repair_journal(args),
            None => serve(cli.config).await.map(|()| ExitCode::SUCCESS),
        }
    });
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // The filter was checked when the settings were read.
    let filter = EnvFilter::new(&config.log_level);
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }

    let app = Application::build(config.clone())
        .await
        .context("pixelhub could not start")?;
    let addr = app.local_addr();
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, tls = config.tls_cert.is_some(), data_dir = %config.data_dir.display(), "listening");
    if config.demo_enabled() {
        tracing::info!("demo brand site: {scheme}://{addr}/demo");
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
