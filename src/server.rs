//! Start-up and shutdown: from a [`Config`] to a running hub, and back to a closed store.
//!
//! [`Application::build`] binds the listener (port 0 works, for tests) and opens the store;
//! [`Application::run_until`] serves until a signal, then drains in order, within the shutdown timeout:
//! `/readyz` answers 503 and new WebSockets are refused (for `--shutdown-delay-ms`, so a load balancer
//! notices while the hub still serves), then the listener stops, every session is told to reconnect
//! elsewhere (close code 4000), requests in flight finish, background tasks stop and the store is
//! flushed. The accept loop ([`crate::net`]) does not wait for upgraded WebSockets, so sessions are tracked here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::api::{self, AppState, DemoLog, History};
use crate::brand::BrandSettings;
use crate::clock::SharedClock;
use crate::config::{Config, MIN_ADMIN_TOKEN_LEN, StoreDurability, StoreKind};
use crate::egress::Egress;
use crate::hub::Hub;
use crate::ids::{BrandId, random_hex};
use crate::ledger::{Engines, Ledger};
use crate::limits::{PerIp, TrustedProxies};
use crate::metrics::Metrics;
use crate::net::{self, Tls};
use crate::pixel::PixelKind;
use crate::postback::{self, Policy, SenderStats};
use crate::store::memory::MemoryStore;
use crate::store::redis::{Durability, RedisStore};
use crate::store::{GuardedStore, Measure, Room, SledOptions, SledStore, StoreError};

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory or the admin token file could not be used.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The store could not be opened (for sled: another hub may be using the same data dir).
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The data dir's disk is too full to open the store safely.
    #[error(
        "the disk holding {path} has {free_mb} MB free; the store needs at least {need_mb} MB to open safely (opening sled on a full disk can damage it). Free some space and start the hub again"
    )]
    NoRoom {
        /// The data dir.
        path: PathBuf,
        /// Free megabytes now.
        free_mb: u64,
        /// Megabytes needed.
        need_mb: u64,
    },
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What went wrong.
        source: io::Error,
    },
}

/// Opens the embedded engine in the data dir, after checking its disk has room to open safely.
async fn open_sled(
    config: &Config,
    metrics: &Arc<Metrics>,
    clock: &SharedClock,
) -> Result<(Engines, Measure), StartError> {
    // sled, opened on a full disk, can leave its files unreadable (seen on a tmpfs: every open after
    // one attempted at 0 bytes free failed with "corrupted data"). So a start on a nearly full disk
    // stops before touching the store, and a supervisor's restarts are harmless until there is room.
    // Between this and the floor, the hub starts and refuses only the writes that grow the store.
    // The journal's current segment and the next are zero-filled at open.
    let need = MIN_FREE_TO_OPEN + 2 * (config.journal_segment_mb << 20);
    let free = fs2::available_space(&config.data_dir).map_err(|source| StartError::Io {
        path: config.data_dir.clone(),
        source,
    })?;
    if free < need {
        return Err(StartError::NoRoom {
            path: config.data_dir.clone(),
            free_mb: free >> 20,
            need_mb: need.div_ceil(1 << 20),
        });
    }
    let store_dir = config.data_dir.join(crate::store::STORE_DIR);
    let options = SledOptions {
        cache_bytes: config.store_cache_mb << 20,
        journal_segment_bytes: config.journal_segment_mb << 20,
        metrics: Arc::clone(metrics),
        clock: Arc::clone(clock),
    };
    let engine = {
        let dir = store_dir.clone();
        let open = tokio::task::spawn_blocking(move || SledStore::open(&dir, options));
        open.await
            .map_err(|e| StartError::Config(format!("opening the store panicked: {e}")))??
    };
    let measure: Measure = {
        let engine = engine.clone();
        Arc::new(move || {
            // What the journal holds and sled does not yet is disk the next checkpoint will take:
            // counted as taken already, so the floor holds after it too.
            let pending = engine.pending_bytes();
            Ok(Room {
                free_bytes: fs2::available_space(&store_dir)?.saturating_sub(pending),
                store_bytes: engine.size_on_disk().map_err(std::io::Error::other)? + pending,
            })
        })
    };
    Ok((Engines::one(Arc::new(engine)), measure))
}

/// Room for an engine with no disk of this process's to run out of (memory; Redis, whose memory is
/// Redis's own to bound): never short.
fn unbounded_room() -> Measure {
    Arc::new(|| {
        Ok(Room {
            free_bytes: u64::MAX,
            store_bytes: 0,
        })
    })
}

