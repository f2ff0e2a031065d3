//! The Redis engine: every hub process on one Redis is one hub (docs/scaling.md).
//!
//! It serves all three engine traits, behind the same contract as the other engines (two-handle checks
//! included, each handle a connection of its own): the catalog (`catalog`: brands, secrets, definitions,
//! API keys), the queues (`queues`: optimistic transactions, each committed by one script that checks
//! what the work read and writes every index with it), the reads without a rule (`report`), and
//! announcements across processes over pub/sub (`announce`). [`RedisStore::durability`] reads whether
//! Redis's settings keep what it acknowledges.
//!
//! Each atomic step is one Lua script, so it is one round trip and all or nothing, whichever process
//! runs it. Every key of a script hashes to one Redis Cluster slot: the catalog's keys share the hash tag
//! `{pxh:catalog}` (it is small and slow-moving, and one change may touch several brands: a key and its
//! brand, say); a brand's hot data shares `{pxh:b:<brand>}` (`keys`).

mod announce;
mod catalog;
mod connection;
mod durability;
mod keys;
mod presence;
mod queues;
mod report;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, broadcast};

pub use connection::Target;
pub use durability::Durability;

use connection::Connection;

use super::StoreError;
use crate::clock::SharedClock;

/// Announcements buffered per subscriber before it lags (and then resynchronises).
const ANNOUNCE_CAPACITY: usize = 16 * 1024;

/// A handle on one Redis database: what one hub process holds. Cheap to clone (a clone is the same
/// handle: closing one closes both). The connection is multiplexed, and reconnects by itself after a
/// failure (the call that saw the failure fails; nothing is retried behind the caller's back, since a
/// script that failed in flight may have run).
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    shared: Arc<Shared>,
}

/// What one handle's clones share.
struct Shared {
    /// Players announced by any process (this one's directly, the others' through pub/sub).
    announce: broadcast::Sender<crate::store::Announcement>,
    /// Raised when any process added postbacks.
    postbacks: Notify,
    /// This handle's name on the announcement channels, so it skips its own messages.
    origin: String,
    closed: AtomicBool,
    /// What "today" is for the daily event count the stats show.
    clock: SharedClock,
    /// The pub/sub listener; stopped at close.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The server or cluster, for what is asked of each node (its durability settings).
    target: Target,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:pass@]host:port/db`, `rediss://` for TLS, or a cluster's
    /// `redis+cluster://host:port,host:port`), on `clock`, and starts listening for other processes'
    /// announcements. A Redis that does not answer is an error within seconds, not a wait: a
    /// connection attempt gets [`connection::CONNECT_TIMEOUT`] and is made three times at most, a call
    /// gets [`connection::CALL_TIMEOUT`].
    pub async fn connect(url: &str, clock: SharedClock) -> Result<RedisStore, StoreError> {
        let target = Target::parse(url)
            .map_err(|e| StoreError::Backend(Arc::new(std::io::Error::other(e))))?;
        let conn = Connection::open(&target).await.map_err(backend)?;
        let shared = Arc::new(Shared {
            announce: broadcast::channel(ANNOUNCE_CAPACITY).0,
            postbacks: Notify::new(),
            origin: uuid::Uuid::now_v7().simple().to_string(),
            closed: AtomicBool::new(false),
            clock,
            listener: std::sync::Mutex::new(None),
            target: target.clone(),
        });
        let listener = tokio::spawn(announce::listen(target, Arc::downgrade(&shared)));
        *shared.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(RedisStore { conn, shared })
    }

    /// A connection for one call; clones share the one multiplexed connection.
    fn conn(&self) -> Connection {
        self.conn.clone()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

/// A Redis failure, as the hub must take it. Redis not reachable, or not taking work for now (loading
/// its data, a cluster failing over, out of memory or unable to persist): [`StoreError::Unavailable`]
/// (`503 store_unavailable`), which may or may not have happened, so a retry with the same ids is safe;
/// the connection reconnects by itself. Anything else (a script's error, a value of the wrong type): a
/// [`StoreError::Backend`] failure. Neither is [`StoreError::Failed`]: Redis, not this process, owns
/// the durability of what it acknowledged, so the hub goes on.
fn backend(e: redis::RedisError) -> StoreError {
    let unreachable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error();
    let busy = matches!(
        e.code(),
        Some(
            "LOADING"
                | "BUSY"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "MASTERDOWN"
                | "READONLY"
                | "OOM"
                | "MISCONF"
        )
    );
    if unreachable || busy {
        StoreError::Unavailable(format!("Redis is unavailable: {e}"))
    } else {
        StoreError::Backend(Arc::new(e))
    }
}

/// A stored value that does not parse as what the engine wrote there.
fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |_| StoreError::corrupt(what)
}
