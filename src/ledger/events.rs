//! Events: each reported once (by its id), planned against the player's attribution context and the
//! brand's definitions ([`crate::event::plan`], pure), and everything it produces written in one
//! transaction: pixels, postbacks, failed rows, the new context and the event's record.

use std::collections::{BTreeMap, HashMap};

use super::attribution::Seen;
use super::queue::new_pixel;
use super::{Ledger, Transition};
use crate::attribution::Source;
use crate::delivery::{Delivery, Target};
use crate::event::{self, Event, EventOutcome, NewPostback, PlayerContext};
use crate::ids::{BrandId, EventId, PlayerId, PlayerKey};
use crate::metrics::PixelEvent;
use crate::store::queues::{Mode, Record, Tx, Usage, Write};
use crate::store::{Lane, Quota, Quotas, StoreError};

/// Longest a postback can keep being retried: the most attempts the settings allow, each wait capped
/// at a day. An event's record is kept at least this long past its retention when it has postbacks, so
/// a retried report of it is still recognised.
const POSTBACK_LIFETIME_MS: u64 = 50 * 24 * 3600 * 1000;
/// A UTC day, for the daily event quota.
pub(super) const DAY_MS: u64 = 24 * 3600 * 1000;

/// What one ingest did, besides its answers, for the counters.
#[derive(Default)]
struct Ingested {
    outcomes: Vec<EventOutcome>,
    transitions: Vec<Transition>,
    duplicates: u64,
    render_failures: Vec<(&'static str, &'static str)>,
    dropped: usize,
    /// Players with new pixels, to wake.
    players: Vec<PlayerKey>,
    postbacks: bool,
}

