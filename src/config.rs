//! Settings, from flags, environment variables or a TOML file; `pixelhub --help` lists each with its
//! default.
//!
//! One model, three sources: every setting is a field of [`Config`] with a flag (`--heartbeat-ms`), an
//! environment variable (`PIXELHUB_HEARTBEAT_MS`) and a key of the `--config` file (`heartbeat_ms`).
//! A flag wins over the environment, which wins over the file, which wins over the default. The file's
//! values go through the same parsers as flags, so they are checked the same way.
//!
//! Everything has a default that works on a laptop, so `cargo run --release` with no arguments starts a hub
//! that a newcomer can use. Values are checked here, at start-up, with a message naming the setting, so a
//! typo never turns into a mysterious failure later.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::store::OnFull;

/// The command line: the hub's settings, or a tool such as `import` that talks to a running hub.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pixelhub",
    version,
    about = "Delivers affiliate conversion pixels to players' browsers, exactly once.",
    args_conflicts_with_subcommands = true,
    after_help = "Every setting can also be a key of the --config TOML file, named like its flag with \
        underscores (heartbeat_ms = 25000). A flag wins over its environment variable, which wins over the \
        file, which wins over the default.\n\n\
        Environment or file only:\n  \
        PIXELHUB_ADMIN_TOKEN  (file key admin_token) bearer token of the /api/v1 admin API and /dashboard, at\n                        \
        least 16 characters; when unset, one is generated once and kept in <data-dir>/admin-token (mode 0600)"
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
    /// Makes a damaged journal open again (the hub refuses to start on one, naming the file and byte):
    /// keeps every intact record, turns the damaged bytes into holes, and prints what it dropped. Run
    /// it with the hub stopped.
    RepairJournal(RepairArgs),
}

/// `pixelhub repair-journal`.
#[derive(Clone, Debug, Args)]
pub struct RepairArgs {
    /// The hub's data dir (the journal is in its `sled/journal`).
    #[arg(long, env = "PIXELHUB_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
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
    /// Reads flags, environment variables and the `--config` file, exiting with a message naming the
    /// setting on a bad value.
    pub fn from_env_and_args() -> Self {
        Self::load(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::from_env_and_args`] without exiting, for tests and embedding.
    pub fn load(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Self, clap::Error> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(&args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let mut file_token = None;
        if let (Some(path), None) = (&cli.config.config, &cli.command) {
            let (extra, token) = file_settings(path, &matches)?;
            file_token = token;
            if !extra.is_empty() {
                cli = Cli::try_parse_from(args.iter().cloned().chain(extra))?;
            }
        }
        cli.config.admin_token = std::env::var("PIXELHUB_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or(file_token);
        Ok(cli)
    }
}

/// Reads the TOML file into flags for the settings that neither a flag nor the environment gave, each
/// checked on its own so an error names the file and the key. Returns them and the file's admin token.
fn file_settings(
    path: &Path,
    matches: &clap::ArgMatches,
) -> Result<(Vec<OsString>, Option<String>), clap::Error> {
    let fail = |message: String| {
        Cli::command().error(
            clap::error::ErrorKind::InvalidValue,
            format!("config file {}: {message}", path.display()),
        )
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.to_string()))?;
    let command = Cli::command();
    let mut flags = Vec::new();
    let mut token = None;
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(fail(format!(
                    "{key}: expected a string, number or boolean, found {}",
                    other.type_str()
                )));
            }
        };
        if key == "admin_token" {
            token = Some(text);
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != "config")
            .ok_or_else(|| fail(format!("unknown setting `{key}` (see pixelhub --help)")))?;
        if matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue; // a flag or the environment gave it
        }
        let flag = format!("--{}={text}", arg.get_long().expect("checked above"));
        Cli::try_parse_from(["pixelhub", flag.as_str()])
            .map_err(|e| fail(format!("{key}: {}", first_line(&e))))?;
        flags.push(flag.into());
    }
    Ok((flags, token))
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, with the span fields (session, brand, player, request), for log shippers.
    Json,
}

/// clap's message without its usage footer: the first line, after `error: `.
fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// A public base URL: absolute http(s), a host, no credentials, query or fragment; kept without its
/// trailing slash so paths append to it.
fn public_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value.trim())
        .map_err(|e| format!("not a URL ({e}); e.g. https://hub.example"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(
            "must be an http(s) URL with a host and no credentials, query or fragment, e.g. https://hub.example"
                .into(),
        );
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log filter ({e}); e.g. info, debug, pixelhub=debug,info"))
}

/// Which engine keeps the hub's state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded database in the data dir: every `202` is fsync'd.
    Sled,
    /// This process's memory: nothing survives a restart.
    Memory,
    /// A Redis server (`redis://` or `rediss://` URL) or cluster (`redis+cluster://`): every hub
    /// process on it is one hub.
    Redis(String),
}

impl StoreKind {
    /// `sled`, `memory`, or a Redis URL (`redis://[user:pass@]host:port/db`, `rediss://` for TLS).
    pub fn parse(value: &str) -> Result<StoreKind, String> {
        match value {
            "sled" => Ok(StoreKind::Sled),
            "memory" => Ok(StoreKind::Memory),
            url if url.starts_with("redis") => {
                crate::store::redis::Target::parse(url)?;
                Ok(StoreKind::Redis(url.to_owned()))
            }
            _ => Err(
                "expected sled, memory, or a Redis URL (redis://[user:pass@]host:port/db, rediss:// for TLS, redis+cluster://host:port,host:port for a cluster)"
                    .into(),
            ),
        }
    }

    /// The engine's name, for logs and `/api/v1/stats`.
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Sled => "sled",
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
        }
    }
}

