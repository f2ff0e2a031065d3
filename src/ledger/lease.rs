//! Delivery: the per-player lease (one holder at a time, with a lifetime and a fencing token), what the
//! holder is sent, and the browser's acknowledgements.

use super::Ledger;
use super::queue::{finalize, queued_record, walk};
use crate::delivery::{Ack, BrowserReport};
use crate::ids::{PixelId, PlayerKey, SessionId};
use crate::metrics::PixelEvent;
use crate::pixel::QueuedPixel;
use crate::store::queues::{Lease, Mode, Write};
use crate::store::{PixelStatus, StoreError};

/// What a session's ask for its player's queue got.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leased {
    /// The next pixels to send it.
    pub pixels: Vec<QueuedPixel>,
    /// Another session holds the player's queue (maybe on a process that died): this one should ask
    /// again before long, since the lease runs out by itself.
    pub held_elsewhere: bool,
}

impl Ledger {
    /// Takes (or keeps, renewing it) the player's lease for `session` and returns the next pixels to
    /// send: those after the ones it already has in flight, in queue order, so that at most
    /// `max_in_flight` are unacknowledged. Nothing when another session holds a lease that has not run
    /// out. Expired pixels met on the way are dropped; pixels not yet durable are never handed out.
    pub async fn lease(
        &self,
        key: &PlayerKey,
        session: SessionId,
        max_in_flight: usize,
    ) -> Result<Vec<QueuedPixel>, StoreError> {
        Ok(self
            .lease_for(key, session, max_in_flight, &[])
            .await?
            .pixels)
    }

    /// [`Ledger::lease`], passing over the pixels `withheld` names (those this session's page held back
    /// for want of consent: [`Ledger::withhold`]), and saying also whether another session holds the
    /// queue. A pixel waiting for consent is sent like any other: only a session whose page has consent
    /// asks for pixels.
    pub async fn lease_for(
        &self,
        key: &PlayerKey,
        session: SessionId,
        max_in_flight: usize,
        withheld: &[PixelId],
    ) -> Result<Leased, StoreError> {
        // What an idle session's heartbeat finds, thousands of times a second on a busy hub: no work.
        if self.queues().surely_idle(key) {
            return Ok(Leased::default());
        }
        let now = self.now_ms();
        let options = self.inner.options;
        let owned = key.clone();
        let withheld = withheld.to_vec();
        let (sent, transitions, held_elsewhere) = self
            .transact(vec![key.clone()], Mode::LAZY, move |tx| {
                let key = &owned;
                let current = tx.lease(key)?.filter(|lease| lease.expires_at_ms > now);
                let (token, held) = match current {
                    Some(lease) if lease.session != session => {
                        return Ok((Vec::new(), Vec::new(), true));
                    }
                    Some(lease) => (lease.token, lease.in_flight),
                    None => (tx.next_seq()?, Vec::new()),
                };
                let holding = !held.is_empty();
                let barrier = tx.undurable_from(key);
                let mut transitions = Vec::new();
                let mut sent = Vec::new();
                let mut seqs = held;
                if seqs.len() < max_in_flight {
                    // Pixels are sent in queue order and new ones queue behind, so everything before the
                    // last one held was sent (held, or acked and gone): the walk starts after it.
                    let from = seqs.iter().max().copied();
                    walk(tx, key, from, max_in_flight, |tx, seq, pixel| {
                        if barrier.is_some_and(|first_undurable| seq >= first_undurable) {
                            return Ok(false); // its enqueue announces it once it is durable
                        }
                        if seqs.contains(&seq) || withheld.contains(&pixel.id) {
                            return Ok(true);
                        }
                        let mut record = queued_record(tx, key, &pixel)?;
                        if pixel.expires_at_ms <= now {
                            let status = PixelStatus::Expired;
                            let retention_ms = options.retention_ms;
                            transitions.extend(finalize(
                                tx,
                                key,
                                record,
                                status,
                                now,
                                retention_ms,
                            ));
                            return Ok(true);
                        }
                        let event = if record.delivery.sent_at_ms.is_some() {
                            PixelEvent::Redelivered
                        } else {
                            PixelEvent::Delivered
                        };
                        transitions.push((record.delivery.kind.clone(), event));
                        if record.delivery.status == PixelStatus::WaitingConsent {
                            tx.write(Write::CountWaiting {
                                key: key.clone(),
                                delta: -1,
                            });
                        }
                        record.delivery.note_sent(now);
                        tx.write(Write::UpdateRecord {
                            key: key.clone(),
                            record,
                        });
                        seqs.push(seq);
                        sent.push(pixel);
                        Ok(seqs.len() < max_in_flight)
                    })?;
                }
                if holding || !sent.is_empty() {
                    tx.write(Write::PutLease {
                        key: key.clone(),
                        lease: Some(Lease {
                            session,
                            token,
                            expires_at_ms: now + options.lease_ttl_ms,
                            in_flight: seqs,
                        }),
                    });
                }
                Ok((sent, transitions, false))
            })
            .await?;
        self.count(&key.brand, transitions);
        Ok(Leased {
            pixels: sent,
            held_elsewhere,
        })
    }

