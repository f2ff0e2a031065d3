//! A player's queue: what may be queued (idempotency by the caller's id, the cap, drop-oldest), what it
//! holds, and taking pixels out of it unfired (cancel, purge).

use std::collections::HashMap;
use std::time::Duration;

use super::outbox::unschedule;
use super::{Ledger, Transition};
use crate::delivery::{Delivery, Target};
use crate::ids::{PixelId, PlayerKey};
use crate::metrics::PixelEvent;
use crate::pixel::{NewPixel, QueuedPixel};
use crate::store::queues::{Mode, Record, Tx, Write};
use crate::store::{
    CancelOutcome, EnqueueOutcome, Enqueued, Lane, OnFull, PendingPixel, PixelStatus, Purged,
    StoreError,
};

/// Queue entries read at a time while walking a player's queue.
const PAGE: usize = 64;

impl Ledger {
    /// Appends pixels to a player's queue, all or nothing, and returns once they are durable. The
    /// brand's pixel policy must allow every one ([`StoreError::NotAllowed`], naming `pixel` or
    /// `pixels[i]`). A pixel whose caller id already names a pixel of this player (in any state, for as
    /// long as its record is kept) is not queued again: its answer says `duplicate`, with that pixel's
    /// status. Over the player's cap the batch is refused ([`StoreError::QueueFull`]) or, with
    /// drop-oldest, the oldest pending pixels no browser holds are dropped to make room and listed.
    /// Sessions of the player are told once the pixels are durable.
    pub async fn enqueue(
        &self,
        key: &PlayerKey,
        pixels: Vec<NewPixel>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let brand = self.require_brand(&key.brand).await?;
        let policy = brand.settings.pixel_policy();
        let single = pixels.len() == 1;
        for (i, pixel) in pixels.iter().enumerate() {
            policy.check(&pixel.body).map_err(|refusal| {
                let at = if single {
                    "pixel".to_owned()
                } else {
                    format!("pixels[{i}]")
                };
                StoreError::NotAllowed(refusal.at(&at))
            })?;
        }
        let now = self.now_ms();
        let (options, owned) = (self.inner.options, key.clone());
        let (outcome, transitions) = self
            .transact(vec![key.clone()], Mode::GROW, move |tx| {
                let key = &owned;
                let mut transitions = Vec::new();
                let mut answers: Vec<Enqueued> = Vec::with_capacity(pixels.len());
                let mut seen: HashMap<PixelId, usize> = HashMap::new();
                let mut added = 0u64;
                for pixel in &pixels {
                    if let Some(id) = &pixel.id {
                        if let Some(&first) = seen.get(id) {
                            answers.push(Enqueued {
                                duplicate: true,
                                ..answers[first].clone()
                            });
                            continue;
                        }
                        if let Some(record) = tx.record(key, id)? {
                            seen.insert(id.clone(), answers.len());
                            answers.push(Enqueued {
                                id: id.clone(),
                                status: record.delivery.status,
                                duplicate: true,
                            });
                            continue;
                        }
                    }
                    let id = pixel.id.clone().unwrap_or_else(PixelId::generate);
                    let ttl_ms = pixel
                        .ttl_seconds
                        .map_or(options.default_ttl_ms, |s| s * 1000);
                    let (write, kind) = new_pixel(tx, key, &id, pixel.clone(), now, ttl_ms)?;
                    tx.write(write);
                    transitions.push((kind, PixelEvent::Queued));
                    seen.insert(id.clone(), answers.len());
                    answers.push(Enqueued {
                        id,
                        status: PixelStatus::Queued,
                        duplicate: false,
                    });
                    added += 1;
                }
                let dropped = options.make_room(tx, key, added, now, &mut transitions)?;
                let outcome = EnqueueOutcome {
                    pixels: answers,
                    dropped,
                };
                Ok((outcome, transitions))
            })
            .await?;
        self.count(&key.brand, transitions);
        if outcome.pixels.iter().any(|p| !p.duplicate) {
            self.queues().announce(key);
        }
        if !outcome.dropped.is_empty() {
            tracing::info!(player = %key.player, dropped = outcome.dropped.len(), "queue cap reached: oldest pixels dropped");
        }
        Ok(outcome)
    }

    /// The player's pending pixels in queue order, each saying whether a browser holds it and its status
    /// (waiting for consent, among others); expired ones are left out.
    pub async fn pending(&self, key: &PlayerKey) -> Result<Vec<PendingPixel>, StoreError> {
        let now = self.now_ms();
        let owned = key.clone();
        self.transact(vec![key.clone()], Mode::LAZY, move |tx| {
            let key = &owned;
            let in_flight = in_flight(tx, key, now)?;
            let mut out = Vec::new();
            walk(tx, key, None, PAGE, |tx, seq, pixel| {
                if pixel.expires_at_ms > now {
                    // Read without stopping at a record the engine must fetch first (an engine that
                    // reads ahead, Redis, then fetches every one the walk met in one round trip).
                    let status = tx
                        .record(key, &pixel.id)?
                        .map_or(PixelStatus::Queued, |r| r.delivery.status);
                    out.push(PendingPixel {
                        in_flight: in_flight.contains(&seq),
                        status,
                        pixel,
                    });
                }
                Ok(true)
            })?;
            Ok(out)
        })
        .await
    }