/// Connects to Redis and reads its durability settings: a Redis that can lose an acknowledged write
/// is refused unless `--store-durability relaxed` says to go on, which is logged and returned (the
/// reasons, for `/api/v1/stats`).
async fn open_redis(
    url: &str,
    config: &Config,
    clock: &SharedClock,
) -> Result<(Engines, Vec<String>), StartError> {
    let shown = format!("{:?}", config.store);
    let engine = RedisStore::connect(url, Arc::clone(clock))
        .await
        .map_err(|e| StartError::Config(format!("cannot reach {shown}: {e}")))?;
    let reasons = match engine.durability().await? {
        Durability::Durable => Vec::new(),
        Durability::Relaxed(reasons) => {
            let listed = reasons.join("; ");
            if config.store_durability == StoreDurability::Strict {
                return Err(StartError::Config(format!(
                    "{shown} can lose pixels the hub has acknowledged: {listed}. Set appendonly yes, appendfsync always and a maxmemory-policy of noeviction (docs/scaling.md), or start with --store-durability relaxed to accept the loss"
                )));
            }
            tracing::warn!(store = %shown, reasons = %listed, "--store-durability relaxed: Redis can lose acknowledged pixels");
            reasons
        }
    };
    tracing::info!(store = %shown, "store: Redis; every hub process on it is one hub");
    Ok((Engines::one(Arc::new(engine)), reasons))
}

/// Free bytes the data dir's disk must have before the store is opened (the floor, `--store-min-free-mb`,
/// only refuses growing writes once it is open).
const MIN_FREE_TO_OPEN: u64 = 16 << 20;

/// A hub ready to serve.
pub struct Application {
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    state: AppState,
    background: TaskTracker,
}

