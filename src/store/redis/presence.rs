//! Every process's sessions, kept in Redis so that each process sees the whole hub: each process's
//! report (its session counts, every 2 s, read back while younger than
//! [`crate::store::PRESENCE_TTL_MS`]), and each player's sessions across processes, so the per-player
//! limit holds whichever process a tab connects to. A session's claim lasts
//! [`crate::store::SESSION_CLAIM_TTL_MS`] unless its process renews it (every live session's, every 5 s):
//! a process that dies frees its players' counts by itself.

use std::sync::LazyLock;

use redis::Script;

use super::keys::BrandKeys;
use super::{RedisStore, backend, corrupt};
use crate::ids::{BrandId, PlayerKey, SessionId};
use crate::store::{PRESENCE_TTL_MS, ProcessPresence, SESSION_CLAIM_TTL_MS, StoreError};

/// Every process's last report, by its id (JSON).
const PROCESSES: &str = "{pxh:processes}";

/// Claims of renewed sessions a pipeline carries at once.
const RENEW_CHUNK: usize = 1000;

/// `KEYS`: the player's claims (sorted set, session → when it runs out) and their infos (hash).
/// `ARGV`: session, info, most sessions, now, when the claim runs out. Forgets claims that ran out, then
/// adds (or renews) this one if the player has fewer than the most, or already holds it. 1 when held.
const CLAIM: &str = r#"#!lua
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for _, session in ipairs(gone) do
  redis.call('ZREM', KEYS[1], session)
  redis.call('HDEL', KEYS[2], session)
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[5]) - tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"#;

static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));

impl RedisStore {
    pub(super) async fn put_presence(&self, presence: &ProcessPresence) -> Result<(), StoreError> {
        let json = serde_json::to_vec(presence).map_err(corrupt("a report would not encode"))?;
        self.query::<()>(
            redis::cmd("HSET")
                .arg(PROCESSES)
                .arg(&presence.id)
                .arg(json),
        )
        .await
    }

    pub(super) async fn drop_presence(&self, id: &str) -> Result<(), StoreError> {
        self.query::<()>(redis::cmd("HDEL").arg(PROCESSES).arg(id))
            .await
    }

    pub(super) async fn live_presences(
        &self,
        now_ms: u64,
    ) -> Result<Vec<ProcessPresence>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(PROCESSES)).await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, bytes) in all {
            match serde_json::from_slice::<ProcessPresence>(&bytes) {
                Ok(p) if p.reported_at_ms + PRESENCE_TTL_MS >= now_ms => live.push(p),
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            // A process that stopped reporting: forgotten, by whichever process reads first.
            self.query::<()>(redis::cmd("HDEL").arg(PROCESSES).arg(&gone))
                .await?;
        }
        live.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(live)
    }

    pub(super) async fn claim(
        &self,
        key: &PlayerKey,
        session: SessionId,
        info: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.check_open()?;
        let keys = BrandKeys::new(&key.brand);
        let held: i64 = CLAIM_SCRIPT
            .key(keys.session_claims(&key.player))
            .key(keys.session_infos(&key.player))
            .arg(session.to_string())
            .arg(info)
            .arg(max)
            .arg(now_ms)
            .arg(now_ms + SESSION_CLAIM_TTL_MS)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend)?;
        Ok(held == 1)
    }

    pub(super) async fn unclaim(
        &self,
        key: &PlayerKey,
        session: SessionId,
    ) -> Result<(), StoreError> {
        let keys = BrandKeys::new(&key.brand);
        let session = session.to_string();
        let mut pipe = redis::pipe();
        pipe.zrem(keys.session_claims(&key.player), &session)
            .ignore()
            .hdel(keys.session_infos(&key.player), &session)
            .ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(backend)
    }

    pub(super) async fn renew(
        &self,
        sessions: &[(PlayerKey, SessionId)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let until = now_ms + SESSION_CLAIM_TTL_MS;
        // One pipeline per brand and chunk: a pipeline goes to one Cluster slot.
        let mut by_brand: std::collections::BTreeMap<&BrandId, Vec<(&PlayerKey, SessionId)>> =
            Default::default();
        for (key, session) in sessions {
            by_brand
                .entry(&key.brand)
                .or_default()
                .push((key, *session));
        }
        for (brand, sessions) in by_brand {
            let keys = BrandKeys::new(brand);
            for chunk in sessions.chunks(RENEW_CHUNK) {
                let mut pipe = redis::pipe();
                for (key, session) in chunk {
                    let claims = keys.session_claims(&key.player);
                    // Only a claim still there: one that ran out was counted out, and its session
                    // stays in this process only until it ends.
                    pipe.cmd("ZADD")
                        .arg(&claims)
                        .arg("XX")
                        .arg(until)
                        .arg(session.to_string())
                        .ignore()
                        .pexpire(&claims, SESSION_CLAIM_TTL_MS as i64)
                        .ignore()
                        .pexpire(keys.session_infos(&key.player), SESSION_CLAIM_TTL_MS as i64)
                        .ignore();
                }
                pipe.query_async::<()>(&mut self.conn())
                    .await
                    .map_err(backend)?;
            }
        }
        Ok(())
    }

    pub(super) async fn claimed_sessions(
        &self,
        key: &PlayerKey,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let keys = BrandKeys::new(&key.brand);
        let live: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(keys.session_claims(&key.player))
                    .arg(format!("({now_ms}"))
                    .arg("+inf"),
            )
            .await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let infos: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(keys.session_infos(&key.player))
                    .arg(&live),
            )
            .await?;
        Ok(infos.into_iter().flatten().collect())
    }
}
