//! The outbox: which postbacks are due, one sender's claim on one, what an attempt's outcome makes of it
//! (fired, retried later, failed), and each definition's postback health.

use super::queue::finalize;
use super::{Ledger, Transition};
use crate::delivery::Attempt;
use crate::ids::{BrandId, DefinitionId, PixelId, PlayerKey};
use crate::store::queues::{Mode, Tx, Write};
use crate::store::{
    DefinitionHealth, DuePostback, Lane, LaneDue, PixelStatus, StoreError, Verdict,
};

impl Ledger {
    /// Every lane that holds a postback, with its earliest entry: what the sender chooses from, and
    /// when it must look again.
    pub async fn postback_lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        self.queues().lanes().await
    }

    /// The lane's postbacks due at `now`, earliest first, at most `limit`. Nothing is claimed (the
    /// sender claims each with [`Ledger::claim_postback`]). An entry with nothing sendable behind it
    /// would keep its lane due for ever: it is dropped.
    pub async fn due_postbacks(
        &self,
        lane: &Lane,
        now: u64,
        limit: usize,
    ) -> Result<Vec<DuePostback>, StoreError> {
        let owned = lane.clone();
        let (due, orphans) = self
            .transact(Vec::new(), Mode::LAZY, move |tx| {
                let lane = &owned;
                let mut due = Vec::new();
                let mut orphans = Vec::new();
                for (due_ms, key, id) in tx.due(lane, now, limit)? {
                    let sendable = tx
                        .record(&key, &id)?
                        .filter(|rec| rec.delivery.status.is_pending())
                        .and_then(|rec| rec.delivery.final_url.clone().map(|url| (rec, url)));
                    match sendable {
                        Some((rec, url)) => due.push(DuePostback {
                            lane: lane.clone(),
                            key,
                            id,
                            due_ms,
                            url,
                            post: rec.post,
                            definition_id: rec.delivery.definition_id,
                            attempts: rec.delivery.attempts,
                        }),
                        None => orphans.push((due_ms, key, id)),
                    }
                }
                Ok((due, orphans))
            })
            .await?;
        for (due_ms, key, id) in orphans {
            self.drop_orphan(lane, due_ms, &key, &id).await?;
        }
        Ok(due)
    }

    /// Takes out an outbox entry whose postback is gone or final, after checking again under the
    /// player's transaction.
    async fn drop_orphan(
        &self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<(), StoreError> {
        let (lane, owned, id) = (lane.clone(), key.clone(), id.clone());
        self.transact(vec![key.clone()], Mode::SETTLE, move |tx| {
            let key = &owned;
            let pending = tx.record(key, &id)?.is_some_and(|rec| {
                rec.delivery.status.is_pending() && rec.delivery.final_url.is_some()
            });
            if !pending && tx.scheduled(&lane, due_ms, key, &id)? {
                tracing::warn!(player = %key.player, postback = %id, "dropping an outbox entry with no postback behind it");
                tx.write(unschedule(key, &id, &lane, due_ms));
            }
            Ok(())
        })
        .await
    }

    /// Takes a due postback for one attempt, moving its outbox entry to `until`: if the sender dies
    /// mid-attempt, the postback is due again then, so a crash never loses it. False when it is no
    /// longer where `due` says (another sender claimed it, or it was cancelled).
    pub async fn claim_postback(&self, due: &DuePostback, until: u64) -> Result<bool, StoreError> {
        let due = due.clone();
        // Lazy: if this move is lost in a crash, the postback is simply due where it was.
        self.transact(vec![due.key.clone()], Mode::LAZY, move |tx| {
            let (key, id, lane) = (&due.key, &due.id, &due.lane);
            if !tx.scheduled(lane, due.due_ms, key, id)? {
                return Ok(false);
            }
            tx.write(unschedule(key, id, lane, due.due_ms));
            tx.write(Write::Schedule {
                key: key.clone(),
                id: id.clone(),
                lane: lane.clone(),
                due_ms: until,
            });
            Ok(true)
        })
        .await
    }

    /// Records an attempt of a postback claimed until `claimed_until`, and where the postback goes next
    /// (`verdict`); durable when it returns, so a postback recorded `fired` is never sent again. Counts
    /// towards its definition's health, which it returns. An attempt of a postback cancelled meanwhile
    /// changes nothing.
    pub async fn record_attempt(
        &self,
        due: &DuePostback,
        claimed_until: u64,
        attempt: Attempt,
        verdict: Verdict,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        let (due, brand) = (due.clone(), due.key.brand.clone());
        let retention_ms = self.inner.options.retention_ms;
        let (health, transitions) = self
            .transact(vec![due.key.clone()], Mode::SETTLE, move |tx| {
                let (key, id, lane) = (&due.key, &due.id, &due.lane);
                if tx.scheduled(lane, claimed_until, key, id)? {
                    tx.write(unschedule(key, id, lane, claimed_until));
                }
                let Some(mut record) = tx.record(key, id)? else {
                    return Ok((None, Vec::new()));
                };
                if !record.delivery.status.is_pending() {
                    return Ok((None, Vec::new()));
                }
                let now = attempt.at_ms + attempt.duration_ms;
                let failed = verdict != Verdict::Fired;
                let error = attempt
                    .http_status
                    .map(|s| format!("HTTP {s}"))
                    .or_else(|| attempt.error.clone());
                let (status, next_at) = match verdict {
                    Verdict::Fired => (PixelStatus::Fired, None),
                    Verdict::Failed => (PixelStatus::Failed, None),
                    Verdict::Retry { at_ms } => (PixelStatus::PendingRetry, Some(at_ms)),
                };
                record
                    .delivery
                    .note_attempt(attempt.clone(), status, next_at);
                let mut transitions: Vec<Transition> = Vec::new();
                match next_at {
                    Some(at) => {
                        tx.write(Write::Schedule {
                            key: key.clone(),
                            id: id.clone(),
                            lane: lane.clone(),
                            due_ms: at,
                        });
                        tx.write(Write::UpdateRecord {
                            key: key.clone(),
                            record,
                        });
                    }
                    None => {
                        let status = record.delivery.status;
                        transitions.extend(finalize(tx, key, record, status, now, retention_ms));
                    }
                }
                let health = match &due.definition_id {
                    Some(definition) => {
                        let mut health = tx.health(&key.brand, definition)?.unwrap_or_default();
                        if failed {
                            health.consecutive_failures += 1;
                            health.last_failure_at_ms = Some(now);
                            health.last_error = error;
                        } else {
                            health.consecutive_failures = 0;
                            health.last_success_at_ms = Some(now);
                        }
                        tx.write(Write::PutHealth {
                            brand: key.brand.clone(),
                            definition: definition.clone(),
                            health: Some(health.clone()),
                        });
                        Some(health)
                    }
                    None => None,
                };
                Ok((health, transitions))
            })
            .await?;
        self.count(&brand, transitions);
        Ok(health)
    }

    /// Forgets a definition's postback health (it was saved again, or deleted): its next attempts
    /// count afresh.
    pub(super) async fn reset_health(
        &self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<(), StoreError> {
        let (brand, definition) = (brand.clone(), definition.clone());
        self.transact(Vec::new(), Mode::SETTLE, move |tx: &mut dyn Tx| {
            tx.write(Write::PutHealth {
                brand: brand.clone(),
                definition: definition.clone(),
                health: None,
            });
            Ok(())
        })
        .await
    }
}

pub(super) fn unschedule(key: &PlayerKey, id: &PixelId, lane: &Lane, due_ms: u64) -> Write {
    Write::Unschedule {
        key: key.clone(),
        id: id.clone(),
        lane: lane.clone(),
        due_ms,
    }
}
