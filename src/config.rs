//! Settings, from flags or environment variables; `pixelhub --help` lists each with its default.
//!
//! Everything has a default that works on a laptop, so `cargo run --release` with no arguments starts a hub
//! that a newcomer can use. Values are checked here, at start-up, with a message naming the setting, so a
//! typo never turns into a mysterious failure later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The command line: the hub's settings, or a tool such as `import` that talks to a running hub.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pixelhub",
    version,
    about = "Delivers affiliate conversion pixels to players' browsers, exactly once.",
    args_conflicts_with_subcommands = true,
    after_help = "Environment only:\n  \
        PIXELHUB_ADMIN_TOKEN  bearer token of the /api/v1 admin API, at least 16 characters; when unset, one is\n                        \
        generated once and kept in <data-dir>/admin-token (mode 0600)\n  \
        PIXELHUB_LOG          log filter, e.g. info (default), debug, pixelhub=debug,info"
)]
pub struct Cli {
    /// Settings of the hub, when no command is given.
    #[command(flatten)]
    pub config: Config,
    /// A tool to run instead of the hub.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools besides serving.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Uploads a Registrations or Sales CSV file to a running hub, streaming it, and prints the summary
    /// (exit 0: every row imported; 3: some rows were refused, listed by line; 1: the upload failed).
    Import(ImportArgs),
}

/// `pixelhub import`.
#[derive(Clone, Debug, Args)]
pub struct ImportArgs {
    /// The CSV file; `-` reads standard input.
    pub file: PathBuf,
    /// The brand the rows belong to.
    #[arg(long)]
    pub brand: String,
    /// `registrations` or `sales`.
    #[arg(long = "type", value_parser = ["registrations", "sales"])]
    pub kind: String,
    /// Column mapping for headers the hub does not know, e.g. "Customer ID:player_id,Deposits:amount".
    #[arg(long)]
    pub map: Option<String>,
    /// Base URL of the running hub.
    #[arg(long, env = "PIXELHUB_URL", default_value = "http://127.0.0.1:8080")]
    pub hub: String,
    /// File with the admin token, read when PIXELHUB_ADMIN_TOKEN is unset (the hub's default data dir
    /// keeps its generated token here).
    #[arg(long, default_value = "./data/admin-token")]
    pub token_file: PathBuf,
}

impl Cli {
    /// Reads flags and environment variables, exiting with a message naming the setting on a bad value.
    pub fn from_env_and_args() -> Self {
        let mut cli = Cli::parse();
        cli.config.admin_token = std::env::var("PIXELHUB_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        cli
    }
}

/// How the hub is configured.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "PIXELHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "PIXELHUB_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Bearer token for the /api/v1 admin API, at least 16 characters. When unset, a token is generated
    /// once and kept in <data-dir>/admin-token (mode 0600). Only read from the environment, so it never
    /// shows in a process listing.
    #[arg(skip)]
    pub admin_token: Option<String>,

    /// Time to live of a pixel queued without `ttl_seconds`, in seconds (default: 30 days).
    #[arg(long, env = "PIXELHUB_DEFAULT_TTL_SECONDS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..=crate::pixel::MAX_TTL_SECONDS))]
    pub default_ttl_seconds: u64,

    /// Megabytes of the embedded store's page cache, most of the hub's memory once its data outgrows it.
    #[arg(long, env = "PIXELHUB_STORE_CACHE_MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(8..=65_536))]
    pub store_cache_mb: u64,

    /// Days a pixel's or postback's delivery record (report row and idempotency entry) and an event's
    /// record are kept after they stop changing; an event's record is also kept while its pixels can fire.
    #[arg(long, env = "PIXELHUB_REPORT_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub report_retention_days: u64,

    /// Milliseconds an S2S postback attempt may take, from connecting to the answer's status and first bytes.
    #[arg(long, env = "PIXELHUB_S2S_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub s2s_timeout_ms: u64,