impl Application {
    /// Validates the config, prepares the data dir and admin token, opens the store and binds; on the
    /// system's clock.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_clock(config, crate::clock::system()).await
    }

    /// [`Application::build`] on another clock: tests make hours pass in an instant with a
    /// [`crate::clock::ManualClock`].
    pub async fn build_with_clock(
        config: Config,
        clock: crate::clock::SharedClock,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StartError::Io { path, source }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(io_err(&config.data_dir))?;
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => {
                let path = config.data_dir.join("admin-token");
                load_or_create_token(&path).map_err(io_err(&path))?
            }
        };

        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key).map_err(StartError::Config)?),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let mut relaxed = Vec::new();
        let (engine, measure) = match &config.store {
            StoreKind::Sled => open_sled(&config, &metrics, &clock).await?,
            StoreKind::Redis(url) => {
                let (engines, reasons) = open_redis(url, &config, &clock).await?;
                relaxed = reasons;
                (engines, unbounded_room())
            }
            StoreKind::Memory => {
                tracing::warn!(
                    "--store memory: everything is kept in this process's memory and lost when it stops; for development and tests only"
                );
                let engine = Arc::new(MemoryStore::new(Arc::clone(&clock)));
                (Engines::one(engine), unbounded_room())
            }
        };
        let guarded = Arc::new(GuardedStore::new(
            engine.store,
            engine.catalog,
            engine.queues,
            config.store_guard(),
            measure,
            Arc::clone(&metrics),
        ));
        let store_health = guarded.health();
        let engines = Engines::one(guarded.clone());
        let ledger = Ledger::new(
            engines,
            config.ledger_options(),
            Arc::clone(&metrics),
            Arc::clone(&clock),
        );
        if config.demo_enabled() {
            let demo = BrandId::parse(api::DEMO_BRAND).expect("a valid literal id");
            if ledger.brand(&demo).await?.is_none() {
                // The demo's buttons queue every kind, `js` included: it is a playground on loopback.
                let settings = BrandSettings {
                    name: Some("Demo casino".into()),
                    allowed_kinds: PixelKind::ALL.to_vec(),
                    ..BrandSettings::default()
                };
                ledger.put_brand(&demo, settings).await?;
            }
        }

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let shutdown = CancellationToken::new();
        let background = TaskTracker::new();
        let hub = Hub::default();
        guarded.spawn_monitor(shutdown.clone(), &background);
        ledger.spawn_upkeep(shutdown.clone(), &background);
        crate::memory::spawn_trimmer(shutdown.clone(), &background);
        hub.spawn_background(
            &ledger,
            config.heartbeat(),
            config.lease_ttl(),
            shutdown.clone(),
            &background,
        );

        if let Some(tls) = &tls {
            Arc::clone(tls).watch(Arc::clone(&metrics), shutdown.clone(), &background);
        }

        let egress = Arc::new(Egress::new(
            config.s2s_allow_networks.clone(),
            config.demo_enabled(),
            listener.local_addr().map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?,
        ));
        let postbacks = Arc::new(SenderStats::default());
        postback::spawn(
            postback::SenderParts {
                ledger: ledger.clone(),
                policy: Policy::from_config(&config),
                egress: Arc::clone(&egress),
                stats: Arc::clone(&postbacks),
                metrics: Arc::clone(&metrics),
                clock: Arc::clone(&clock),
            },
            shutdown.clone(),
            &background,
        )
        .map_err(|e| StartError::Config(format!("the S2S HTTP client cannot start: {e}")))?;

        let config_max_per_ip = config.max_connections_per_ip;
        let config_proxies = config.trusted_proxies.clone();
        let config_store_name = config.store.name();
        let durable = config.store != StoreKind::Memory && relaxed.is_empty();
        let state = AppState::new(api::Shared {
            ledger,
            hub,
            config: Arc::new(config),
            admin_token: Arc::from(admin_token),
            shutdown,
            draining: Arc::new(AtomicBool::new(false)),
            sessions: TaskTracker::new(),
            demo: Arc::new(DemoLog::default()),
            postbacks,
            egress,
            store_health,
            metrics,
            history: Arc::new(History::default()),
            metrics_scrape: Arc::default(),
            per_ip: PerIp::new(config_max_per_ip),
            proxies: TrustedProxies::new(config_proxies),
            inbound_rates: Arc::default(),
            clock,
            store_info: api::StoreInfo {
                engine: config_store_name,
                durable,
                relaxed,
            },
        });
        api::spawn_sampler(state.clone(), &background);
        Ok(Self {
            listener,
            tls,
            state,
            background,
        })
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The admin token in force, for the embedding code (tests, tools); never logged.
    pub fn admin_token(&self) -> &str {
        &self.state.admin_token
    }

    /// Serves until `signal` completes, then shuts down cleanly; returns when the store is flushed and
    /// closed, so the same data dir can be opened again at once.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let Application {
            listener,
            tls,
            state,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        let router = api::router(state.clone());
        let guards = net::Guards {
            per_ip: Arc::clone(&state.per_ip),
            proxies: state.proxies.clone(),
            header_timeout: state.config.header_timeout(),
            metrics: Arc::clone(&state.metrics),
        };
        let mut server = tokio::spawn(net::serve(listener, router, tls, guards, shutdown.clone()));

        // The server ends by itself only if its task fails; shut down the rest all the same. A failed
        // store stops the hub too: its failure is never retried, and the next start reads what is on disk.
        let fatal = state.store_health.fatal();
        let ended_early = tokio::select! {
            _ = signal => None,
            _ = shutdown.cancelled() => None,
            _ = fatal.cancelled() => None,
            ended = &mut server => Some(ended),
        };
        let config = &state.config;
        let deadline = tokio::time::Instant::now() + config.shutdown_timeout();
        state.draining.store(true, Ordering::Release);
        tracing::info!(
            sessions = state.hub.session_count(),
            delay_ms = config.shutdown_delay_ms,
            "draining: readyz answers 503, new sessions are refused"
        );
        let delay = Duration::from_millis(config.shutdown_delay_ms);
        tokio::time::sleep_until((tokio::time::Instant::now() + delay).min(deadline)).await;

        // Stops the listener, and tells every session to reconnect elsewhere (4000).
        shutdown.cancel();
        let ended = match ended_early {
            Some(ended) => Ok(ended),
            None => tokio::time::timeout_at(deadline, &mut server).await,
        };
        let served = match ended {
            Ok(Ok(served)) => served,
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => {
                tracing::warn!("requests still running at the shutdown timeout; cutting them off");
                server.abort();
                Ok(())
            }
        };
        state.sessions.close();
        if tokio::time::timeout_at(deadline, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = state.sessions.len(),
                "sessions did not close in time; flushing anyway"
            );
        }
        background.close();
        if tokio::time::timeout_at(deadline, background.wait())
            .await
            .is_err()
        {
            // Postback attempts still running are not recorded: their claims run out and they are
            // sent again after the restart. Nothing is lost.
            tracing::warn!(
                "background work still running at the shutdown timeout; flushing anyway"
            );
        }
        if let Err(e) = state.ledger.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
        if let Some(cause) = state.store_health.failed() {
            tracing::error!(%cause, "stopped because the store failed");
            return Err(io::Error::other(format!(
                "the store failed ({cause}); a failed write is never retried, so the hub stopped. Start it again: it recovers what is on disk, and refuses writes until the disk has room"
            )));
        }
        tracing::info!("stopped");
        served
    }
}

/// Reads the generated admin token, or creates it with mode 0600 on first start.
fn load_or_create_token(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) => {
            let token = token.trim().to_owned();
            if token.len() < MIN_ADMIN_TOKEN_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the admin token file holds no valid token",
                ));
            }
            tracing::info!(path = %path.display(), "admin token read from file");
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = random_hex(32).map_err(|e| io::Error::other(e.to_string()))?;
            write_private(path, &token)?;
            tracing::info!(path = %path.display(), "admin token generated and stored in file (mode 0600)");
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
