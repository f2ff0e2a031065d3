//! The Redis engine's reads without a rule (contexts, the click index, the report, stats, backlogs,
//! definitions' health), its probe, wake-ups and close.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::{Cmd, FromRedisValue};
use tokio::sync::broadcast;

use super::catalog::BRANDS;
use super::keys::{self, BrandKeys, CountFields, Counts};
use super::{RedisStore, backend, corrupt};
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::store::queues::Record;
use crate::store::{
    Backlog, BrandQueue, Cursor, DefinitionHealth, DeliveryPage, DeliveryQuery, ProcessPresence,
    Store, StoreError, StoreStats,
};

/// A UTC day, for the daily event count.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Most report rows one page looks at: a filter that matches rarely ends the page early, with a
/// cursor to go on from, rather than reading the brand's whole report.
const REPORT_SCAN_BUDGET: usize = 20_000;

/// Report rows read per round trip.
const REPORT_CHUNK: usize = 500;

impl RedisStore {
    /// One command.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.check_open()?;
        cmd.query_async(&mut self.conn()).await.map_err(backend)
    }

    /// Every brand of the catalog.
    pub(super) async fn brand_ids(&self) -> Result<Vec<BrandId>, StoreError> {
        let ids: Vec<String> = self.query(redis::cmd("HKEYS").arg(BRANDS)).await?;
        ids.iter()
            .map(|id| BrandId::parse_stored(id).map_err(|_| StoreError::corrupt("a brand's id")))
            .collect()
    }

    /// [`StoreError::UnknownBrand`] unless the brand is in the catalog.
    async fn brand_exists(&self, brand: &BrandId) -> Result<(), StoreError> {
        let exists: bool = self
            .query(redis::cmd("HEXISTS").arg(BRANDS).arg(brand.as_str()))
            .await?;
        if exists {
            Ok(())
        } else {
            Err(StoreError::UnknownBrand(brand.clone()))
        }
    }

    /// The brand's players with the most pending pixels, ties by player id, at most `limit`.
    async fn backlogs_of(&self, brand: &BrandId, limit: usize) -> Result<Vec<Backlog>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = BrandKeys::new(brand);
        let top: Vec<(String, u64)> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(keys.backlog())
                    .arg(0)
                    .arg(limit - 1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let Some(&(_, least)) = top.last() else {
            return Ok(Vec::new());
        };
        // Redis orders equal counts by player id backwards: the least count's players are read again
        // in id order.
        let mut players: Vec<(String, u64)> = top.into_iter().filter(|(_, n)| *n > least).collect();
        let ties: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(keys.backlog())
                    .arg(least)
                    .arg(least)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit - players.len()),
            )
            .await?;
        players.extend(ties.into_iter().map(|p| (p, least)));
        let mut zscore = redis::pipe();
        for (player, _) in &players {
            zscore.zscore(keys.oldest(), player);
        }
        let oldest: Vec<Option<u64>> = zscore
            .query_async(&mut self.conn())
            .await
            .map_err(backend)?;
        players
            .into_iter()
            .zip(oldest)
            .map(|((player, pending), oldest)| {
                Ok(Backlog {
                    brand_id: brand.clone(),
                    player_id: PlayerId::parse_stored(&player)
                        .map_err(|_| StoreError::corrupt("a backlog's player"))?,
                    pending,
                    oldest_queued_at_ms: oldest,
                })
            })
            .collect()
    }

    /// One player's report rows, newest first, from its records.
    async fn player_rows(
        &self,
        key: &PlayerKey,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        let stored: Vec<Vec<u8>> = self
            .query(redis::cmd("HVALS").arg(BrandKeys::new(&key.brand).records(&key.player)))
            .await?;
        let rows = stored
            .iter()
            .map(|bytes| {
                serde_json::from_slice::<Record>(bytes)
                    .map(|record| record.delivery)
                    .map_err(corrupt("a record does not parse"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(query.page_of(rows))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        self.brand_exists(&key.brand).await?;
        let stored: Option<Vec<u8>> = self
            .query(
                redis::cmd("HGET")
                    .arg(BrandKeys::new(&key.brand).contexts())
                    .arg(key.player.as_str()),
            )
            .await?;
        stored.map_or_else(
            || Ok(PlayerContext::default()),
            |bytes| {
                serde_json::from_slice(&bytes).map_err(corrupt("a player context does not parse"))
            },
        )
    }

    async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError> {
        self.brand_exists(brand).await?;
        let player: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(BrandKeys::new(brand).clicks())
                    .arg(click_id),
            )
            .await?;
        player
            .map(|p| {
                PlayerId::parse_stored(&p).map_err(|_| StoreError::corrupt("a click's player"))
            })
            .transpose()
    }

    async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.brand_exists(brand).await?;
        if let Some(player) = &query.player {
            // One player's records are few: read them all.
            return self
                .player_rows(&PlayerKey::new(brand.clone(), player.clone()), query)
                .await;
        }
        let keys = BrandKeys::new(brand);
        let low = match query.from_ms {
            Some(from) => format!("[{}", keys::pad(from)),
            None => "-".into(),
        };
        let mut high = match (&query.after, query.to_ms) {
            (Some(after), _) => format!(
                "({}",
                keys::report_member(after.queued_at_ms, &after.player, after.id.as_str())
            ),
            (None, Some(to)) => format!("({}", keys::pad(to)),
            (None, None) => "+".into(),
        };
        let mut page = DeliveryPage::default();
        let mut scanned = 0;
        loop {
            let chunk = REPORT_CHUNK.min(REPORT_SCAN_BUDGET - scanned);
            let members: Vec<String> = self
                .query(
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(keys.report())
                        .arg(&high)
                        .arg(&low)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(chunk),
                )
                .await?;
            let Some(last) = members.last() else {
                return Ok(page);
            };
            high = format!("({last}");
            let mut rows = Vec::with_capacity(members.len());
            let mut hget = redis::pipe();
            for member in &members {
                let [at, player, id] = keys::fields::<3>(member)
                    .ok_or_else(|| StoreError::corrupt("a report entry does not parse"))?;
                let bad = || StoreError::corrupt("a report entry does not parse");
                let cursor = Cursor {
                    queued_at_ms: at.parse().map_err(|_| bad())?,
                    player: PlayerId::parse_stored(player).map_err(|_| bad())?,
                    id: PixelId::parse_stored(id).map_err(|_| bad())?,
                };
                hget.hget(keys.records(&cursor.player), cursor.id.as_str());
                rows.push(cursor);
            }
            let records: Vec<Option<Vec<u8>>> =
                hget.query_async(&mut self.conn()).await.map_err(backend)?;
            for (cursor, stored) in rows.into_iter().zip(records) {
                scanned += 1;
                // A row forgotten between the two reads is gone from the report too.
                if let Some(bytes) = stored {
                    let record: Record = serde_json::from_slice(&bytes)
                        .map_err(corrupt("a record does not parse"))?;
                    if query.matches(&record.delivery) {
                        page.rows.push(record.delivery);
                        if page.rows.len() == query.limit {
                            page.next = Some(cursor);
                            return Ok(page);
                        }
                    }
                }
                if scanned == REPORT_SCAN_BUDGET {
                    page.next = Some(cursor);
                    return Ok(page);
                }
            }
        }
    }

    async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        self.brand_exists(brand).await?;
        let stored: Vec<(String, Vec<u8>)> = self
            .query(redis::cmd("HGETALL").arg(BrandKeys::new(brand).health()))
            .await?;
        stored
            .into_iter()
            .map(|(id, bytes)| {
                let id = DefinitionId::parse_stored(&id)
                    .map_err(|_| StoreError::corrupt("a definition's id"))?;
                let health = serde_json::from_slice(&bytes)
                    .map_err(corrupt("a definition's health does not parse"))?;
                Ok((id, health))
            })
            .collect()
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let day = self.shared.clock.now_ms() / DAY_MS;
        let mut stats = StoreStats::default();
        for brand in self.brand_ids().await? {
            let keys = BrandKeys::new(&brand);
            let mut pipe = redis::pipe();
            Counts::ask(&mut pipe, &keys);
            pipe.zrange_withscores(keys.oldest(), 0, 0);
            let (fields, players, oldest): (CountFields, u64, Vec<(String, u64)>) =
                pipe.query_async(&mut self.conn()).await.map_err(backend)?;
            let counts = Counts::new(fields, players);
            let queue = BrandQueue {
                queue_depth: counts.depth,
                oldest_queued_at_ms: oldest.first().map(|(_, at)| *at),
                players: counts.players,
                outbox: counts.outbox,
                events_today: counts.events_on(day),
                waiting_consent: counts.waiting,
            };
            stats.queue_depth += queue.queue_depth;
            stats.brands.insert(brand, queue);
        }
        Ok(stats)
    }

    async fn backlogs(
        &self,
        brand: Option<&BrandId>,
        limit: usize,
    ) -> Result<Vec<Backlog>, StoreError> {
        let all = match brand {
            Some(brand) => {
                self.brand_exists(brand).await?;
                self.backlogs_of(brand, limit).await?
            }
            None => {
                let mut all = Vec::new();
                for brand in self.brand_ids().await? {
                    all.extend(self.backlogs_of(&brand, limit).await?);
                }
                all
            }
        };
        Ok(Backlog::biggest(all, limit))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // Answered once Redis has synced it to its append-only file.
        let _: () = self
            .query(redis::cmd("SET").arg(keys::PROBE).arg(&self.shared.origin))
            .await?;
        Ok(())
    }

    async fn postbacks_added(&self) {
        self.shared.postbacks.notified().await
    }

    fn subscribe(&self) -> broadcast::Receiver<crate::store::Announcement> {
        self.shared.announce.subscribe()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn report_presence(&self, presence: &ProcessPresence) -> Result<(), StoreError> {
        self.put_presence(presence).await
    }

    async fn forget_presence(&self, id: &str) -> Result<(), StoreError> {
        self.drop_presence(id).await
    }

    async fn presences(&self, now_ms: u64) -> Result<Vec<ProcessPresence>, StoreError> {
        self.live_presences(now_ms).await
    }

    async fn claim_session(
        &self,
        key: &PlayerKey,
        session: SessionId,
        info: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.claim(key, session, info, max, now_ms).await
    }

    async fn release_session(&self, key: &PlayerKey, session: SessionId) -> Result<(), StoreError> {
        self.unclaim(key, session).await
    }

    async fn renew_sessions(
        &self,
        sessions: &[(PlayerKey, SessionId)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.renew(sessions, now_ms).await
    }

    async fn sessions_of(
        &self,
        key: &PlayerKey,
        now_ms: u64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.claimed_sessions(key, now_ms).await.map(Some)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(listener) = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            listener.abort();
        }
        Ok(())
    }
}
