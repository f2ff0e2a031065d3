//! Where the engine's commands go: one Redis server (a multiplexed connection that reconnects by
//! itself) or a Redis Cluster (a connection per master, each command routed by its key's slot). Every
//! script and pipeline the engine sends touches one slot, so both serve it the same way.
//!
//! A cluster is named by `redis+cluster://[user:pass@]host:port,host:port,.../` (`rediss+cluster://`
//! for TLS): some of its masters, from which the client learns the rest.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How long one connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may wait for its answer: a script's answer comes after Redis's `fsync` of its
/// append-only file, which a busy disk can hold up for a while.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `--store` names: one server, or a cluster's seed nodes (each a `redis://` URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One server.
    Server(String),
    /// A cluster, by some of its nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads a `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://` URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let cluster = [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ]
        .into_iter()
        .find_map(|(scheme, plain)| url.strip_prefix(scheme).map(|rest| (plain, rest)));
        let target = match cluster {
            None => Target::Server(url.to_owned()),
            Some((plain, rest)) => {
                // `[user:pass@]host:port,host:port[/]`: the credentials go with every node.
                let rest = rest.trim_end_matches('/');
                let (credentials, hosts) = match rest.rsplit_once('@') {
                    Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
                    None => (String::new(), rest),
                };
                let nodes: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|host| format!("{plain}{credentials}{host}"))
                    .collect();
                if nodes.is_empty() {
                    return Err("a cluster URL names at least one node: redis+cluster://host:port,host:port".into());
                }
                Target::Cluster(nodes)
            }
        };
        for node in target.nodes() {
            redis::IntoConnectionInfo::into_connection_info(node.as_str())
                .map_err(|e| format!("not a Redis URL ({e}); e.g. redis://127.0.0.1:6379/0"))?;
        }
        Ok(target)
    }

    /// Each node's URL (the one server's, or the cluster's seeds).
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Target::Server(url) => vec![url.clone()],
            Target::Cluster(nodes) => nodes.clone(),
        }
    }
}

/// A connection for commands, cheap to clone (clones share it).
#[derive(Clone)]
pub(super) enum Connection {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects to `target`. A call made while Redis is away fails within tens of milliseconds after
    /// two more attempts, rather than waiting: the hub answers 503 and the caller retries.
    pub(super) async fn open(target: &Target) -> redis::RedisResult<Connection> {
        match target {
            Target::Server(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                let client = redis::Client::open(url.as_str())?;
                Ok(Connection::One(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(200)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::One(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::One(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::One(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_nodes_with_their_credentials() {
        assert_eq!(
            Target::parse("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/").unwrap(),
            Target::Cluster(vec![
                "redis://u:p@10.0.0.1:7000".into(),
                "redis://u:p@10.0.0.2:7001".into()
            ])
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0").unwrap(),
            Target::Server("redis://127.0.0.1:6379/0".into())
        );
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("redis+cluster://host:notaport").is_err());
    }
}