    /// Records that the browser fired these pixels: [`Ledger::acknowledge`] with nothing to report.
    pub async fn ack(&self, key: &PlayerKey, ids: &[PixelId]) -> Result<usize, StoreError> {
        let acks: Vec<Ack> = ids.iter().cloned().map(Ack::fired).collect();
        self.acknowledge(key, &acks).await
    }

    /// Records what the browser did with these pixels and removes them from the queue; durable when it
    /// returns. Accepted from any session of the player (the pixel fired, whoever holds the lease now).
    /// A pixel the browser reports as failed is removed too (never fired again: its request may have
    /// reached the affiliate) and recorded `failed` with the browser's reason; a note on a fired one
    /// (Meta's image fallback) is kept on its row. Ids unknown or already final are ignored. Returns how
    /// many pixels this call removed.
    pub async fn acknowledge(&self, key: &PlayerKey, acks: &[Ack]) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let (retention_ms, owned) = (self.inner.options.retention_ms, key.clone());
        let mut distinct: Vec<Ack> = acks.to_vec();
        distinct.sort_by(|a, b| a.id.cmp(&b.id));
        distinct.dedup_by(|a, b| a.id == b.id);
        let (removed, transitions, reports) = self
            .transact(vec![key.clone()], Mode::SETTLE, move |tx| {
                let key = &owned;
                let mut removed = Vec::new();
                let mut transitions = Vec::new();
                let mut reports: Vec<(String, BrowserReport)> = Vec::new();
                for ack in &distinct {
                    let Some(mut record) = tx.record(key, &ack.id)? else {
                        continue;
                    };
                    // Only client pixels: a browser cannot acknowledge a postback.
                    if !record.delivery.status.is_pending() || !record.is_client_pixel() {
                        continue;
                    }
                    removed.push(record.seq);
                    if let Some(report) = &ack.report {
                        record.delivery.reason = Some(report.reason.clone());
                        record.delivery.error.clone_from(&report.message);
                        reports.push((record.delivery.kind.clone(), report.clone()));
                    }
                    transitions.extend(finalize(tx, key, record, ack.status(), now, retention_ms));
                }
                if !removed.is_empty()
                    && let Some(mut lease) = tx.lease(key)?
                {
                    lease.in_flight.retain(|seq| !removed.contains(seq));
                    tx.write(Write::PutLease {
                        key: key.clone(),
                        lease: Some(lease),
                    });
                }
                Ok((removed.len(), transitions, reports))
            })
            .await?;
        self.count(&key.brand, transitions);
        for (kind, report) in &reports {
            self.inner.metrics.browser_report(&key.brand, kind, report);
        }
        Ok(removed)
    }

    /// The player's page in `session` has no consent to fire pixels: of `only` these (a vendor the page
    /// has no consent for), or of all of them (`None`: no consent at all). They wait in the queue,
    /// recorded [`PixelStatus::WaitingConsent`], until a session whose page has consent takes them or
    /// their TTL runs out. `only` names pixels the session has in flight (others are ignored); without
    /// it every pending pixel not in flight elsewhere waits and the session gives up its lease. Durable
    /// when it returns; returns how many pixels began waiting.
    pub async fn withhold(
        &self,
        key: &PlayerKey,
        session: SessionId,
        only: Option<Vec<PixelId>>,
    ) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let owned = key.clone();
        let (waiting, transitions) = self
            .transact(vec![key.clone()], Mode::SETTLE, move |tx| {
                let key = &owned;
                let lease = tx.lease(key)?.filter(|lease| lease.expires_at_ms > now);
                let (mut mine, elsewhere) = match lease {
                    Some(lease) if lease.session == session => (Some(lease), Vec::new()),
                    Some(lease) => (None, lease.in_flight),
                    None => (None, Vec::new()),
                };
                let mut records = Vec::new();
                match &only {
                    Some(ids) => {
                        let held = mine.as_ref().map_or(&[][..], |l| &l.in_flight[..]);
                        for id in ids {
                            if let Some(record) = tx.record(key, id)?
                                && held.contains(&record.seq)
                            {
                                records.push(record);
                            }
                        }
                    }
                    // Every record is asked for before any is needed: an engine that reads ahead
                    // (Redis) then fetches all the walk met in one round trip, not one per run.
                    None => walk(tx, key, None, 256, |tx, seq, pixel| {
                        if !elsewhere.contains(&seq)
                            && let Some(record) = tx.record(key, &pixel.id)?
                        {
                            records.push(record);
                        }
                        Ok(true)
                    })?,
                }
                let mut transitions = Vec::new();
                let mut seqs = Vec::new();
                for mut record in records {
                    let status = record.delivery.status;
                    if !record.is_client_pixel()
                        || !matches!(status, PixelStatus::Queued | PixelStatus::Delivered)
                    {
                        continue;
                    }
                    seqs.push(record.seq);
                    transitions.push((record.delivery.kind.clone(), PixelEvent::Withheld));
                    record.delivery.set_status(PixelStatus::WaitingConsent, now);
                    tx.write(Write::UpdateRecord {
                        key: key.clone(),
                        record,
                    });
                    tx.write(Write::CountWaiting {
                        key: key.clone(),
                        delta: 1,
                    });
                }
                if let Some(lease) = &mut mine {
                    lease.in_flight.retain(|seq| !seqs.contains(seq));
                    let keep = only.is_some() && !lease.in_flight.is_empty();
                    tx.write(Write::PutLease {
                        key: key.clone(),
                        lease: keep.then(|| lease.clone()),
                    });
                }
                Ok((seqs.len(), transitions))
            })
            .await?;
        self.count(&key.brand, transitions);
        if waiting > 0 {
            // A session of the player elsewhere, whose page has consent, may fire them now.
            self.queues().announce(key);
        }
        Ok(waiting)
    }

    /// Gives up `session`'s lease on the player's queue, if it holds it. What it had in flight becomes
    /// deliverable again, and if anything is pending, sessions are told.
    pub async fn release(&self, key: &PlayerKey, session: SessionId) -> Result<(), StoreError> {
        let owned = key.clone();
        let pending = self
            .transact(vec![key.clone()], Mode::LAZY, move |tx| {
                let key = &owned;
                match tx.lease(key)? {
                    Some(lease) if lease.session == session => {
                        tx.write(Write::PutLease {
                            key: key.clone(),
                            lease: None,
                        });
                        Ok(!tx.queue(key, None, 1)?.is_empty())
                    }
                    _ => Ok(false),
                }
            })
            .await?;
        if pending {
            self.queues().announce(key);
        }
        Ok(())
    }
}
