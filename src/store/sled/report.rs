//! The embedded engine's reads for people and probes: the report, ops' queue figures and backlogs,
//! definition health, a player's attribution context; and the engine's lifecycle (the readiness probe,
//! announcements, close).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::{DAY_MS, Inner, SledStore, backend, entry, keys};
use crate::delivery::Delivery;
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, PixelId, PlayerId, PlayerKey};
use crate::store::queues::Record;
use crate::store::{
    Backlog, BrandQueue, Cursor, DefinitionHealth, DeliveryPage, DeliveryQuery, Store, StoreError,
    StoreStats,
};

/// Most report rows one page looks at, so a rare filter cannot make one request scan a brand.
const REPORT_SCAN_BUDGET: usize = 20_000;

/// The report rows of one player's records queued in one millisecond, by id, as one sled value
/// ([`keys::report_bucket`]); a pending pixel's row holds where its queue entry is. The rows of a
/// batch share a millisecond, so a hundred pixels queued in one call cost the checkpoint one key for
/// the report instead of a hundred (sled's cost is per key, about 7 µs, whatever its size).
///
/// The value: a version byte, then per row, in id order, the id's length (u16), the id, and a flag
/// byte saying whether the queue position (u64) follows. All big-endian.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Bucket(BTreeMap<PixelId, Option<u64>>);

/// Most rows a bucket holds. Each change rewrites the whole value, and a record forgotten rewrites its
/// bucket without it, so a bucket's size bounds what forgetting costs: past it, rows have keys of their
/// own. A hundred pixels queued at once still fit one bucket.
pub(super) const MAX_BUCKET_ROWS: usize = 128;

/// What [`Bucket::edit`] did.
#[derive(Debug, PartialEq)]
pub(super) enum Edited {
    /// The bucket changed.
    Bucket,
    /// The row is in a key of its own ([`keys::report`]): put with this value, or removed.
    Own(PixelId, Option<Vec<u8>>),
}

/// One change to a bucket, staged by a transaction and applied when it commits.
#[derive(Debug)]
pub(super) enum RowEdit {
    Add(PixelId, Option<u64>),
    Remove(PixelId),
}

const BUCKET_VERSION: u8 = 1;

/// Report rows: a record's id and, for a pending pixel, where its queue entry is.
type Rows = Vec<(PixelId, Option<u64>)>;

/// The player, millisecond and rows of a report key: a bucket's rows, or a row of its own (a pending
/// pixel's holds where its queue entry is).
fn report_rows(k: &[u8], value: &[u8]) -> Result<(PlayerKey, u64, Rows), StoreError> {
    let (key, at, single) =
        keys::parse_report(k).ok_or_else(|| StoreError::corrupt("corrupt report key"))?;
    let rows = match single {
        Some(id) => vec![(id, <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes))],
        None => Bucket::decode(value)?.0.into_iter().collect(),
    };
    Ok((key, at, rows))
}