impl Ledger {
    /// Processes a batch of events, all or nothing, and returns once everything is durable: each new
    /// event is planned against the player's context (as earlier events of the batch left it) and the
    /// brand's definitions, and its pixels, postbacks, failed rows, new context and record are
    /// committed together. An event whose id the brand already used (in this batch, an earlier one, or
    /// before a restart) changes nothing; its answer is the recorded one, with current statuses and
    /// `duplicate` set. A type nobody knows refuses the batch ([`StoreError::UnknownEventType`]), as does
    /// a brand at one of its quotas.
    pub async fn ingest(
        &self,
        brand: &BrandId,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let settings = self.require_brand(brand).await?.settings;
        let definitions = self.catalog().definitions(brand).await?;
        event::check_types(&events, &definitions, &settings.qualification)?;
        let now = self.now_ms();
        let (options, quotas, metrics) = (
            self.inner.options,
            self.inner.quotas,
            self.inner.metrics.clone(),
        );
        let players: Vec<PlayerKey> = events
            .iter()
            .map(|e| PlayerKey::new(brand.clone(), e.player_id.clone()))
            .collect();
        // For the brand's tally of names seen (its pixel editor's macros), counted once the batch lands.
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        for event in &events {
            for name in event.params.keys() {
                *names.entry(name.clone()).or_default() += 1;
            }
        }
        let owned = brand.clone();
        let scope_events: Vec<(BrandId, EventId)> = events
            .iter()
            .map(|e| (brand.clone(), e.event_id.clone()))
            .collect();
        let ingested = self
            .transact_events(players, scope_events, Mode::GROW, move |tx| {
                let brand = &owned;
                let mut done = Ingested::default();
                let mut contexts: HashMap<PlayerId, (PlayerContext, bool)> = HashMap::new();
                let mut answered: HashMap<EventId, usize> = HashMap::new();
                let mut added: HashMap<PlayerKey, u64> = HashMap::new();
                let (mut new_players, mut new_postbacks) = (0u64, 0u64);
                for event in &events {
                    if let Some(&first) = answered.get(&event.event_id) {
                        let again = EventOutcome {
                            duplicate: true,
                            ..done.outcomes[first].clone()
                        };
                        done.outcomes.push(again);
                        done.duplicates += 1;
                        continue;
                    }
                    answered.insert(event.event_id.clone(), done.outcomes.len());
                    if let Some(recorded) = tx.event(brand, &event.event_id)? {
                        done.outcomes.push(EventOutcome {
                            duplicate: true,
                            ..with_statuses(tx, brand, recorded)?
                        });
                        done.duplicates += 1;
                        continue;
                    }
                    let key = PlayerKey::new(brand.clone(), event.player_id.clone());
                    if !contexts.contains_key(&event.player_id) {
                        let stored = tx.context(&key)?;
                        let fresh = stored.is_none();
                        contexts
                            .insert(event.player_id.clone(), (stored.unwrap_or_default(), fresh));
                    }
                    let (context, fresh) = contexts
                        .get_mut(&event.player_id)
                        .expect("inserted just above");
                    let plan =
                        event::plan(brand, settings.rules(), event, context, &definitions, now);
                    // The event's id must be remembered while any pixel it queued can still fire.
                    let mut forget_at_ms = now + options.retention_ms;
                    for pixel in plan.pixels {
                        let id = pixel.id.clone().expect("planned pixels carry their ids");
                        let ttl_ms = pixel
                            .ttl_seconds
                            .map_or(options.default_ttl_ms, |s| s * 1000);
                        forget_at_ms = forget_at_ms.max(now + ttl_ms);
                        let (write, kind) = new_pixel(tx, &key, &id, pixel, now, ttl_ms)?;
                        tx.write(write);
                        done.transitions.push((kind, PixelEvent::Queued));
                        *added.entry(key.clone()).or_insert(0) += 1;
                    }
                    if !plan.postbacks.is_empty() {
                        // And while its postbacks may still be retried.
                        forget_at_ms =
                            forget_at_ms.max(now + options.retention_ms + POSTBACK_LIFETIME_MS);
                        done.postbacks = true;
                    }
                    new_postbacks += plan.postbacks.len() as u64;
                    for postback in plan.postbacks {
                        let transition = new_postback(tx, &key, postback, now)?;
                        done.transitions.push(transition);
                    }
                    for failure in &plan.failures {
                        let seq = tx.next_seq()?;
                        let delivery = Delivery::render_failed(key.player.clone(), failure, now);
                        done.transitions
                            .push((delivery.kind.clone(), PixelEvent::Failed));
                        done.render_failures.push((failure.reason, failure.kind));
                        tx.write(Write::AddFailed {
                            key: key.clone(),
                            record: Record {
                                seq,
                                post: None,
                                delivery,
                            },
                            forget_at_ms: now + options.retention_ms,
                        });
                    }
                    if let Some(changed) = plan.context {
                        if *fresh {
                            *fresh = false;
                            new_players += 1;
                        }
                        // Only a click id the brand reported finds its player for inbound calls:
                        // one a browser captured came from a URL anyone can write, and would take
                        // the click id over from the player it belongs to.
                        let click = |c: &PlayerContext| {
                            let reported: Vec<String> = settings
                                .click_id_params
                                .iter()
                                .filter(|name| !c.from_browser.contains(name))
                                .cloned()
                                .collect();
                            (c.attribution_source() == Some(Source::Event))
                                .then(|| event::click_id(&c.params, &reported))
                                .flatten()
                        };
                        let new_click =
                            click(&changed).filter(|new| Some(new) != click(context).as_ref());
                        tx.write(Write::PutContext {
                            key: key.clone(),
                            context: changed.clone(),
                            click_id: new_click,
                        });
                        *context = changed;
                    }
                    tx.write(Write::PutEvent {
                        brand: brand.clone(),
                        outcome: plan.outcome.clone(),
                        forget_at_ms,
                    });
                    done.outcomes.push(plan.outcome);
                }
                let new_events = done.outcomes.len() as u64 - done.duplicates;
                let usage = Usage {
                    events_today: new_events,
                    players: new_players,
                    outbox: new_postbacks,
                };
                check_quotas(tx, brand, quotas, &usage, now, &metrics)?;
                tx.write(Write::CountUsage {
                    brand: brand.clone(),
                    day: now / DAY_MS,
                    events: usage.events_today,
                    players: usage.players,
                });
                for (key, added) in &added {
                    done.dropped += options
                        .make_room(tx, key, *added, now, &mut done.transitions)?
                        .len();
                }
                done.players = added.into_keys().collect();
                Ok(done)
            })
            .await?;
        let new_events = ingested.outcomes.len() as u64 - ingested.duplicates;
        self.note_params(brand, names.iter().map(|(n, c)| (n, *c)), Seen::Event, now);
        self.inner
            .metrics
            .events(brand, new_events, ingested.duplicates);
        for (reason, kind) in &ingested.render_failures {
            self.inner.metrics.render_failure(brand, reason, kind);
        }
        self.count(brand, ingested.transitions);
        if ingested.dropped > 0 {
            tracing::info!(%brand, dropped = ingested.dropped, "queue cap reached: oldest pixels dropped");
        }
        for key in &ingested.players {
            self.queues().announce(key);
        }
        if ingested.postbacks {
            self.queues().announce_postbacks();
        }
        Ok(ingested.outcomes)
    }

