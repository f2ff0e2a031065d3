//! Whether a Redis keeps what it acknowledges. "`202` means durable" holds on Redis only with every
//! write in the append-only file, that file `fsync`ed before Redis answers (`appendfsync always`; Redis
//! 7.0, Debian's, has no `WAITAOF` to ask for it per call), and nothing evicted. Read when the engine
//! opens, so the hub can refuse a Redis that could lose an acknowledged pixel (the refusal, and the
//! operator's way past it, come with the engine's `--store` option).

use std::collections::BTreeMap;

use super::{RedisStore, Target, backend};
use crate::store::StoreError;

/// The settings that decide it, as `CONFIG GET` names them.
const SETTINGS: [&str; 4] = [
    "appendonly",
    "appendfsync",
    "no-appendfsync-on-rewrite",
    "maxmemory-policy",
];

/// What a Redis's settings make of an acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write is in the append-only file, synced before the answer, and nothing is evicted.
    Durable,
    /// Acknowledged writes can be lost: each reason, for the operator to read.
    Relaxed(Vec<String>),
}

impl RedisStore {
    /// Reads the settings that decide durability. A Redis that refuses `CONFIG GET` (some managed
    /// services rename it) cannot be checked, which counts as relaxed.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        let nodes = match &self.shared.target {
            Target::Server(_) => return ask(&mut self.conn()).await,
            Target::Cluster(nodes) => nodes,
        };
        // A cluster: every node the operator named (its masters), each asked on a connection of its
        // own, since a cluster connection would ask just one of them.
        let mut reasons = Vec::new();
        for url in nodes {
            let client = redis::Client::open(url.as_str()).map_err(backend)?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(super::connection::CONNECT_TIMEOUT))
                .set_response_timeout(Some(super::connection::CALL_TIMEOUT));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(backend)?;
            if let Durability::Relaxed(found) = ask(&mut conn).await? {
                let node = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map(|info| info.addr().to_string())
                    .unwrap_or_default();
                reasons.extend(found.into_iter().map(|r| format!("node {node}: {r}")));
            }
        }
        Ok(if reasons.is_empty() {
            Durability::Durable
        } else {
            Durability::Relaxed(reasons)
        })
    }
}

/// Reads one server's settings.
async fn ask(conn: &mut impl redis::aio::ConnectionLike) -> Result<Durability, StoreError> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg(&SETTINGS[..]);
    let answer: redis::RedisResult<Vec<String>> = get.query_async(conn).await;
    let pairs = match answer {
        Ok(pairs) => pairs,
        Err(e) if refused(&e) => {
            return Ok(Durability::Relaxed(vec![format!(
                "Redis refused CONFIG GET ({e}), so its durability settings cannot be checked"
            )]));
        }
        Err(e) => return Err(backend(e)),
    };
    let settings: BTreeMap<String, String> = pairs
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((name.to_ascii_lowercase(), value.to_ascii_lowercase())),
            _ => None,
        })
        .collect();
    Ok(judge(&settings))
}

/// Whether Redis answered `CONFIG GET` with a refusal (an unknown command, or one the user's ACL
/// forbids) rather than failing.
fn refused(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}

/// The reasons, if any, that `settings` can lose an acknowledged write.
fn judge(settings: &BTreeMap<String, String>) -> Durability {
    let read = |name: &str| settings.get(name).map_or("(not reported)", String::as_str);
    let mut reasons = Vec::new();
    if read("appendonly") != "yes" {
        reasons.push(format!(
            "appendonly is {}: writes live in memory until the next snapshot (set appendonly yes)",
            read("appendonly")
        ));
    }
    if read("appendfsync") != "always" {
        reasons.push(format!(
            "appendfsync is {}: Redis answers before its append-only file is synced (set appendfsync always)",
            read("appendfsync")
        ));
    }
    if read("no-appendfsync-on-rewrite") == "yes" {
        reasons.push(
            "no-appendfsync-on-rewrite is yes: nothing is synced while the append-only file is rewritten (set it to no)"
                .into(),
        );
    }
    if read("maxmemory-policy") != "noeviction" {
        reasons.push(format!(
            "maxmemory-policy is {}: Redis may evict keys, pixels among them (set maxmemory-policy noeviction)",
            read("maxmemory-policy")
        ));
    }
    if reasons.is_empty() {
        Durability::Durable
    } else {
        Durability::Relaxed(reasons)
    }
}
