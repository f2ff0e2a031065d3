//! Upkeep: pixels whose TTL ran out leave their queues, and records (pixels', postbacks', events')
//! whose retention ran out are forgotten. One background task a process, in bounded chunks, each
//! player's run of due entries (at most [`GROUP`]) one small transaction, so writers are never held up
//! for long.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::{finalize, in_flight};
use super::{Ledger, Transition};
use crate::metrics::Upkeep;
use crate::store::queues::{DueEntry, Mode, Tx, Write};
use crate::store::{PixelStatus, StoreError};

/// How often the due entries are looked at.
const EVERY: Duration = Duration::from_secs(5);
/// Entries read at a time.
const CHUNK: usize = 1000;
/// Most entries of one player handled in one transaction.
const GROUP: usize = 128;

/// What handling one due entry did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Handled {
    expired: u64,
    forgotten: u64,
}

impl Ledger {
    /// Starts the upkeep task on `tracker`: a pass every few seconds until `stop`.
    pub fn spawn_upkeep(&self, stop: CancellationToken, tracker: &TaskTracker) {
        let ledger = self.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        // What this process counted is merged before it goes.
                        if let Err(e) = ledger.flush_params(None).await {
                            tracing::warn!(error = %e, "the parameter names seen since the last pass are lost");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(EVERY) => {}
                }
                if let Err(e) = ledger.flush_params(None).await {
                    tracing::warn!(error = %e, "merging the parameter names seen failed; the next pass retries");
                }
                let started = Instant::now();
                let result = ledger.sweep(ledger.now_ms(), &stop).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "upkeep pass failed; the next one retries");
                }
                ledger
                    .inner
                    .metrics
                    .upkeep_pass(started.elapsed(), result.is_ok());
            }
        });
    }

    /// One upkeep pass as of `now`: expires pending pixels whose TTL ran out (not one a browser holds:
    /// its ack or release decides; never a postback, which ends by its attempts) and forgets records
    /// and events whose retention ran out. Returns how many due entries it handled; stops early when
    /// `stop` is cancelled (the next start carries on).
    pub async fn sweep(&self, now: u64, stop: &CancellationToken) -> Result<usize, StoreError> {
        let mut handled = 0;
        let mut after = None;
        loop {
            let due = self.queues().due_entries(now, after.clone(), CHUNK).await?;
            let Some(last) = due.last() else { break };
            // A cursor, not a restart from the top: entries that must stay (in flight) are passed over.
            after = Some(last.clone());
            // Entries next to each other of one player are handled in one transaction: the records
            // of one ack end together, and an engine may keep their report rows together.
            for group in due.chunk_by(|a, b| a.key == b.key) {
                for entries in group.chunks(GROUP) {
                    if stop.is_cancelled() {
                        return Ok(handled);
                    }
                    let done = self.upkeep_entries(entries.to_vec(), now).await?;
                    let metrics = &self.inner.metrics;
                    metrics.upkeep(Upkeep::Expired, done.expired);
                    metrics.upkeep(Upkeep::RecordsForgotten, done.forgotten);
                    handled += entries.len();
                }
            }
        }
        loop {
            let due = self.queues().due_events(now, CHUNK).await?;
            if due.is_empty() || stop.is_cancelled() {
                return Ok(handled);
            }
            for (due_ms, brand, id) in due {
                let scope = vec![(brand.clone(), id.clone())];
                self.transact_events(Vec::new(), scope, Mode::LAZY, move |tx| {
                    tx.write(Write::ForgetEvent {
                        brand: brand.clone(),
                        id: id.clone(),
                        due_ms,
                    });
                    Ok(())
                })
                .await?;
                self.inner.metrics.upkeep(Upkeep::EventsForgotten, 1);
                handled += 1;
            }
        }
    }

    /// Handles due entries of the expiry index of one player, those still there, in one transaction.
    async fn upkeep_entries(
        &self,
        entries: Vec<DueEntry>,
        now: u64,
    ) -> Result<Handled, StoreError> {
        let retention_ms = self.inner.options.retention_ms;
        let Some(first) = entries.first() else {
            return Ok(Handled::default());
        };
        let (brand, scope) = (first.key.brand.clone(), vec![first.key.clone()]);
        let (handled, transitions) = self
            .transact(scope, Mode::LAZY, move |tx| {
                let mut handled = Handled::default();
                let mut transitions = Vec::new();
                for entry in &entries {
                    let (done, transition) = upkeep_entry(tx, entry, now, retention_ms)?;
                    handled.expired += done.expired;
                    handled.forgotten += done.forgotten;
                    transitions.extend(transition);
                }
                Ok((handled, transitions))
            })
            .await?;
        self.count(&brand, transitions);
        Ok(handled)
    }
}

/// Handles one due entry of the expiry index, if it is still there.
fn upkeep_entry(
    tx: &mut dyn Tx,
    entry: &DueEntry,
    now: u64,
    retention_ms: u64,
) -> Result<(Handled, Option<Transition>), StoreError> {
    // The listing was read outside this transaction: an ack, cancel or lease may have moved the entry
    // since. Only an entry still present describes the record's current state.
    if !tx.holds_due(entry)? {
        return Ok((Handled::default(), None));
    }
    let key = &entry.key;
    let record = match &entry.id {
        Some(id) => tx.record(key, id)?,
        None => None,
    };
    let mut handled = Handled::default();
    let mut transition = None;
    match record {
        Some(record) if record.seq != entry.seq => {} // a stale entry of an older record
        Some(record) if record.delivery.status.is_pending() => {
            if !record.is_client_pixel() || in_flight(tx, key, now)?.contains(&record.seq) {
                // A postback ends by its attempts, not by time; a pixel sent already may be firing
                // right now: its ack or release decides.
                return Ok((handled, None));
            }
            let status = PixelStatus::Expired;
            transition = finalize(tx, key, record, status, now, retention_ms);
            handled.expired = 1;
        }
        Some(record) => {
            tx.write(Write::Forget {
                key: key.clone(),
                record,
            });
            handled.forgotten = 1;
        }
        None => {}
    }
    tx.write(Write::DropDue(entry.clone()));
    Ok((handled, transition))
}