    /// The record of an event, with the current status of everything it produced.
    pub async fn event(
        &self,
        brand: &BrandId,
        id: &EventId,
    ) -> Result<Option<EventOutcome>, StoreError> {
        self.check_brand(brand).await?;
        let (owned, id) = (brand.clone(), id.clone());
        let scope = vec![(brand.clone(), id.clone())];
        self.transact_events(Vec::new(), scope, Mode::LAZY, move |tx| {
            match tx.event(&owned, &id)? {
                Some(recorded) => with_statuses(tx, &owned, recorded).map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

/// An event's record with each pixel's and postback's status as it is now.
fn with_statuses(
    tx: &mut dyn Tx,
    brand: &BrandId,
    mut outcome: EventOutcome,
) -> Result<EventOutcome, StoreError> {
    let key = PlayerKey::new(brand.clone(), outcome.player_id.clone());
    for produced in &mut outcome.pixels {
        if let Some(record) = tx.record(&key, &produced.id)? {
            produced.status = record.delivery.status;
        }
    }
    Ok(outcome)
}

/// Stages a new postback, due now, in its lane of the outbox.
fn new_postback(
    tx: &mut dyn Tx,
    key: &PlayerKey,
    postback: NewPostback,
    now: u64,
) -> Result<Transition, StoreError> {
    let seq = tx.next_seq()?;
    let mut delivery = Delivery::new(
        postback.id.clone(),
        key.player.clone(),
        Target::S2s {
            url: &postback.url,
            post: postback.post.is_some(),
        },
        Some(postback.trigger),
        Some(postback.origin),
        now,
    );
    delivery.next_attempt_at_ms = Some(now);
    let kind = delivery.kind.clone();
    tx.write(Write::AddPostback {
        key: key.clone(),
        lane: Lane::of(&key.brand, &postback.url),
        due_ms: now,
        record: Record {
            seq,
            post: postback.post,
            delivery,
        },
    });
    Ok((kind, PixelEvent::Queued))
}

/// Refuses a batch that would take the brand over one of its quotas.
pub(super) fn check_quotas(
    tx: &mut dyn Tx,
    brand: &BrandId,
    quotas: Quotas,
    adding: &Usage,
    now: u64,
    metrics: &crate::metrics::Metrics,
) -> Result<(), StoreError> {
    let held = tx.usage(brand, now / DAY_MS)?;
    let over = |quota: Quota, limit: u64, held: u64, adding: u64| {
        if limit > 0 && adding > 0 && held + adding > limit {
            metrics.quota_refused(brand, quota.as_str());
            Err(StoreError::QuotaExceeded {
                brand: brand.clone(),
                quota,
                limit,
                // A day's quota frees up at midnight UTC.
                resets_in: (quota == Quota::EventsPerDay)
                    .then(|| std::time::Duration::from_millis(DAY_MS - now % DAY_MS)),
            })
        } else {
            Ok(())
        }
    };
    over(
        Quota::EventsPerDay,
        quotas.events_per_day,
        held.events_today,
        adding.events_today,
    )?;
    over(Quota::Players, quotas.players, held.players, adding.players)?;
    over(Quota::Outbox, quotas.outbox, held.outbox, adding.outbox)
}
