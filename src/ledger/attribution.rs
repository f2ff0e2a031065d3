//! Attribution from browsers, and the tally of parameter names each brand has seen.
//!
//! A capture the client script sends with its hello becomes the player's attribution context only where
//! the brand has not reported one ([`crate::attribution::adopt`]), in one transaction over the player,
//! counted against the brand's player quota like a registration. The names seen (in events and in
//! captures) are counted in this process's memory and merged into the brand's catalog entry every few
//! seconds by the upkeep task (and before the tally is read), so the hot paths pay a map update, not a
//! write.

use std::collections::BTreeMap;

use super::{Ledger, MAX_ROUNDS};
use crate::attribution::{self, CapturedClick, ParamsSeen, SeenParam, Touch};
use crate::ids::{BrandId, PlayerKey};
use crate::store::StoreError;
use crate::store::catalog::{Applied, Change, Entry, Value};
use crate::store::queues::{Mode, Usage, Write};

/// What became of a browser's capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Captured {
    /// It is now the player's attribution context.
    Adopted,
    /// The player's context stays: the brand reported one, or holds the click its touch prefers.
    Kept,
    /// The brand holds its quota of players with a context; nothing was written.
    OverQuota,
}

/// Names counted in this process and not yet merged into the catalog, per brand.
pub(super) type Tally = dashmap::DashMap<BrandId, BTreeMap<String, SeenParam>>;

/// Whether a name is counted as seen in an event or in a browser's capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Event,
    Browser,
}

impl Ledger {
    /// Offers a browser's capture (checked with [`attribution::check`]) as the player's attribution
    /// context. Durable when it returns.
    pub async fn capture(
        &self,
        key: &PlayerKey,
        click: CapturedClick,
        touch: Touch,
    ) -> Result<Captured, StoreError> {
        let now = self.now_ms();
        self.note_params(
            &key.brand,
            click.params.keys().map(|n| (n, 1)),
            Seen::Browser,
            now,
        );
        let quotas = self.inner.quotas;
        let owned = key.clone();
        let metrics = self.inner.metrics.clone();
        let outcome = self
            .transact(vec![key.clone()], Mode::GROW, move |tx| {
                let key = &owned;
                let stored = tx.context(key)?;
                let fresh = stored.is_none();
                let context = stored.unwrap_or_default();
                let Some(adopted) = attribution::adopt(&context, &click, touch) else {
                    return Ok(Captured::Kept);
                };
                if fresh {
                    let adding = Usage {
                        players: 1,
                        ..Usage::default()
                    };
                    match super::events::check_quotas(
                        tx, &key.brand, quotas, &adding, now, &metrics,
                    ) {
                        Err(StoreError::QuotaExceeded { .. }) => return Ok(Captured::OverQuota),
                        other => other?,
                    }
                    tx.write(Write::CountUsage {
                        brand: key.brand.clone(),
                        day: now / super::events::DAY_MS,
                        events: 0,
                        players: 1,
                    });
                }
                tx.write(Write::PutContext {
                    key: key.clone(),
                    context: adopted,
                    // A browser's click id never finds a player for an inbound call: only the brand's
                    // reported registration does.
                    click_id: None,
                });
                Ok(Captured::Adopted)
            })
            .await?;
        Ok(outcome)
    }

    /// Counts `names` (each with how many times) as seen for `brand` at `now`, in this process's tally.
    pub(super) fn note_params<'a>(
        &self,
        brand: &BrandId,
        names: impl IntoIterator<Item = (&'a String, u64)>,
        seen: Seen,
        now: u64,
    ) {
        let mut names = names.into_iter().peekable();
        if names.peek().is_none() {
            return;
        }
        let mut counts = self.inner.params_tally.entry(brand.clone()).or_default();
        for (name, times) in names {
            // A name is copied only when it is new to the tally; bounded here too, as the catalog is.
            if !counts.contains_key(name) {
                if counts.len() >= attribution::MAX_SEEN_NAMES {
                    continue;
                }
                counts.insert(name.clone(), SeenParam::default());
            }
            let count = counts.get_mut(name).expect("inserted just above");
            match seen {
                Seen::Event => count.events += times,
                Seen::Browser => count.browsers += times,
            }
            count.last_seen_ms = count.last_seen_ms.max(now);
        }
    }

    /// Merges this process's counts into the catalog: every brand's, or `only` one's. Counts whose
    /// merge failed stay for the next try.
    pub async fn flush_params(&self, only: Option<&BrandId>) -> Result<(), StoreError> {
        let brands: Vec<BrandId> = match only {
            Some(brand) => vec![brand.clone()],
            None => self
                .inner
                .params_tally
                .iter()
                .map(|e| e.key().clone())
                .collect(),
        };
        for brand in brands {
            let Some((_, counts)) = self.inner.params_tally.remove(&brand) else {
                continue;
            };
            if let Err(e) = self.merge_params(&brand, &counts).await {
                // Put back, added to what came in meanwhile.
                let mut kept = self.inner.params_tally.entry(brand).or_default();
                for (name, count) in counts {
                    kept.entry(name).or_default().add(&count);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn merge_params(
        &self,
        brand: &BrandId,
        counts: &BTreeMap<String, SeenParam>,
    ) -> Result<(), StoreError> {
        let entry = Entry::ParamsSeen(brand.clone());
        for _ in 0..MAX_ROUNDS {
            let read = self.catalog().read(&entry).await?;
            let mut seen = match &read {
                Value::ParamsSeen(seen) => seen.clone(),
                _ => ParamsSeen::default(),
            };
            seen.merge(counts);
            let change = Change::default()
                .expect(entry.clone(), read)
                .write(entry.clone(), Value::ParamsSeen(seen));
            if self.catalog().apply(change).await? == Applied::Done {
                return Ok(());
            }
        }
        Err(super::catalog::contended("the brand's parameter tally"))
    }

    /// The parameter names `brand` has seen, with this process's latest counts merged first.
    pub async fn params_seen(&self, brand: &BrandId) -> Result<ParamsSeen, StoreError> {
        self.require_brand(brand).await?;
        self.flush_params(Some(brand)).await?;
        match self
            .catalog()
            .read(&Entry::ParamsSeen(brand.clone()))
            .await?
        {
            Value::ParamsSeen(seen) => Ok(seen),
            _ => Ok(ParamsSeen::default()),
        }
    }
}