impl Bucket {
    pub(super) fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::corrupt("corrupt report bucket");
        let mut rest = match value.split_first() {
            Some((&BUCKET_VERSION, rest)) => rest,
            _ => return Err(corrupt()),
        };
        let mut rows = BTreeMap::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_at_checked(2).ok_or_else(corrupt)?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            let (id, tail) = tail.split_at_checked(len).ok_or_else(corrupt)?;
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|id| PixelId::parse_stored(id).ok())
                .ok_or_else(corrupt)?;
            let (&flag, tail) = tail.split_first().ok_or_else(corrupt)?;
            let (seq, tail) = match flag {
                0 => (None, tail),
                1 => {
                    let (seq, tail) = tail.split_at_checked(8).ok_or_else(corrupt)?;
                    (
                        Some(u64::from_be_bytes(seq.try_into().expect("8 bytes"))),
                        tail,
                    )
                }
                _ => return Err(corrupt()),
            };
            rows.insert(id, seq);
            rest = tail;
        }
        Ok(Self(rows))
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let size: usize = self.0.keys().map(|id| id.as_str().len() + 11).sum();
        let mut out = Vec::with_capacity(1 + size);
        out.push(BUCKET_VERSION);
        for (id, seq) in &self.0 {
            let id = id.as_str().as_bytes();
            let len = u16::try_from(id.len()).expect("ids are short");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(id);
            match seq {
                Some(seq) => {
                    out.push(1);
                    out.extend_from_slice(&seq.to_be_bytes());
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Applies `edit` to the bucket if the row belongs there: a row it holds, or a new one while it
    /// has room. Otherwise the row has a key of its own, and the answer says what to do with it.
    pub(super) fn edit(&mut self, edit: RowEdit) -> Edited {
        match edit {
            RowEdit::Add(id, seq) => {
                if self.0.len() < MAX_BUCKET_ROWS || self.0.contains_key(&id) {
                    self.0.insert(id, seq);
                    Edited::Bucket
                } else {
                    let value = seq.map_or_else(Vec::new, |seq| seq.to_be_bytes().to_vec());
                    Edited::Own(id, Some(value))
                }
            }
            RowEdit::Remove(id) => match self.0.remove(&id) {
                Some(_) => Edited::Bucket,
                None => Edited::Own(id, None),
            },
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
/// Most queues one look at a brand's oldest pixel surveys.
const OLDEST_BUDGET: usize = 256;

impl Inner {
    /// When the brand's oldest pending client pixel was queued: the lowest queued floor, once it is
    /// exact. Floors below the truth (their oldest pixel ended) are surveyed on the way, at most
    /// [`OLDEST_BUDGET`] of them; past that, the floor reached is the answer (never later than the
    /// truth), and the next call goes on from there.
    fn oldest_pending(&self, brand: &BrandId) -> Result<Option<u64>, StoreError> {
        for _ in 0..OLDEST_BUDGET {
            let Some((floor, player)) = self.summaries().oldest(brand, 1).pop() else {
                return Ok(None);
            };
            let key = PlayerKey::new(brand.clone(), player);
            let (_, exact) = self.survey(&key, 0)?;
            if exact.count > 0 && exact.queued_floor <= floor {
                return Ok(Some(exact.queued_floor)); // the floor was exact
            }
            // It was below the truth (now raised), or the queue emptied meanwhile: look again.
        }
        Ok(self
            .summaries()
            .oldest(brand, 1)
            .pop()
            .map(|(floor, _)| floor))
    }

    /// The brand's biggest backlogs, from the start of its ranking.
    fn backlogs(&self, brand: &BrandId, limit: usize) -> Result<Vec<Backlog>, StoreError> {
        let top = self.summaries().top(brand, limit);
        let mut out = Vec::new();
        for (pending, player) in top {
            let key = PlayerKey::new(brand.clone(), player);
            let oldest = match self.log.scan_prefix(&keys::queue_prefix(&key)).next() {
                Some(item) => {
                    let (k, page) = item?;
                    let (_, first) = keys::parse_queue(&k)
                        .ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
                    match entry::entries(first, &page).next() {
                        Some(head) => Some(entry::pixel(head?.1)?.queued_at_ms),
                        None => None,
                    }
                }
                None => None,
            };
            out.push(Backlog {
                brand_id: key.brand,
                player_id: key.player,
                pending,
                oldest_queued_at_ms: oldest,
            });
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        let (brand, key) = (key.brand.clone(), keys::context(key));
        self.blocking(move |inner| {
            inner.brand_exists(&brand)?;
            Ok(inner.read(&key)?.unwrap_or_default())
        })
        .await
    }

    async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError> {
        let (brand, key) = (brand.clone(), keys::click(brand, click_id));
        self.blocking(move |inner| {
            inner.brand_exists(&brand)?;
            match inner.log.get(&key)? {
                None => Ok(None),
                Some(player) => std::str::from_utf8(&player)
                    .ok()
                    .and_then(|p| PlayerId::parse_stored(p).ok())
                    .map(Some)
                    .ok_or_else(|| StoreError::corrupt("corrupt click index entry")),
            }
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.blocking(|inner| {
            let (journal, _) = inner.log.counters();
            let mut stats = StoreStats {
                flushes: journal.syncs.load(Ordering::Relaxed),
                flushed_writes: journal.appends.load(Ordering::Relaxed),
                ..Default::default()
            };
            for entry in inner.log.scan_prefix(b"b") {
                let (k, _) = entry?;
                let brand = keys::parse_brand(&k)
                    .ok_or_else(|| StoreError::corrupt("corrupt brand key"))?;
                let queue_depth = inner.summaries().depth(&brand);
                stats.queue_depth += queue_depth;
                let queue = BrandQueue {
                    queue_depth,
                    oldest_queued_at_ms: inner.oldest_pending(&brand)?,
                    players: inner.players.get(&brand).map_or(0, |n| *n),
                    outbox: inner.outbox_size.get(&brand).map_or(0, |n| *n),
                    events_today: inner.events_on(&brand, inner.clock.now_ms() / DAY_MS),
                    waiting_consent: inner.summaries().waiting(&brand),
                };
                stats.brands.insert(brand, queue);
            }
            Ok(stats)
        })
        .await
    }

    async fn backlogs(
        &self,
        brand: Option<&BrandId>,
        limit: usize,
    ) -> Result<Vec<Backlog>, StoreError> {
        let brand = brand.cloned();
        self.blocking(move |inner| {
            let Some(brand) = &brand else {
                // Every brand's top `limit`, merged: the overall top is among them.
                let mut all = Vec::new();
                for entry in inner.log.scan_prefix(b"b").keys() {
                    let k = entry?;
                    let brand = keys::parse_brand(&k)
                        .ok_or_else(|| StoreError::corrupt("corrupt brand key"))?;
                    all.extend(inner.backlogs(&brand, limit)?);
                }
                all.sort_by_key(|b| std::cmp::Reverse(b.pending));
                all.truncate(limit);
                return Ok(all);
            };
            inner.brand_exists(brand)?;
            inner.backlogs(brand, limit)
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // The probe writes through the journal, so it fails when a write would.
        let durable = self
            .blocking(|inner| {
                inner.check_open()?;
                inner.log.commit(
                    vec![(
                        b"mreadiness-probe".into(),
                        Some(inner.clock.now_ms().to_be_bytes().as_slice().into()),
                    )],
                    &[],
                )
            })
            .await?;
        durable.wait().await.map(drop)
    }

    async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        let (brand, query) = (brand.clone(), query.clone());
        self.blocking(move |inner| {
            let (brand, query) = (&brand, &query);
            inner.brand_exists(brand)?;
            let wanted = |d: &Delivery| query.matches(d);
            let cursor_of = Cursor::of;
            let before_cursor = |c: &Cursor| query.after.as_ref().is_none_or(|after| c < after);
            let mut page = DeliveryPage::default();
            if let Some(player) = &query.player {
                // One player's records are few: read them all (pending pixels' from their queue
                // entries, the rest from `i`), then order them like the time index.
                let key = PlayerKey::new(brand.clone(), player.clone());
                let mut records: BTreeMap<PixelId, Delivery> = BTreeMap::new();
                for item in inner.log.scan_prefix(&keys::queue_prefix(&key)) {
                    let (k, page) = item?;
                    let (_, first) = keys::parse_queue(&k)
                        .ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
                    for queued in entry::entries(first, &page) {
                        if let Some(rec) = entry::record(queued?.1)? {
                            records.insert(rec.delivery.id.clone(), rec.delivery);
                        }
                    }
                }
                // Read after the queue: a pixel that ended between the two reads is in `i` by now,
                // and its final record wins.
                for item in inner.log.scan_prefix(&keys::index_prefix(&key)) {
                    let rec: Record = serde_json::from_slice(&item?.1).map_err(backend)?;
                    records.insert(rec.delivery.id.clone(), rec.delivery);
                }
                return Ok(query.page_of(records.into_values()));
            }
            let prefix = keys::report_prefix(brand);
            let low = [prefix.as_slice(), &query.from_ms.unwrap_or(0).to_be_bytes()].concat();
            let high = match (&query.after, query.to_ms) {
                (Some(after), _) => keys::report(
                    &PlayerKey::new(brand.clone(), after.player.clone()),
                    after.queued_at_ms,
                    &after.id,
                ),
                (None, Some(to)) => [prefix.as_slice(), &to.to_be_bytes()].concat(),
                (None, None) => [prefix.as_slice(), &[0xff; 9]].concat(),
            };
            let mut scanned = 0;
            let range = inner
                .log
                .range(Bound::Included(&low), Bound::Excluded(&high), true);
            let mut range = range.peekable();
            'keys: while let Some(item) = range.next() {
                let (r_key, value) = item?;
                let (key, at, mut rows) = report_rows(&r_key, &value)?;
                // The rows of one player and millisecond: its bucket, and in a data dir from before
                // buckets, rows of their own beside it (their keys sort after the bucket's, so come
                // first here). Read together, newest first.
                let group = keys::report_bucket(&key, at);
                while let Some(Ok((next, _))) = range.peek()
                    && next.starts_with(&group)
                {
                    let (next, value) = range.next().expect("peeked")?;
                    rows.extend(report_rows(&next, &value)?.2);
                }
                rows.sort_unstable_by(|a, b| b.0.cmp(&a.0));
                for (id, seq) in rows {
                    let here = Cursor {
                        queued_at_ms: at,
                        player: key.player.clone(),
                        id,
                    };
                    // The cursor's bucket is in range (its key sorts before the cursor's), its rows
                    // from the cursor's on are not.
                    if !before_cursor(&here) {
                        continue;
                    }
                    scanned += 1;
                    if let Some(rec) = inner.record(&key, &here.id, seq)?
                        && wanted(&rec.delivery)
                    {
                        page.rows.push(rec.delivery);
                        if page.rows.len() == query.limit {
                            page.next = page.rows.last().map(cursor_of);
                            break 'keys;
                        }
                    }
                    if scanned == REPORT_SCAN_BUDGET {
                        page.next = Some(here);
                        break 'keys;
                    }
                }
            }
            Ok(page)
        })
        .await
    }

    async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        let brand = brand.clone();
        self.blocking(move |inner| {
            let brand = &brand;
            inner.brand_exists(brand)?;
            let prefix = keys::health_prefix(brand);
            let mut out = BTreeMap::new();
            for entry in inner.log.scan_prefix(&prefix) {
                let (k, v) = entry?;
                let id = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| DefinitionId::parse_stored(s).ok())
                    .ok_or_else(|| StoreError::corrupt("corrupt health key"))?;
                out.insert(id, serde_json::from_slice(&v).map_err(backend)?);
            }
            Ok(out)
        })
        .await
    }

    async fn postbacks_added(&self) {
        self.inner.outbox.notified().await;
    }

    fn subscribe(&self) -> broadcast::Receiver<crate::store::Announcement> {
        self.inner.announce.subscribe()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        self.blocking(|inner| inner.log.close()).await
    }
}
