//! The Redis engine's checks, each against a redis-server of its own on a free loopback port, its files
//! in a temp dir (never a system service). `scripts/test` installs Debian's `redis-server` when missing.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RedisStore;
use crate::clock::ManualClock;
use crate::ledger::Ledger;
use crate::store::catalog::Catalog;
use crate::store::contract::rules::{self, Harness};

/// A throwaway redis-server, durable as the engine needs it (every write in the append-only file,
/// synced before the reply), no snapshots; killed when dropped.
pub(super) struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub(super) fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server given `extra` settings on its command line too.
    pub(super) fn start_with(extra: &[&str]) -> RedisServer {
        let binary =
            std::env::var("PIXELHUB_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // A free port: bound, read and let go. Another process may take it in between; redis-server then
        // exits, and the next try takes another.
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            let port = free_port(cluster);
            let dir = tempfile::tempdir().expect("a temp dir");
            let mut command = Command::new(&binary);
            // Killed with the thread that started it, should the test process die without dropping
            // it (a test run stopped with SIGKILL would otherwise leave servers behind). Each check
            // starts its servers on its own thread, which outlives them.
            // SAFETY: between fork and exec the closure makes one system call (prctl, plain integers,
            // async-signal-safe) and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ])
                .args(["--daemonize", "no"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting {binary} (scripts/test installs Debian's redis-server): {e}")
                });
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            if server.answers() {
                return server;
            }
        }
        panic!("{binary} did not start on a free loopback port in five tries");
    }

    /// Waits until the server answers `PING`; false if it exited (its port was taken) or never did.
    fn answers(&mut self) -> bool {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            if pong.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A free loopback port: bound, read and let go. For a cluster node, one whose bus port (10,000 above
/// it) is free too.
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let bus_free = || {
            port.checked_add(10_000)
                .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok())
        };
        if !cluster || bus_free() {
            return port;
        }
    }
}

/// A Redis Cluster of three masters on loopback, each a [`RedisServer`], its slots spread by
/// `redis-cli --cluster create`.
pub(super) struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(super) fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let cli = std::env::var("PIXELHUB_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running {cli} (it comes with Debian's redis-server): {e}"));
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            let client = redis::Client::open(node.url()).unwrap();
            loop {
                let info: String = client
                    .get_connection_with_timeout(Duration::from_millis(500))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never got to ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The cluster as `--store` names it.
    pub(super) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// One cluster; each handle a cluster connection of its own.
struct RedisClusterHarness {
    cluster: RedisCluster,
    clock: Arc<ManualClock>,
}

impl RedisClusterHarness {
    fn new() -> Self {
        RedisClusterHarness {
            cluster: RedisCluster::start(),
            clock: ManualClock::starting_now(),
        }
    }
}

impl Harness for RedisClusterHarness {
    async fn open(&self) -> Ledger {
        let store = RedisStore::connect(&self.cluster.url(), self.clock.clone())
            .await
            .unwrap();
        rules::ledger_over(Arc::new(store), self.clock.clone())
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

/// The whole contract again, on a cluster: every script and pipeline keeps to one slot.
mod on_a_cluster {
    use super::*;

    crate::rules_contract!(RedisClusterHarness::new());
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One redis-server; each handle a connection of its own, as another hub process would hold.
struct RedisCatalogHarness {
    server: RedisServer,
}

impl crate::store::contract::catalog::CatalogHarness for RedisCatalogHarness {
    async fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::new(
            RedisStore::connect(&self.server.url(), crate::clock::system())
                .await
                .unwrap(),
        )
    }
}

crate::catalog_contract!(RedisCatalogHarness {
    server: RedisServer::start()
});

/// One redis-server on a clock the checks move; every `open` is a new connection to it, as another
/// hub process would open.
struct RedisRulesHarness {
    server: RedisServer,
    clock: Arc<ManualClock>,
}

impl RedisRulesHarness {
    fn new() -> Self {
        RedisRulesHarness {
            server: RedisServer::start(),
            clock: ManualClock::starting_now(),
        }
    }
}

impl Harness for RedisRulesHarness {
    async fn open(&self) -> Ledger {
        let store = RedisStore::connect(&self.server.url(), self.clock.clone())
            .await
            .unwrap();
        rules::ledger_over(Arc::new(store), self.clock.clone())
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

crate::rules_contract!(RedisRulesHarness::new());

/// Another process's commit to the player, made while a transaction is running: before its first
/// read (its reads see a version it did not begin with) or after its last (its commit finds one). Either
/// way the work runs again and only the second run's writes land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_overtaken_by_another_process_runs_again() {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::ids::{BrandId, PlayerId, PlayerKey, SessionId};
    use crate::store::queues::{Lease, Mode, Queues, Scope, Work, Write};

    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), crate::clock::system())
        .await
        .unwrap();
    let key = PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse("p").unwrap());
    for overtaken in ["before its reads", "after its reads"] {
        let runs = Arc::new(AtomicU64::new(0));
        let (counted, owned, url) = (runs.clone(), key.clone(), server.url());
        let work: Work = Box::new(move |tx| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            // What any other process's commit to the player does: raise its version.
            let other_process = || {
                let mut conn = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .unwrap();
                let _: i64 = redis::cmd("HINCRBY")
                    .arg("{pxh:b:b}:ver")
                    .arg("p")
                    .arg(1)
                    .query(&mut conn)
                    .unwrap();
            };
            if run == 0 && overtaken == "before its reads" {
                other_process();
            }
            tx.lease(&owned)?;
            if run == 0 && overtaken == "after its reads" {
                other_process();
            }
            tx.write(Write::PutLease {
                key: owned.clone(),
                lease: Some(Lease {
                    session: SessionId::generate(),
                    token: run,
                    expires_at_ms: u64::MAX,
                    in_flight: Vec::new(),
                }),
            });
            Ok(Box::new(()))
        });
        let scope = Scope {
            players: vec![key.clone()],
            events: Vec::new(),
        };
        store.transact(scope, Mode::LAZY, work).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "overtaken {overtaken}");
        let (owned, scope) = (
            key.clone(),
            Scope {
                players: vec![key.clone()],
                events: Vec::new(),
            },
        );
        let read: Work = Box::new(move |tx| Ok(Box::new(tx.lease(&owned)?.map(|l| l.token))));
        let token = store.transact(scope, Mode::LAZY, read).await.unwrap();
        assert_eq!(
            *token.downcast::<Option<u64>>().unwrap(),
            Some(1),
            "the second run's lease, overtaken {overtaken}"
        );
    }
}