impl std::fmt::Debug for StoreKind {
    /// A Redis URL's password never shows (the config is logged at start).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Redis(url) => {
                // `scheme://user:pass@hosts…`: the password replaced, whatever the hosts look like.
                let shown = match url.split_once("://") {
                    Some((scheme, rest)) => match rest.rsplit_once('@') {
                        Some((credentials, hosts)) => {
                            let user = credentials.split(':').next().unwrap_or("");
                            format!("{scheme}://{user}:***@{hosts}")
                        }
                        None => url.clone(),
                    },
                    None => url.clone(),
                };
                write!(f, "Redis({shown})")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// Whether the hub may run on a store that can lose what it acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDurability {
    /// Refuse to start on a Redis whose settings can lose an acknowledged write.
    Strict,
    /// Start anyway, saying so in the log and in `/api/v1/stats`.
    Relaxed,
}

/// How the hub is configured.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// TOML file of settings, keys named like the flags with underscores (see below).
    #[arg(long, env = "PIXELHUB_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "PIXELHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "PIXELHUB_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where the hub keeps its state: `sled`, the embedded database in `--data-dir`, durable; `memory`,
    /// this process's memory only, NOT durable (a restart loses every brand, pixel and event), for
    /// development and tests; or a Redis URL, `redis://[user:pass@]host:port/db` (`rediss://` for TLS;
    /// `redis+cluster://host:port,host:port` for a Redis Cluster), on which every hub process is one
    /// hub (docs/scaling.md).
    #[arg(long, env = "PIXELHUB_STORE", default_value = "sled", value_parser = StoreKind::parse)]
    pub store: StoreKind,

    /// On Redis, `strict` refuses to start when Redis's settings can lose an acknowledged pixel
    /// (`appendonly no`, `appendfsync` other than `always`, an evicting `maxmemory-policy`);
    /// `relaxed` starts anyway, and says so in the log and in /api/v1/stats.
    #[arg(long, env = "PIXELHUB_STORE_DURABILITY", value_enum, default_value_t = StoreDurability::Strict)]
    pub store_durability: StoreDurability,

    /// Bearer token for the /api/v1 admin API, at least 16 characters. When unset, a token is generated
    /// once and kept in <data-dir>/admin-token (mode 0600). Only read from the environment, so it never
    /// shows in a process listing.
    #[arg(skip)]
    pub admin_token: Option<String>,

    /// Time to live of a pixel queued without `ttl_seconds`, in seconds (default: 30 days).
    #[arg(long, env = "PIXELHUB_DEFAULT_TTL_SECONDS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..=crate::pixel::MAX_TTL_SECONDS))]
    pub default_ttl_seconds: u64,

    /// Most pending client pixels per player; what happens beyond is --queue-full.
    #[arg(long, env = "PIXELHUB_MAX_QUEUE_PER_PLAYER", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue_per_player: u64,

    /// At the per-player cap: `reject` refuses the batch (HTTP 429 queue_full, nothing written);
    /// `drop-oldest` drops the player's oldest pixels no browser holds, reported as `dropped`.
    #[arg(long, env = "PIXELHUB_QUEUE_FULL", value_enum, default_value_t = OnFull::Reject)]
    pub queue_full: OnFull,

    /// Megabytes of the embedded store's page cache, most of the hub's memory once its data outgrows it:
    /// resident memory grows about 1 MB per MB of it (freed memory is given back every 10 s). Besides the
    /// cache, the store keeps about 55 MB per GB of data in memory for its page index.
    #[arg(long, env = "PIXELHUB_STORE_CACHE_MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(8..=65_536))]
    pub store_cache_mb: u64,

    /// Megabytes of each journal segment, the file every write is made durable in before it is
    /// answered. Segments are zero-filled ahead of use (the current one and the next: twice this much
    /// disk), so a sync writes data only; a segment is deleted once the store's checkpoint holds it.
    /// Smaller suits a small disk; larger rotates less often.
    #[arg(long, env = "PIXELHUB_JOURNAL_SEGMENT_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub journal_segment_mb: u64,

    /// Milliseconds a request waits for one store call before it is answered 503 store_unavailable; the
    /// hub never hangs on its store. Calls that keep timing out for three such deadlines make /healthz
    /// unhealthy, so an orchestrator restarts the hub.
    #[arg(long, env = "PIXELHUB_STORE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(50..=120_000))]
    pub store_timeout_ms: u64,

    /// Megabytes the data dir's filesystem must keep free: under this floor, writes that grow the store
    /// (queueing, events, definitions) are refused with 507 insufficient_storage, while reads, acks,
    /// deletes and the sweeper go on; they resume by themselves when there is room. 0 turns it off.
    #[arg(long, env = "PIXELHUB_STORE_MIN_FREE_MB", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub store_min_free_mb: u64,

    /// Most bytes the store may take on disk, as a cap on the data dir (checked four times a second);
    /// at it, writes that grow the store are refused as under --store-min-free-mb. 0: no cap.
    #[arg(long, env = "PIXELHUB_STORE_MAX_BYTES", default_value_t = 0)]
    pub store_max_bytes: u64,

    /// New events one brand may report per UTC day (duplicates not counted); past it, event batches
    /// (JSON, inbound URLs, CSV rows) are refused with 429 quota_exceeded until midnight UTC. Counted per
    /// process. 0: no quota.
    #[arg(
        long,
        env = "PIXELHUB_QUOTA_EVENTS_PER_DAY",
        default_value_t = 1_000_000
    )]
    pub quota_events_per_day: u64,

    /// Players one brand may have an attribution context for (what registrations leave); past it,
    /// events of new players are refused with 429 quota_exceeded. 0: no quota.
    #[arg(long, env = "PIXELHUB_QUOTA_PLAYERS", default_value_t = 10_000_000)]
    pub quota_players: u64,

    /// Postbacks one brand may have waiting in the outbox (due, retrying, being sent); past it, events
    /// that would add postbacks are refused with 429 quota_exceeded. 0: no quota.
    #[arg(long, env = "PIXELHUB_QUOTA_OUTBOX", default_value_t = 100_000)]
    pub quota_outbox: u64,

    /// Inbound postback URL calls a second one brand may receive on average (bursts of twice that); a
    /// faster caller gets 429 rate_limited with Retry-After.
    #[arg(long, env = "PIXELHUB_INBOUND_RATE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub inbound_rate: u32,

    /// Most params one event may carry (JSON, inbound URL or CSV row); more: 422 too_many_params.
    #[arg(long, env = "PIXELHUB_MAX_PARAMS_PER_EVENT", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub max_params_per_event: u64,

    /// Longest text param value, in bytes; longer: 422 param_too_long.
    #[arg(long, env = "PIXELHUB_MAX_PARAM_BYTES", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(16..=2048))]
    pub max_param_bytes: u64,

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

    /// S2S postbacks in flight at once of one brand, over all its endpoints: one brand's backlog to many
    /// slow hosts leaves the other slots to the other brands.
    #[arg(long, env = "PIXELHUB_S2S_PER_BRAND", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub s2s_per_brand: u64,

    /// Redirects an S2S postback follows (http and https only) before it counts as failed.
    #[arg(long, env = "PIXELHUB_S2S_MAX_REDIRECTS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=20))]
    pub s2s_max_redirects: u64,

    /// Failed postback attempts in a row after which a definition is flagged in its health.
    #[arg(long, env = "PIXELHUB_S2S_FAILURE_THRESHOLD", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub s2s_failure_threshold: u64,

    /// Networks (CIDRs or addresses, comma-separated, e.g. 10.1.0.0/16,127.0.0.1) that S2S postbacks may
    /// reach although they are not public: on-premise affiliate systems, tests. Without it, postbacks go to
    /// public addresses only (and to the demo's own receiver); loopback, private, link-local and other
    /// non-public destinations are refused, checked on the address connected to.
    #[arg(long, env = "PIXELHUB_S2S_ALLOW_NETWORKS", value_delimiter = ',',
          value_parser = crate::limits::parse_net)]
    pub s2s_allow_networks: Vec<ipnet::IpNet>,

    /// Also disable a definition when it reaches the failure threshold (as Everflow does).
    #[arg(long, env = "PIXELHUB_S2S_AUTO_DISABLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s2s_auto_disable: bool,

    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, env = "PIXELHUB_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Milliseconds a request's body may take to arrive once its headers have (a file upload: the longest
    /// it may go without sending anything); then 408 body_timeout and the connection is closed. Stops
    /// clients that hold connections by trickling a body.
    #[arg(long, env = "PIXELHUB_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub body_timeout_ms: u64,

    /// Largest WebSocket message a client may send, in bytes; larger ones close the session (4504).
    #[arg(long, env = "PIXELHUB_WS_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u64).range(512..=16 * 1024 * 1024))]
    pub ws_max_message_bytes: u64,

    /// Most pixels or events in one API request's array; more are refused (422 batch_too_large).
    #[arg(long, env = "PIXELHUB_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_batch: u64,

    /// Messages a second a WebSocket client may send on average (bursts of twice that); a faster client
    /// is closed (4005) and comes back after its backoff. The browser client sends a few a minute.
    #[arg(long, env = "PIXELHUB_WS_MAX_MESSAGES_PER_SECOND", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ws_max_messages_per_second: u32,

    /// Sessions one player may hold in this process (tabs, windows); one more is closed (4006) and
    /// retries after its backoff.
    #[arg(long, env = "PIXELHUB_MAX_SESSIONS_PER_PLAYER", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_sessions_per_player: u32,

    /// Open connections one client address (an IPv6 /64) may hold, HTTP and WebSocket; more are answered
    /// 429 too_many_connections. Players behind one carrier-grade NAT share an address: keep it generous.
    /// Behind a proxy, list the proxy in --trusted-proxies, or all its clients share one address.
    #[arg(long, env = "PIXELHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_ip: u32,

    /// Milliseconds a connection may take to send a request's headers (or its TLS handshake), and may
    /// sit idle between requests; then it is closed. Stops slow-loris clients holding sockets.
    #[arg(long, env = "PIXELHUB_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,

    /// Proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For names the client;
    /// from anyone else the header is ignored. Their own connections are neither capped per address nor
    /// closed by the header timeout. Empty: connections are the clients themselves.
    #[arg(long, env = "PIXELHUB_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = crate::limits::parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// The hub's public base URL (https://hub.example, or with a path prefix behind a proxy): URLs the API
    /// hands out (inbound postback URLs, the demo's pixels) are built on it. Unset, they are built from the
    /// request's Host header (and X-Forwarded-Proto).
    #[arg(long, env = "PIXELHUB_PUBLIC_URL", value_parser = public_url)]
    pub public_url: Option<String>,

    /// PEM certificate chain to serve HTTPS and wss:// with (with --tls-key); reloaded when the file
    /// changes or on SIGHUP. Without it the hub speaks plain HTTP, for a TLS-terminating proxy.
    #[arg(long, env = "PIXELHUB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "PIXELHUB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Milliseconds a new WebSocket has to send its hello before it is closed (4002).
    #[arg(long, env = "PIXELHUB_HELLO_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub hello_timeout_ms: u64,

    /// Milliseconds between server pings; a session silent for two intervals is closed (4001).
    #[arg(long, env = "PIXELHUB_HEARTBEAT_MS", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub heartbeat_ms: u64,

    /// Milliseconds a player's lease lasts unless its holder renews it: how long a player's pixels in
    /// flight wait after their session's process died before another session gets them (default: three
    /// heartbeats, at most 15 s). A holder with pixels in flight renews it every third of it.
    #[arg(long, env = "PIXELHUB_LEASE_TTL_MS",
          value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub lease_ttl_ms: Option<u64>,

    /// Milliseconds a client may take to accept one of our frames before it is closed as slow (4003).
    #[arg(long, env = "PIXELHUB_WRITE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub write_timeout_ms: u64,

    /// Most pixels sent to one session and not yet acknowledged.
    #[arg(long, env = "PIXELHUB_DELIVERY_WINDOW", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub delivery_window: u64,

    /// Milliseconds a shutdown (SIGTERM, SIGINT) may take: sessions are told to reconnect elsewhere (4000),
    /// requests in flight finish, the store is flushed; past this bound the hub stops waiting and exits.
    #[arg(long, env = "PIXELHUB_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub shutdown_timeout_ms: u64,

    /// Milliseconds to keep serving after the signal with /readyz answering 503 and new WebSockets
    /// refused, before sessions are closed: time for a load balancer to take the hub out of rotation.
    #[arg(long, env = "PIXELHUB_SHUTDOWN_DELAY_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub shutdown_delay_ms: u64,

    /// Log filter: a level (error, warn, info, debug, trace) or per-module directives such as
    /// pixelhub=debug,info.
    #[arg(long, env = "PIXELHUB_LOG_LEVEL", default_value = "info", value_parser = log_filter)]
    pub log_level: String,

    /// Log format: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, env = "PIXELHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve /metrics without the admin token, for a Prometheus on a private network. Off by default:
    /// the metrics name brands and their volumes.
    #[arg(long, env = "PIXELHUB_PUBLIC_METRICS", default_value_t = false, action = clap::ArgAction::Set)]
    pub public_metrics: bool,

    /// Serve the demo brand site at /demo and let it queue pixels for the `demo` brand without a token
    /// (capped and rate-limited). Default: on when --listen is a loopback address, off otherwise; keep
    /// it off in production.
    #[arg(long, env = "PIXELHUB_DEMO", action = clap::ArgAction::Set)]
    pub demo: Option<bool>,
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
        if let Some(token) = &self.admin_token
            && (token.len() < MIN_ADMIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "PIXELHUB_ADMIN_TOKEN (or admin_token in the config file) must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces"
            ));
        }
        if self.shutdown_delay_ms >= self.shutdown_timeout_ms {
            return Err(
                "PIXELHUB_SHUTDOWN_DELAY_MS must be shorter than PIXELHUB_SHUTDOWN_TIMEOUT_MS"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(
                "PIXELHUB_TLS_CERT and PIXELHUB_TLS_KEY go together: set both, or neither".into(),
            );
        }
        if self.hello_timeout_ms > self.heartbeat_ms * 2 {
            return Err("PIXELHUB_HELLO_TIMEOUT_MS must not exceed two heartbeat intervals".into());
        }
        Ok(())
    }

    /// Whether the demo is served: as set, or when the hub listens on loopback only.
    pub fn demo_enabled(&self) -> bool {
        self.demo.unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// See [`Config::hello_timeout_ms`].
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    /// See [`Config::heartbeat_ms`].
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// See [`Config::lease_ttl_ms`].
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl_ms.map_or_else(
            || (self.heartbeat() * 3).min(Duration::from_secs(15)),
            Duration::from_millis,
        )
    }

    /// See [`Config::write_timeout_ms`].
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// See [`Config::shutdown_timeout_ms`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// See [`Config::header_timeout_ms`].
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// The store guard's settings: deadline, free-space floor and size cap.
    pub fn store_guard(&self) -> crate::store::GuardOptions {
        crate::store::GuardOptions {
            timeout: Duration::from_millis(self.store_timeout_ms),
            min_free_bytes: self.store_min_free_mb << 20,
            max_bytes: (self.store_max_bytes > 0).then_some(self.store_max_bytes),
            restart_when_stuck: !matches!(self.store, StoreKind::Redis(_)),
        }
    }

    /// The per-brand quotas.
    pub fn quotas(&self) -> crate::store::Quotas {
        crate::store::Quotas {
            events_per_day: self.quota_events_per_day,
            players: self.quota_players,
            outbox: self.quota_outbox,
        }
    }

    /// The limits on an event's params.
    pub fn param_limits(&self) -> crate::event::ParamLimits {
        crate::event::ParamLimits {
            max_params: self.max_params_per_event as usize,
            max_value_bytes: self.max_param_bytes as usize,
        }
    }

    /// See [`Config::max_queue_per_player`].
    pub fn queue_cap(&self) -> crate::store::QueueCap {
        crate::store::QueueCap {
            max_per_player: self.max_queue_per_player,
            on_full: self.queue_full,
        }
    }

    /// What the ledger's rules follow. A player's lease lasts three heartbeats: its holder renews it at
    /// every heartbeat, so only a holder that stopped (its process gone) lets it run out.
    pub fn ledger_options(&self) -> crate::ledger::Options {
        crate::ledger::Options {
            default_ttl: Duration::from_secs(self.default_ttl_seconds),
            retention: Duration::from_secs(self.report_retention_days * 24 * 3600),
            queue_cap: self.queue_cap(),
            lease_ttl: self.lease_ttl(),
            quotas: self.quotas(),
        }
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
        assert!(c.demo_enabled(), "on loopback, the demo is on");
        let public = Cli::parse_from(["pixelhub", "--listen", "0.0.0.0:8080"]).config;
        assert!(
            !public.demo_enabled(),
            "reachable from the network, it is off"
        );
        let asked =
            Cli::parse_from(["pixelhub", "--listen", "0.0.0.0:8080", "--demo", "true"]).config;
        assert!(asked.demo_enabled(), "unless the operator turns it on");
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

    #[test]
    fn a_redis_password_never_shows() {
        for url in [
            "redis://hub:s3cret@10.0.0.1:6379/0",
            "redis+cluster://hub:s3cret@10.0.0.1:7000,10.0.0.2:7001",
        ] {
            let shown = format!("{:?}", StoreKind::parse(url).unwrap());
            assert!(
                !shown.contains("s3cret") && shown.contains("hub:***@"),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_lease_lasts_three_heartbeats_at_most_15_s_unless_set() {
        let lease = |args: &[&str]| {
            let mut all = vec!["pixelhub"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().config.lease_ttl()
        };
        assert_eq!(
            lease(&[]),
            Duration::from_secs(15),
            "25 s heartbeats: capped"
        );
        assert_eq!(lease(&["--heartbeat-ms", "1000"]), Duration::from_secs(3));
        assert_eq!(lease(&["--lease-ttl-ms", "60000"]), Duration::from_secs(60));
    }

    fn with_file(toml: &str, args: &[&str]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pixelhub.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec![
            "pixelhub".to_owned(),
            format!("--config={}", path.display()),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        Cli::load(argv)
            .map(|cli| cli.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_sets_what_flags_leave_at_the_default() {
        let c = with_file(
            "heartbeat_ms = 30000\nqueue_full = \"drop-oldest\"\ndemo = false\nlisten = \"127.0.0.1:9000\"\n",
            &["--heartbeat-ms", "40000"],
        )
        .unwrap();
        assert_eq!(c.heartbeat_ms, 40_000, "the flag wins over the file");
        assert_eq!(c.queue_full, OnFull::DropOldest);
        assert_eq!(c.demo, Some(false));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn a_file_sets_settings_without_a_default_too() {
        let c = with_file(
            "tls_cert = \"/etc/hub/cert.pem\"\ntls_key = \"/etc/hub/key.pem\"\ntrusted_proxies = \"10.0.0.0/8, 127.0.0.1\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/hub/cert.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/hub/key.pem")));
        assert_eq!(c.trusted_proxies.len(), 2);
        let c = with_file(
            "tls_cert = \"/a\"\n",
            &["--tls-cert", "/b", "--tls-key", "/k"],
        )
        .unwrap();
        assert_eq!(
            c.tls_cert,
            Some(PathBuf::from("/b")),
            "the flag wins over the file"
        );
    }

    #[test]
    fn a_bad_file_value_names_the_file_and_the_key() {
        let e = with_file("heartbeat_ms = 0\n", &[]).unwrap_err();
        assert!(
            e.contains("pixelhub.toml") && e.contains("heartbeat_ms"),
            "{e}"
        );
        let e = with_file("heartbeat = 5\n", &[]).unwrap_err();
        assert!(e.contains("unknown setting `heartbeat`"), "{e}");
        let e = with_file("log_format = \"xml\"\n", &[]).unwrap_err();
        assert!(e.contains("log_format"), "{e}");
        let e = with_file("heartbeat_ms = [1]\n", &[]).unwrap_err();
        assert!(e.contains("heartbeat_ms: expected"), "{e}");
        let e = with_file("heartbeat_ms = \n", &[]).unwrap_err();
        assert!(e.contains("pixelhub.toml"), "{e}");
    }

    #[test]
    fn the_public_url_is_a_plain_base() {
        let parse = |v: &str| {
            Cli::try_parse_from(["pixelhub", "--public-url", v]).map(|c| c.config.public_url)
        };
        assert_eq!(
            parse("https://hub.example/").unwrap().as_deref(),
            Some("https://hub.example")
        );
        assert_eq!(
            parse("https://hub.example/px/").unwrap().as_deref(),
            Some("https://hub.example/px")
        );
        for bad in [
            "hub.example",
            "ftp://hub.example",
            "https://u:p@hub.example",
            "https://hub.example/?a=1",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--public-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_log_filter_is_refused_by_name() {
        let e = Cli::try_parse_from(["pixelhub", "--log-level", "pixelhub=loud"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-level"), "{e}");
    }
}
