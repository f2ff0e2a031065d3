//! The memory engine's reads without a rule: contexts, the click index, the report, stats, backlogs,
//! definitions' health; its probe, wake-ups and close.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{MemoryStore, lock};
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, PlayerId, PlayerKey};
use crate::store::catalog::{Entry, Value};
use crate::store::{
    Backlog, BrandQueue, Cursor, DefinitionHealth, DeliveryPage, DeliveryQuery, Store, StoreError,
    StoreStats,
};

/// A UTC day, for the daily event count.
const DAY_MS: u64 = 24 * 3600 * 1000;

impl MemoryStore {
    /// [`StoreError::UnknownBrand`] unless the brand is in the catalog.
    fn brand_exists(&self, brand: &BrandId) -> Result<(), StoreError> {
        match lock(&self.backing.catalog).get(&Entry::Brand(brand.clone())) {
            Some(Value::Brand(_)) => Ok(()),
            _ => Err(StoreError::UnknownBrand(brand.clone())),
        }
    }

    /// Every brand of the catalog.
    fn brand_ids(&self) -> Vec<BrandId> {
        lock(&self.backing.catalog)
            .keys()
            .filter_map(|entry| match entry {
                Entry::Brand(brand) => Some(brand.clone()),
                _ => None,
            })
            .collect()
    }

    fn backlogs_of(&self, brand: &BrandId) -> Vec<Backlog> {
        let hot = lock(&self.backing.hot);
        hot.queues
            .iter()
            .filter(|(key, queue)| key.brand == *brand && !queue.is_empty())
            .map(|(key, queue)| Backlog {
                brand_id: key.brand.clone(),
                player_id: key.player.clone(),
                pending: queue.len() as u64,
                oldest_queued_at_ms: queue.values().next().map(|p| p.queued_at_ms),
            })
            .collect()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        self.brand_exists(&key.brand)?;
        Ok(lock(&self.backing.hot)
            .contexts
            .get(key)
            .cloned()
            .unwrap_or_default())
    }

    async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError> {
        self.brand_exists(brand)?;
        Ok(lock(&self.backing.hot)
            .clicks
            .get(&(brand.clone(), click_id.to_owned()))
            .cloned())
    }

    async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.brand_exists(brand)?;
        let hot = lock(&self.backing.hot);
        let mut rows = Vec::new();
        for (queued_at_ms, player, id) in hot.report.get(brand).into_iter().flatten().rev() {
            if query.player.as_ref().is_some_and(|p| p != player) {
                continue;
            }
            let cursor = Cursor {
                queued_at_ms: *queued_at_ms,
                player: player.clone(),
                id: id.clone(),
            };
            if query.after.as_ref().is_some_and(|after| cursor >= *after) {
                continue;
            }
            let key = PlayerKey::new(brand.clone(), player.clone());
            let Some(record) = hot.records.get(&key).and_then(|r| r.get(id)) else {
                continue;
            };
            if query.matches(&record.delivery) {
                rows.push((cursor, record.delivery.clone()));
            }
            if rows.len() > query.limit {
                break;
            }
        }
        let next = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            rows.last().map(|(cursor, _)| cursor.clone())
        });
        Ok(DeliveryPage {
            rows: rows.into_iter().map(|(_, row)| row).collect(),
            next: next.flatten(),
        })
    }

    async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        self.brand_exists(brand)?;
        Ok(lock(&self.backing.hot)
            .health
            .iter()
            .filter(|((b, _), _)| b == brand)
            .map(|((_, id), health)| (id.clone(), health.clone()))
            .collect())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let day = self.clock.now_ms() / DAY_MS;
        let brands = self.brand_ids();
        let hot = lock(&self.backing.hot);
        let mut stats = StoreStats::default();
        for brand in brands {
            let queues = hot.queues.iter().filter(|(key, _)| key.brand == brand);
            let (mut depth, mut oldest) = (0u64, None::<u64>);
            for (_, queue) in queues {
                depth += queue.len() as u64;
                for pixel in queue.values() {
                    oldest = Some(oldest.map_or(pixel.queued_at_ms, |o| o.min(pixel.queued_at_ms)));
                }
            }
            stats.queue_depth += depth;
            let queue = BrandQueue {
                queue_depth: depth,
                oldest_queued_at_ms: oldest,
                players: hot.players(&brand),
                outbox: hot.outbox_size(&brand),
                events_today: hot.events_on(&brand, day),
                waiting_consent: hot.waiting_consent(&brand),
            };
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
                self.brand_exists(brand)?;
                self.backlogs_of(brand)
            }
            None => self
                .brand_ids()
                .iter()
                .flat_map(|b| self.backlogs_of(b))
                .collect(),
        };
        Ok(Backlog::biggest(all, limit))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.check_open()
    }

    async fn postbacks_added(&self) {
        self.backing.postbacks.notified().await
    }

    fn subscribe(&self) -> broadcast::Receiver<crate::store::Announcement> {
        self.backing.announce.subscribe()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
