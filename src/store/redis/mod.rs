//! The Redis engine: every hub process on one Redis is one hub (docs/scaling.md).
//!
//! Built in pieces, each behind the same contract as the other engines. So far: the catalog
//! ([`crate::store::catalog::Catalog`]: brands, their secrets, pixel definitions and API keys), and the
//! check of Redis's durability settings ([`RedisStore::durability`]). The queues, leases, outbox and
//! records come next; until they do, the engine is not one `--store` can name.
//!
//! Each atomic step is one Lua script, so it is one round trip and all or nothing, whichever process
//! runs it. Every key of a script hashes to one Redis Cluster slot: the catalog's keys share the hash tag
//! `{pxh:catalog}` (it is small and slow-moving, and one change may touch several brands: a key and its
//! brand, say).

mod catalog;
mod durability;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use durability::Durability;

use super::StoreError;

/// A handle on one Redis database. Cheap to clone: the connection is multiplexed, and reconnects by
/// itself after a failure (the call that saw the failure fails; nothing is retried behind the caller's
/// back, since a script that failed in flight may have run).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:pass@]host:port/db`). A Redis that does not answer is an
    /// error within seconds, not a wait: a connection attempt gets [`CONNECT_TIMEOUT`] and is made
    /// three times at most, a call gets [`CALL_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(backend)?;
        Ok(RedisStore { conn })
    }

    /// A connection for one call; clones share the one multiplexed connection.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may wait for its answer: a script's answer comes after Redis's `fsync` of its
/// append-only file, which a busy disk can hold up for a while.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis failure (connection, script, server): the operation must be taken as not done.
fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(Arc::new(e))
}