#[test]
fn every_catalog_key_hashes_to_one_cluster_slot() {
    use crate::brand::SecretKind;
    use crate::ids::{BrandId, DefinitionId};
    use crate::store::catalog::Entry;
    let (a, b) = (BrandId::parse("a").unwrap(), BrandId::parse("b").unwrap());
    let entries = [
        Entry::Brand(a.clone()),
        Entry::Secret(b.clone(), SecretKind::Signing),
        Entry::Definition(b, DefinitionId::parse("ftd").unwrap()),
        Entry::ApiKey("k1".into()),
    ];
    for entry in &entries {
        let (key, _) = super::catalog::address(entry);
        // Redis Cluster hashes only what is between the first `{` and the next `}`.
        let tag = key
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'));
        assert_eq!(tag.map(|(t, _)| t), Some("pxh:catalog"), "{key}");
    }
}

#[tokio::test]
async fn a_redis_that_is_not_there_or_a_bad_url_is_an_error_not_a_hang() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    for url in [
        format!("redis://127.0.0.1:{port}/0"),
        "redis://127.0.0.1:6379/not-a-db".into(),
        "http://127.0.0.1/".into(),
    ] {
        let connecting = RedisStore::connect(&url, crate::clock::system());
        let answer = tokio::time::timeout(Duration::from_secs(20), connecting)
            .await
            .unwrap_or_else(|_| panic!("{url}: no answer in 20 s"));
        // Not there: unavailable (503, a retry may work); not a Redis URL: a failure.
        use crate::store::StoreError::{Backend, Unavailable};
        assert!(
            matches!(answer, Err(Unavailable(_) | Backend(_))),
            "{url}: {:?}",
            answer.err()
        );
    }
}

#[tokio::test]
async fn durability_is_read_from_the_settings_and_each_lossy_one_is_named() {
    use super::durability::Durability;
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), crate::clock::system())
        .await
        .unwrap();
    assert_eq!(store.durability().await.unwrap(), Durability::Durable);

    let mut conn = store.conn();
    for (setting, value, named) in [
        ("appendfsync", "everysec", "appendfsync is everysec"),
        (
            "no-appendfsync-on-rewrite",
            "yes",
            "no-appendfsync-on-rewrite is yes",
        ),
        (
            "maxmemory-policy",
            "allkeys-lru",
            "maxmemory-policy is allkeys-lru",
        ),
        ("appendonly", "no", "appendonly is no"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(setting)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        let Durability::Relaxed(reasons) = store.durability().await.unwrap() else {
            panic!("{setting} {value} taken for durable");
        };
        assert!(
            reasons.iter().any(|r| r.starts_with(named)),
            "{named}: {reasons:?}"
        );
    }
    let Durability::Relaxed(reasons) = store.durability().await.unwrap() else {
        unreachable!()
    };
    assert_eq!(reasons.len(), 4, "every lossy setting at once: {reasons:?}");

    // A Redis that will not tell: not taken for durable.
    let hidden = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let store = RedisStore::connect(&hidden.url(), crate::clock::system())
        .await
        .unwrap();
    let Durability::Relaxed(reasons) = store.durability().await.unwrap() else {
        panic!("a Redis refusing CONFIG GET taken for durable");
    };
    assert!(reasons[0].contains("cannot be checked"), "{reasons:?}");
}

#[test]
fn a_server_is_killed_with_the_thread_that_started_it_even_if_never_dropped() {
    let (port, dir) = std::thread::spawn(|| {
        let server = RedisServer::start();
        let (port, dir) = (server.port, server._dir.path().to_owned());
        std::mem::forget(server);
        (port, dir)
    })
    .join()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the server outlived its thread");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// On a cluster, every node named is asked for its settings, and a lossy one is named with its node.
#[tokio::test]
async fn a_clusters_durability_is_read_from_every_node() {
    use super::durability::Durability;
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url(), crate::clock::system())
        .await
        .unwrap();
    assert_eq!(store.durability().await.unwrap(), Durability::Durable);
    let lossy = &cluster.nodes[2];
    let client = redis::Client::open(lossy.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query(&mut conn)
        .unwrap();
    let Durability::Relaxed(reasons) = store.durability().await.unwrap() else {
        panic!("one node on everysec taken for durable");
    };
    let named = format!("node 127.0.0.1:{}: appendfsync is everysec", lossy.port);
    assert!(
        reasons.len() == 1 && reasons[0].starts_with(&named),
        "{reasons:?}"
    );
}