    /// Cancels one pending pixel or postback that is not being delivered right now: a pixel a browser
    /// holds, or a postback whose attempt runs (its outbox entry is then at the end of the claim, not at
    /// its next attempt), may be firing and cannot be recalled. Durable when it returns.
    pub async fn cancel(&self, key: &PlayerKey, id: &PixelId) -> Result<CancelOutcome, StoreError> {
        let now = self.now_ms();
        let (retention_ms, owned, id) = (self.inner.options.retention_ms, key.clone(), id.clone());
        let (outcome, transitions) = self
            .transact(vec![key.clone()], Mode::SETTLE, move |tx| {
                let key = &owned;
                let Some(record) = tx.record(key, &id)? else {
                    return Ok((CancelOutcome::NotFound, None));
                };
                if !record.delivery.status.is_pending() {
                    return Ok((CancelOutcome::AlreadyFinal(record.delivery.status), None));
                }
                let (outcome, status) = match record.delivery.expires_at_ms {
                    Some(_) if in_flight(tx, key, now)?.contains(&record.seq) => {
                        return Ok((CancelOutcome::InFlight, None));
                    }
                    Some(expires_at_ms) if expires_at_ms <= now => (
                        CancelOutcome::AlreadyFinal(PixelStatus::Expired),
                        PixelStatus::Expired,
                    ),
                    Some(_) => (CancelOutcome::Cancelled, PixelStatus::Cancelled),
                    None => {
                        let url = record.delivery.final_url.as_deref().unwrap_or("");
                        let lane = Lane::of(&key.brand, url);
                        match record.delivery.next_attempt_at_ms {
                            Some(due) if tx.scheduled(&lane, due, key, &id)? => {
                                tx.write(unschedule(key, &id, &lane, due));
                            }
                            _ => return Ok((CancelOutcome::InFlight, None)),
                        }
                        (CancelOutcome::Cancelled, PixelStatus::Cancelled)
                    }
                };
                let transition = finalize(tx, key, record, status, now, retention_ms);
                Ok((outcome, transition))
            })
            .await?;
        self.count(&key.brand, transitions.into_iter().collect());
        Ok(outcome)
    }

    /// Cancels every pending client pixel of the player that no browser holds. Durable when it
    /// returns.
    pub async fn purge(&self, key: &PlayerKey) -> Result<Purged, StoreError> {
        self.check_brand(&key.brand).await?;
        let now = self.now_ms();
        let (retention_ms, owned) = (self.inner.options.retention_ms, key.clone());
        let (purged, transitions) = self
            .transact(vec![key.clone()], Mode::SETTLE, move |tx| {
                let key = &owned;
                let in_flight = in_flight(tx, key, now)?;
                let mut queued = Vec::new();
                walk(tx, key, None, PAGE, |_, seq, pixel| {
                    queued.push((seq, pixel));
                    Ok(true)
                })?;
                let mut purged = Purged::default();
                let mut transitions = Vec::new();
                for (seq, pixel) in queued {
                    if in_flight.contains(&seq) {
                        purged.in_flight += 1;
                        continue;
                    }
                    let record = queued_record(tx, key, &pixel)?;
                    let status = if pixel.expires_at_ms <= now {
                        PixelStatus::Expired
                    } else {
                        purged.cancelled += 1;
                        PixelStatus::Cancelled
                    };
                    transitions.extend(finalize(tx, key, record, status, now, retention_ms));
                }
                Ok((purged, transitions))
            })
            .await?;
        self.count(&key.brand, transitions);
        Ok(purged)
    }
}

/// The record and queue entry of a new client pixel, queued `now`.
pub(super) fn new_pixel(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    id: &PixelId,
    pixel: NewPixel,
    now: u64,
    ttl_ms: u64,
) -> Result<(Write, String), StoreError> {
    let seq = tx.next_seq()?;
    let queued = QueuedPixel {
        body: pixel.body.with_defaults(id),
        id: id.clone(),
        trigger: pixel.trigger,
        tcf_vendor_id: pixel.tcf_vendor_id,
        queued_at_ms: now,
        expires_at_ms: now + ttl_ms,
    };
    let mut delivery = Delivery::new(
        id.clone(),
        key.player.clone(),
        Target::Client(&queued.body),
        queued.trigger.clone(),
        pixel.origin,
        now,
    );
    delivery.expires_at_ms = Some(queued.expires_at_ms);
    let kind = delivery.kind.clone();
    let record = Record {
        seq,
        post: None,
        delivery,
    };
    let write = Write::AddPixel {
        key: key.clone(),
        pixel: queued,
        record,
    };
    Ok((write, kind))
}