    /// Attempts per S2S postback (the first included) before it is marked failed.
    #[arg(long, env = "PIXELHUB_S2S_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=50))]
    pub s2s_max_attempts: u64,

    /// Milliseconds before the first S2S retry; each later wait is three times longer, with jitter (the
    /// default spreads 8 attempts over about a day).
    #[arg(long, env = "PIXELHUB_S2S_RETRY_BASE_MS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub s2s_retry_base_ms: u64,

    /// S2S postbacks in flight at once, over all endpoints.
    #[arg(long, env = "PIXELHUB_S2S_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub s2s_concurrency: u64,

    /// S2S postbacks in flight at once to one host (host:port): a slow or dead endpoint holds no more.
    #[arg(long, env = "PIXELHUB_S2S_PER_HOST", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub s2s_per_host: u64,

    /// Redirects an S2S postback follows (http and https only) before it counts as failed.
    #[arg(long, env = "PIXELHUB_S2S_MAX_REDIRECTS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=20))]
    pub s2s_max_redirects: u64,

    /// Failed postback attempts in a row after which a definition is flagged in its health.
    #[arg(long, env = "PIXELHUB_S2S_FAILURE_THRESHOLD", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub s2s_failure_threshold: u64,

    /// Also disable a definition when it reaches the failure threshold (as Everflow does).
    #[arg(long, env = "PIXELHUB_S2S_AUTO_DISABLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s2s_auto_disable: bool,

    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, env = "PIXELHUB_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Largest WebSocket message a client may send, in bytes; larger ones close the session (4504).
    #[arg(long, env = "PIXELHUB_WS_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u64).range(512..=16 * 1024 * 1024))]
    pub ws_max_message_bytes: u64,

    /// Milliseconds a new WebSocket has to send its hello before it is closed (4002).
    #[arg(long, env = "PIXELHUB_HELLO_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub hello_timeout_ms: u64,

    /// Milliseconds between server pings; a session silent for two intervals is closed (4001).
    #[arg(long, env = "PIXELHUB_HEARTBEAT_MS", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub heartbeat_ms: u64,

    /// Milliseconds a client may take to accept one of our frames before it is closed as slow (4003).
    #[arg(long, env = "PIXELHUB_WRITE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub write_timeout_ms: u64,

    /// Most pixels sent to one session and not yet acknowledged.
    #[arg(long, env = "PIXELHUB_DELIVERY_WINDOW", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub delivery_window: u64,

    /// Serve the demo brand site at /demo and let it queue pixels for the `demo` brand without a token.
    /// Turn off in production.
    #[arg(long, env = "PIXELHUB_DEMO", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo: bool,
}

/// Shortest admin token accepted from the environment.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl Config {
    /// A configuration for tests and embedding: defaults everywhere, the given data dir, a random port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["pixelhub"]).config;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config
    }

    /// Checks what clap cannot: relations between settings and the admin token's strength.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(token) = &self.admin_token {
            if token.len() < MIN_ADMIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "PIXELHUB_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces"
                ));
            }
        }
        if self.hello_timeout_ms > self.heartbeat_ms * 2 {
            return Err("PIXELHUB_HELLO_TIMEOUT_MS must not exceed two heartbeat intervals".into());
        }
        Ok(())
    }

    /// See [`Config::hello_timeout_ms`].
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    /// See [`Config::heartbeat_ms`].
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// See [`Config::write_timeout_ms`].
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Cli::parse_from(["pixelhub"]).config;
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.default_ttl_seconds, 2_592_000);
        assert!(c.demo);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn weak_admin_tokens_are_refused_by_name() {
        let mut c = Cli::parse_from(["pixelhub"]).config;
        c.admin_token = Some("short".into());
        assert!(c.validate().unwrap_err().contains("PIXELHUB_ADMIN_TOKEN"));
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        let e = Cli::try_parse_from(["pixelhub", "--delivery-window", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--delivery-window"), "{e}");
    }
}