/// Stages the move of a pending pixel or postback to a final status, and says what to count (nothing
/// for a status that is not final). The
/// record is kept a retention period, never less than the pixel's own life: its event's record is kept
/// that long and reads it.
pub(super) fn finalize(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    mut record: Record,
    status: PixelStatus,
    now: u64,
    retention_ms: u64,
) -> Option<Transition> {
    let event = match status {
        PixelStatus::Fired => Some(PixelEvent::Fired(Duration::from_millis(
            now.saturating_sub(record.delivery.queued_at_ms),
        ))),
        PixelStatus::Expired => Some(PixelEvent::Expired),
        PixelStatus::Cancelled => Some(PixelEvent::Cancelled),
        PixelStatus::Dropped => Some(PixelEvent::Dropped),
        PixelStatus::Failed => Some(PixelEvent::Failed),
        PixelStatus::Queued
        | PixelStatus::Delivered
        | PixelStatus::WaitingConsent
        | PixelStatus::PendingRetry => None,
    };
    if record.delivery.status == PixelStatus::WaitingConsent {
        tx.write(Write::CountWaiting {
            key: key.clone(),
            delta: -1,
        });
    }
    let kind = record.delivery.kind.clone();
    let forget_at_ms = (now + retention_ms).max(record.delivery.expires_at_ms.unwrap_or(0));
    record.delivery.set_status(status, now);
    tx.write(Write::Finalize {
        key: key.clone(),
        record,
        forget_at_ms,
    });
    event.map(|event| (kind, event))
}

/// The queue positions the player's lease holder has in flight; none when the lease ran out.
pub(super) fn in_flight(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    now: u64,
) -> Result<Vec<u64>, StoreError> {
    Ok(tx
        .lease(key)?
        .filter(|lease| lease.expires_at_ms > now)
        .map(|lease| lease.in_flight)
        .unwrap_or_default())
}

/// Calls `visit` on the player's queue entries after position `from` (from the head for `None`), in
/// order, until it returns false or the queue ends. Entries are read a page at a time, the first page
/// `first_page` long: a caller that expects to stop early (a lease wants a window's worth) reads no
/// more than it needs.
pub(super) fn walk(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    from: Option<u64>,
    first_page: usize,
    mut visit: impl FnMut(&mut dyn Tx, u64, QueuedPixel) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut after = from;
    let mut size = first_page.max(1);
    loop {
        let page = tx.queue(key, after, size)?;
        let full = page.len() == size;
        size = PAGE;
        for (seq, pixel) in page {
            after = Some(seq);
            if !visit(tx, seq, pixel)? {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// The record of a pixel found in the queue: a queue entry always has one.
pub(super) fn queued_record(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    pixel: &QueuedPixel,
) -> Result<Record, StoreError> {
    tx.record(key, &pixel.id)?
        .ok_or_else(|| StoreError::corrupt("a queued pixel without its record"))
}

impl super::Millis {
    /// Makes room for `added` new pixels of `key` under the queue cap, staging the drop of the oldest
    /// pending pixels no browser holds when the policy allows it; returns the ids dropped. Fails with
    /// [`StoreError::QueueFull`] when the batch must be refused (and then nothing of it is written).
    pub(super) fn make_room(
        &self,
        tx: &mut dyn Tx,
        key: &PlayerKey,
        added: u64,
        now: u64,
        transitions: &mut Vec<Transition>,
    ) -> Result<Vec<PixelId>, StoreError> {
        let cap = self.queue_cap.max_per_player;
        if added == 0 {
            // Nothing new (all duplicates): never refuse or drop, even over a cap lowered since.
            return Ok(Vec::new());
        }
        let pending = tx.pending_count(key)?;
        if pending + added <= cap {
            return Ok(Vec::new());
        }
        let full = || StoreError::QueueFull {
            player: key.player.clone(),
            pending,
            cap,
        };
        if self.queue_cap.on_full == OnFull::Reject || added > cap {
            return Err(full());
        }
        let in_flight = in_flight(tx, key, now)?;
        let mut need = pending + added - cap;
        let mut oldest = Vec::new();
        walk(tx, key, None, PAGE, |_, seq, pixel| {
            if !in_flight.contains(&seq) {
                // A browser may be firing an in-flight one right now: never dropped.
                oldest.push(pixel);
                need -= 1;
            }
            Ok(need > 0)
        })?;
        if need > 0 {
            return Err(full());
        }
        let mut dropped = Vec::new();
        for pixel in oldest {
            let record = queued_record(tx, key, &pixel)?;
            let status = if pixel.expires_at_ms <= now {
                PixelStatus::Expired
            } else {
                dropped.push(pixel.id);
                PixelStatus::Dropped
            };
            transitions.extend(finalize(tx, key, record, status, now, self.retention_ms));
        }
        Ok(dropped)
    }
}
