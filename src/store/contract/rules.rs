//! The rules' checks: the hub's behaviour (queues, leases, events, outbox, catalog), asked of the
//! [`Ledger`] over an engine. Behaviour must not depend on the engine, so every engine runs all of them.
//!
//! Each check is a function over a [`Harness`] that can open (and re-open) one engine instance under a
//! ledger; [`crate::rules_contract!`] instantiates them all as tests for an engine.

use std::time::Duration;

use crate::api_key::ApiKeyRecord;
use crate::brand::{BrandSettings, SecretKind};
use crate::clock::{Clock, ManualClock};
use crate::definition::DefinitionInput;
use crate::definition::parse_definition;
use crate::delivery::Attempt;
use crate::event::parse_events;
use crate::ids::{DefinitionId, EventId, PlayerId, SessionId};
use crate::ledger::Ledger;
use crate::pixel::{NewPixel, PixelBody};
use crate::store::*;

/// Opens an engine instance; opening again after `close` must see the same durable data. Every
/// instance runs on the harness's clock, which checks move forward instead of sleeping.
#[allow(async_fn_in_trait)] // the checks await the harness in place; no future crosses threads
pub trait Harness {
    /// The ledger over an engine on the harness's backing store.
    async fn open(&self) -> Ledger;
    /// The clock every engine the harness opens runs on.
    fn clock(&self) -> &ManualClock;
}

/// The rules over `engine`, on `clock`, with the settings the checks expect ([`QUEUE_CAP`],
/// [`LEASE_TTL`]): what a harness's `open` returns for an engine that serves every part.
pub fn ledger_over<E>(engine: std::sync::Arc<E>, clock: std::sync::Arc<ManualClock>) -> Ledger
where
    E: catalog::Catalog + queues::Queues + Store,
{
    let options = crate::ledger::Options {
        default_ttl: Duration::from_secs(3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        queue_cap: QueueCap {
            max_per_player: QUEUE_CAP,
            on_full: OnFull::Reject,
        },
        lease_ttl: LEASE_TTL,
        quotas: Quotas::default(),
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    Ledger::new(crate::ledger::Engines::one(engine), options, metrics, clock)
}

/// The per-player cap the harness must open engines with (policy [`OnFull::Reject`]).
pub const QUEUE_CAP: u64 = 50;

/// The lease lifetime the harness's ledgers must have.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

fn key(player: &str) -> PlayerKey {
    PlayerKey::new(
        BrandId::parse("brand-1").unwrap(),
        PlayerId::parse(player).unwrap(),
    )
}

fn image(n: u32) -> NewPixel {
    NewPixel {
        id: None,
        trigger: None,
        ttl_seconds: None,
        tcf_vendor_id: None,
        body: PixelBody::Image {
            url: format!("https://px.example/{n}"),
        },
        origin: None,
    }
}

fn with_id(id: &str, n: u32) -> NewPixel {
    NewPixel {
        id: Some(PixelId::parse(id).unwrap()),
        ..image(n)
    }
}

async fn store_with_brand(h: &impl Harness) -> Ledger {
    let store = h.open().await;
    store
        .put_brand(&key("x").brand, BrandSettings::default())
        .await
        .unwrap();
    store
}

fn urls(pixels: &[QueuedPixel]) -> Vec<String> {
    pixels
        .iter()
        .map(|p| match &p.body {
            PixelBody::Image { url } => url.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn ids(pixels: &[QueuedPixel]) -> Vec<PixelId> {
    pixels.iter().map(|p| p.id.clone()).collect()
}

pub async fn unknown_brands_are_refused(h: &impl Harness) {
    let store = h.open().await;
    let err = store.enqueue(&key("p"), vec![image(1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownBrand(b) if b.as_str() == "brand-1"));
}

pub async fn brands_are_created_then_updated(h: &impl Harness) {
    let store = h.open().await;
    let id = key("x").brand;
    let (first, created) = store
        .put_brand(
            &id,
            BrandSettings {
                name: Some("A".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(created);
    let (second, created) = store
        .put_brand(
            &id,
            BrandSettings {
                name: Some("B".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(second.created_at_ms, first.created_at_ms);
    assert_eq!(
        store
            .brand(&id)
            .await
            .unwrap()
            .unwrap()
            .settings
            .name
            .as_deref(),
        Some("B")
    );
}

pub async fn the_queue_keeps_order_and_ids_are_idempotent(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let first = store
        .enqueue(
            &k,
            vec![image(1), with_id("ftd-1", 2), with_id("ftd-1", 99)],
        )
        .await
        .unwrap()
        .pixels;
    assert_eq!(first[1].status, PixelStatus::Queued);
    assert!(!first[1].duplicate);
    assert!(
        first[2].duplicate,
        "the same id twice in one batch is one pixel"
    );
    let again = store
        .enqueue(&k, vec![with_id("ftd-1", 3), image(4)])
        .await
        .unwrap()
        .pixels;
    assert_eq!((again[0].id.as_str(), again[0].duplicate), ("ftd-1", true));

    let pending = store.pending(&k).await.unwrap();
    let pending: Vec<QueuedPixel> = pending.into_iter().map(|p| p.pixel).collect();
    assert_eq!(
        urls(&pending),
        [
            "https://px.example/1",
            "https://px.example/2",
            "https://px.example/4"
        ]
    );
    assert_eq!(store.stats().await.unwrap().brands[&k.brand].queue_depth, 3);
}

/// A lease lasts while its holder renews it; once it runs out (its process died) another session takes
/// the queue over, gets the unacknowledged pixels again in order, and the stale holder gets nothing
/// more, though its acks still count (the pixel fired).
pub async fn a_lease_that_runs_out_is_taken_over(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    store
        .enqueue(&k, (1..=3).map(image).collect())
        .await
        .unwrap();
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let sent = store.lease(&k, a, 2).await.unwrap();
    assert_eq!(sent.len(), 2);
    let almost = LEASE_TTL - Duration::from_secs(1);

    h.clock().advance(almost);
    assert!(
        store.lease(&k, b, 10).await.unwrap().is_empty(),
        "still held"
    );
    assert!(
        store.lease(&k, a, 2).await.unwrap().is_empty(),
        "the holder renews; its window is full"
    );
    h.clock().advance(almost);
    assert!(
        store.lease(&k, b, 10).await.unwrap().is_empty(),
        "renewed: held a lifetime from the renewal"
    );

    h.clock().advance(LEASE_TTL);
    let taken_over = store.lease(&k, b, 10).await.unwrap();
    assert_eq!(
        urls(&taken_over),
        [
            "https://px.example/1",
            "https://px.example/2",
            "https://px.example/3"
        ],
        "the unacknowledged pixels again, in order, then the rest"
    );
    assert!(
        store.lease(&k, a, 2).await.unwrap().is_empty(),
        "the stale holder gets nothing more"
    );
    assert_eq!(
        store.ack(&k, &ids(&sent[..1])).await.unwrap(),
        1,
        "its ack still counts: the pixel fired"
    );
}

pub async fn one_session_holds_a_player_at_a_time(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    store
        .enqueue(&k, (1..=5).map(image).collect())
        .await
        .unwrap();
    let (a, b) = (SessionId::generate(), SessionId::generate());

    let sent = store.lease(&k, a, 2).await.unwrap();
    assert_eq!(
        urls(&sent),
        ["https://px.example/1", "https://px.example/2"]
    );
    assert!(
        store.lease(&k, b, 10).await.unwrap().is_empty(),
        "another session must get nothing, whatever its window"
    );
    assert!(
        store.lease(&k, a, 2).await.unwrap().is_empty(),
        "the window is full"
    );

    assert_eq!(store.ack(&k, &ids(&sent[..1])).await.unwrap(), 1);
    let next = store.lease(&k, a, 2).await.unwrap();
    assert_eq!(urls(&next), ["https://px.example/3"]);

    // A drops without acking 2 and 3: they go, in order, to the next session.
    store.release(&k, a).await.unwrap();
    let taken_over = store.lease(&k, b, 10).await.unwrap();
    assert_eq!(
        urls(&taken_over),
        [
            "https://px.example/2",
            "https://px.example/3",
            "https://px.example/4",
            "https://px.example/5"
        ]
    );
}

pub async fn acks_are_final_and_remembered(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    store.enqueue(&k, vec![with_id("reg-1", 1)]).await.unwrap();
    let s = SessionId::generate();
    let sent = store.lease(&k, s, 10).await.unwrap();
    assert_eq!(
        store
            .ack(&k, &[ids(&sent), ids(&sent)].concat())
            .await
            .unwrap(),
        1,
        "a repeated id counts once"
    );
    assert_eq!(
        store.ack(&k, &ids(&sent)).await.unwrap(),
        0,
        "a second ack is a no-op"
    );
    assert!(store.pending(&k).await.unwrap().is_empty());
    assert_eq!(store.stats().await.unwrap().queue_depth, 0);

    let again = store
        .enqueue(&k, vec![with_id("reg-1", 1)])
        .await
        .unwrap()
        .pixels;
    assert_eq!(
        (again[0].status, again[0].duplicate),
        (PixelStatus::Fired, true)
    );
    assert!(store.lease(&k, s, 10).await.unwrap().is_empty());
}

pub async fn cancel_covers_every_state(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    store
        .enqueue(&k, vec![with_id("a", 1), with_id("b", 2)])
        .await
        .unwrap();
    let a = PixelId::parse("a").unwrap();
    let b = PixelId::parse("b").unwrap();
    let s = SessionId::generate();

    store.lease(&k, s, 1).await.unwrap();
    assert_eq!(store.cancel(&k, &a).await.unwrap(), CancelOutcome::InFlight);
    assert_eq!(
        store.cancel(&k, &b).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        store.cancel(&k, &b).await.unwrap(),
        CancelOutcome::AlreadyFinal(PixelStatus::Cancelled)
    );
    assert_eq!(
        store
            .cancel(&k, &PixelId::parse("nope").unwrap())
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );
    store.ack(&k, std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(
        store.cancel(&k, &a).await.unwrap(),
        CancelOutcome::AlreadyFinal(PixelStatus::Fired)
    );
    assert!(
        store.lease(&k, s, 10).await.unwrap().is_empty(),
        "a cancelled pixel is never delivered"
    );
    assert_eq!(store.stats().await.unwrap().queue_depth, 0);
}

/// Upkeep expires what ran out of time, except what a browser holds (its ack decides) and postbacks
/// (they end by their attempts); it forgets records once their retention ran out.
pub async fn upkeep_expires_nothing_a_browser_holds(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let short = |id: &str, n| NewPixel {
        ttl_seconds: Some(1),
        ..with_id(id, n)
    };
    store
        .enqueue(&k, vec![short("held", 1), short("idle", 2)])
        .await
        .unwrap();
    let session = SessionId::generate();
    let sent = store.lease(&k, session, 1).await.unwrap();
    assert_eq!(ids(&sent), [PixelId::parse("held").unwrap()]);
    h.clock().advance(Duration::from_secs(2));

    let stop = tokio_util::sync::CancellationToken::new();
    store.sweep(h.clock().now_ms(), &stop).await.unwrap();
    let pending = store.pending(&k).await.unwrap();
    assert!(pending.is_empty(), "expired pixels are not listed");
    assert_eq!(
        store.stats().await.unwrap().queue_depth,
        1,
        "the held pixel stays queued: its browser may be firing it"
    );
    assert_eq!(
        store.ack(&k, &ids(&sent)).await.unwrap(),
        1,
        "and its ack counts"
    );
    assert_eq!(store.stats().await.unwrap().queue_depth, 0);
}

/// Pixels a page had no consent to fire wait in the queue, counted per brand, until a session whose page
/// has consent takes them (each fires once) or their TTL runs out; the count survives a reopen.
pub async fn pixels_wait_for_consent_until_a_page_has_it(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    let k = key("p");
    let waiting = |store: &Ledger| {
        let store = store.clone();
        let brand = brand.clone();
        async move { store.stats().await.unwrap().brands[&brand].waiting_consent }
    };
    let statuses = |store: &Ledger| {
        let store = store.clone();
        async move {
            store
                .pending(&key("p"))
                .await
                .unwrap()
                .iter()
                .map(|p| p.status)
                .collect::<Vec<_>>()
        }
    };
    store
        .enqueue(&k, vec![with_id("a", 1), with_id("b", 2), with_id("c", 3)])
        .await
        .unwrap();
    let page = SessionId::generate();
    assert_eq!(store.lease(&k, page, 10).await.unwrap().len(), 3);

    // A vendor without consent: that pixel waits, out of the session's window.
    let b = PixelId::parse("b").unwrap();
    assert_eq!(
        store
            .withhold(&k, page, Some(vec![b.clone()]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(waiting(&store).await, 1);
    let more = store
        .lease_for(&k, page, 10, std::slice::from_ref(&b))
        .await
        .unwrap();
    assert!(
        more.pixels.is_empty(),
        "the page is not sent what it held back"
    );
    use PixelStatus::{Delivered, WaitingConsent};
    assert_eq!(
        statuses(&store).await,
        [Delivered, WaitingConsent, Delivered]
    );

    // Consent refused: everything waits and the lease is given up.
    assert_eq!(store.withhold(&k, page, None).await.unwrap(), 2);
    assert_eq!(waiting(&store).await, 3);
    assert_eq!(
        statuses(&store).await,
        [WaitingConsent, WaitingConsent, WaitingConsent]
    );
    assert_eq!(store.withhold(&k, page, None).await.unwrap(), 0, "once");
    let report = store
        .deliveries(
            &brand,
            &DeliveryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(report.rows.iter().all(|r| r.status == WaitingConsent));

    // Kept across a reopen.
    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    assert_eq!(waiting(&store).await, 3);

    // A page with consent takes them, each once.
    let consented = SessionId::generate();
    let sent = store.lease(&k, consented, 10).await.unwrap();
    assert_eq!(urls(&sent).len(), 3);
    assert_eq!(waiting(&store).await, 0);
    assert_eq!(store.ack(&k, &ids(&sent)).await.unwrap(), 3);
    assert_eq!(store.stats().await.unwrap().queue_depth, 0);

    // Refused until the TTL: the pixel expires like any other, and stops being counted.
    let short = NewPixel {
        ttl_seconds: Some(1),
        ..with_id("d", 4)
    };
    store.enqueue(&k, vec![short]).await.unwrap();
    assert_eq!(
        store
            .withhold(&k, SessionId::generate(), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(waiting(&store).await, 1);
    store.enqueue(&k, vec![with_id("e", 5)]).await.unwrap();
    h.clock().advance(Duration::from_secs(2));
    let stop = tokio_util::sync::CancellationToken::new();
    store.sweep(h.clock().now_ms(), &stop).await.unwrap();
    assert_eq!(waiting(&store).await, 0);
    assert_eq!(statuses(&store).await, [PixelStatus::Queued]);
    assert_eq!(store.stats().await.unwrap().queue_depth, 1);
}

pub async fn expired_pixels_are_dropped_and_counted(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let short = NewPixel {
        ttl_seconds: Some(1),
        ..with_id("short", 1)
    };
    store.enqueue(&k, vec![short, image(2)]).await.unwrap();
    h.clock().advance(Duration::from_millis(1000));

    assert_eq!(
        urls(
            &store
                .pending(&k)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.pixel)
                .collect::<Vec<_>>()
        ),
        ["https://px.example/2"]
    );
    let sent = store.lease(&k, SessionId::generate(), 10).await.unwrap();
    assert_eq!(urls(&sent), ["https://px.example/2"]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.queue_depth, stats.expired_total), (1, 1));
    let again = store
        .enqueue(&k, vec![with_id("short", 1)])
        .await
        .unwrap()
        .pixels;
    assert_eq!(again[0].status, PixelStatus::Expired);
}

pub async fn sessions_hear_of_new_and_released_work(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let mut heard = store.subscribe();
    store.enqueue(&k, vec![image(1)]).await.unwrap();
    assert_eq!(heard.recv().await.unwrap(), Announcement::Player(k.clone()));

    let s = SessionId::generate();
    store.lease(&k, s, 10).await.unwrap();
    store.release(&k, s).await.unwrap();
    assert_eq!(
        heard.recv().await.unwrap(),
        Announcement::Player(k),
        "released pixels are announced for another session"
    );
}

pub async fn everything_survives_a_reopen(h: &impl Harness) {
    let k = key("p");
    {
        let store = store_with_brand(h).await;
        store
            .enqueue(&k, vec![image(1), with_id("two", 2)])
            .await
            .unwrap();
        let s = SessionId::generate();
        let sent = store.lease(&k, s, 1).await.unwrap();
        store.ack(&k, &ids(&sent)).await.unwrap();
        store.lease(&k, s, 1).await.unwrap(); // in flight when the process dies
        store.close().await.unwrap();
    }
    let store = h.open().await;
    let pending: Vec<QueuedPixel> = store
        .pending(&k)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.pixel)
        .collect();
    assert_eq!(
        urls(&pending),
        ["https://px.example/2"],
        "acks outlive the process"
    );
    store.enqueue(&k, vec![image(3)]).await.unwrap();
    // A lease ends with its process on an embedded engine, and a lifetime later on a shared one.
    h.clock().advance(LEASE_TTL);
    let sent = store.lease(&k, SessionId::generate(), 10).await.unwrap();
    assert_eq!(
        urls(&sent),
        ["https://px.example/2", "https://px.example/3"],
        "order continues after a restart"
    );
    assert_eq!(
        store.stats().await.unwrap().queue_depth,
        2,
        "the depth is rebuilt exactly"
    );
    let again = store
        .enqueue(&k, vec![with_id("two", 2)])
        .await
        .unwrap()
        .pixels;
    assert!(again[0].duplicate);
}

pub async fn concurrent_enqueues_share_flushes_and_lose_nothing(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(&key(&format!("p{}", i % 20)), vec![image(i)])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().queue_depth, 200);
}

pub async fn a_closed_store_refuses_changes(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    store.close().await.unwrap();
    assert!(matches!(
        store.enqueue(&k, vec![image(1)]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.lease(&k, SessionId::generate(), 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.ack(&k, &[]).await, Err(StoreError::Closed)));
    assert!(matches!(
        store.cancel(&k, &PixelId::parse("x").unwrap()).await,
        Err(StoreError::Closed)
    ));
}

/// Instantiates every contract check as a test for one engine; `$harness` builds a fresh [`Harness`].
/// A definition for the checks: fires for every player unless the body says otherwise. Who a definition
/// fires for is [`crate::event::plan`]'s rule, tested there; these checks are about what engines keep.
fn definition_input(mut body: serde_json::Value) -> DefinitionInput {
    if let Some(obj) = body.as_object_mut() {
        obj.entry("audience").or_insert("all_players".into());
    }
    parse_definition(body, true).expect("a valid definition")
}

fn events(body: serde_json::Value) -> Vec<crate::event::Event> {
    parse_events(body, crate::event::MAX_EVENTS).expect("valid events")
}

pub async fn definitions_are_created_replaced_and_deleted(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    let body = serde_json::json!({"id": "ftd-img", "name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://px.example/"});
    let created = store
        .create_definition(&brand, definition_input(body.clone()))
        .await
        .unwrap();
    assert_eq!(created.id.as_str(), "ftd-img");
    assert!(matches!(
        store
            .create_definition(&brand, definition_input(body))
            .await,
        Err(StoreError::DefinitionExists(_))
    ));
    let generated = store
        .create_definition(
            &brand,
            definition_input(serde_json::json!({"name": "S2S", "trigger": "registration", "kind": "s2s", "url": "https://pb.example/"})),
        )
        .await
        .unwrap();

    let replaced = store
        .replace_definition(
            &brand,
            &created.id,
            definition_input(serde_json::json!({"name": "FTD v2", "trigger": "ftd", "enabled": false, "kind": "image", "url": "https://px.example/2"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            replaced.name.as_str(),
            replaced.enabled,
            replaced.created_at_ms
        ),
        ("FTD v2", false, created.created_at_ms)
    );
    let missing = DefinitionId::parse("nope").unwrap();
    assert!(matches!(
        store
            .replace_definition(
                &brand,
                &missing,
                definition_input(
                    serde_json::json!({"name": "n", "trigger": "ftd", "kind": "js", "code": "1"})
                )
            )
            .await,
        Err(StoreError::UnknownDefinition(_))
    ));
    let listed: Vec<String> = store
        .definitions(&brand)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    let mut expected = vec![created.id.to_string(), generated.id.to_string()];
    expected.sort();
    assert_eq!(listed, expected);

    assert!(store.delete_definition(&brand, &created.id).await.unwrap());
    assert!(!store.delete_definition(&brand, &created.id).await.unwrap());
    assert_eq!(store.definition(&brand, &created.id).await.unwrap(), None);
    let other = BrandId::parse("other").unwrap();
    assert!(matches!(
        store.definitions(&other).await,
        Err(StoreError::UnknownBrand(_))
    ));
}

pub async fn the_brand_pixel_policy_holds_for_every_write(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let (k, brand) = (key("p"), key("p").brand);
    let js = NewPixel {
        body: PixelBody::Js { code: "1".into() },
        ..image(2)
    };
    let refused = store.enqueue(&k, vec![image(1), js]).await.unwrap_err();
    let StoreError::NotAllowed(why) = refused else {
        panic!("a js pixel is not a default brand's: {refused:?}")
    };
    assert_eq!(
        (why.code, why.path.as_str()),
        ("kind_not_allowed", "pixels[1].kind")
    );
    assert_eq!(
        store.pending(&k).await.unwrap(),
        vec![],
        "nothing of the batch was queued"
    );

    let js = serde_json::json!({"name": "js", "trigger": "ftd", "kind": "js", "code": "1"});
    let refused = store
        .create_definition(&brand, definition_input(js))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NotAllowed(why) if why.path == "definition.kind"),
        "{refused:?}"
    );
    assert_eq!(store.definitions(&brand).await.unwrap(), vec![]);

    store
        .put_brand(
            &brand,
            BrandSettings {
                https_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let http = NewPixel {
        body: PixelBody::Image {
            url: "http://px.example/".into(),
        },
        ..image(3)
    };
    let refused = store.enqueue(&k, vec![http]).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::NotAllowed(why) if (why.code, why.path.as_str()) == ("https_required", "pixel.url")),
        "{refused:?}"
    );
    store.enqueue(&k, vec![image(4)]).await.unwrap();
}

pub async fn a_click_id_finds_the_player_who_registered_with_it(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    let reg = serde_json::json!([
        {"event_id": "r1", "type": "registration", "player_id": "p1", "params": {"clickid": "c-1"}},
        {"event_id": "r2", "type": "Lead", "player_id": "p2", "params": {"affclickid": "c-2", "sub1": "s"}},
        {"event_id": "r3", "type": "registration", "player_id": "p3", "params": {"sub1": "no click"}},
    ]);
    store.ingest(&brand, events(reg)).await.unwrap();
    let found = |c: &'static str| {
        let store = &store;
        let brand = &brand;
        async move {
            store
                .player_by_click_id(brand, c)
                .await
                .unwrap()
                .map(|p| p.to_string())
        }
    };
    assert_eq!(found("c-1").await.as_deref(), Some("p1"));
    assert_eq!(found("c-2").await.as_deref(), Some("p2"));
    assert_eq!(found("no click").await, None, "only click-id params index");
    assert_eq!(found("c-3").await, None);
    // A later registration with the same click id takes it over; a new click id of the same player is
    // found too.
    let again = serde_json::json!([
        {"event_id": "r4", "type": "registration", "player_id": "p4", "params": {"clickid": "c-1"}},
        {"event_id": "r5", "type": "registration", "player_id": "p2", "params": {"affclickid": "c-5"}},
    ]);
    store.ingest(&brand, events(again)).await.unwrap();
    assert_eq!(found("c-1").await.as_deref(), Some("p4"));
    assert_eq!(found("c-5").await.as_deref(), Some("p2"));
    let other = BrandId::parse("other").unwrap();
    assert!(matches!(
        store.player_by_click_id(&other, "c-1").await,
        Err(StoreError::UnknownBrand(_))
    ));
    // Kept across a reopen.
    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    let player = store.player_by_click_id(&brand, "c-5").await.unwrap();
    assert_eq!(player.map(|p| p.to_string()).as_deref(), Some("p2"));
}

/// A browser's capture becomes the attribution of a player the brand reported none for; a registration
/// event then keeps it where it sends nothing of its own, and renders the click into its pixels; the
/// brand's reported attribution is never replaced by a later capture.
pub async fn a_browsers_capture_never_replaces_the_brands_attribution(h: &impl Harness) {
    use crate::attribution::{CapturedClick, Source, Touch};
    use crate::ledger::Captured;
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    define(&store, serde_json::json!({"id": "reg", "name": "Reg", "trigger": "registration", "kind": "image", "url": "https://px.example/r?c={clickid}&s={sub1}&a={afp}"})).await;
    let now = h.clock().now_ms();
    let click = |value: &str, at: u64| CapturedClick {
        params: [("clickid", value), ("sub1", "s-1")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        captured_at_ms: at,
    };
    let p = key("p");
    assert_eq!(
        store
            .capture(&p, click("c-browser", now - 1000), Touch::Last)
            .await
            .unwrap(),
        Captured::Adopted
    );
    let context = store.player_context(&p).await.unwrap();
    assert_eq!(context.attribution_source(), Some(Source::Browser));
    assert_eq!(context.captured_at_ms, Some(now - 1000));
    assert_eq!(
        store.player_by_click_id(&brand, "c-browser").await.unwrap(),
        None,
        "a browser's click id finds no player until the brand reports the registration"
    );

    let reg = serde_json::json!([{"event_id": "r1", "type": "registration", "player_id": "p", "params": {"afp": "aff-7", "sub1": "s-brand"}}]);
    store.ingest(&brand, events(reg)).await.unwrap();
    let pixels = store.lease(&p, SessionId::generate(), 10).await.unwrap();
    assert_eq!(
        urls(&pixels),
        ["https://px.example/r?c=c-browser&s=s-brand&a=aff-7"],
        "the browser's click id fills what the brand's event did not send; the brand's sub1 wins"
    );
    let all = DeliveryQuery {
        limit: 10,
        ..Default::default()
    };
    let page = store.deliveries(&brand, &all).await.unwrap();
    assert_eq!(page.rows[0].click_source, Some(Source::Browser));
    let context = store.player_context(&p).await.unwrap();
    assert_eq!(context.attribution_source(), Some(Source::Event));
    assert_eq!(context.from_browser, ["clickid"]);
    assert_eq!(
        store.player_by_click_id(&brand, "c-browser").await.unwrap(),
        None,
        "a click id from a URL anyone can write never finds a player, even once the brand registered one"
    );
    assert_eq!(
        store
            .capture(&p, click("c-later", now), Touch::Last)
            .await
            .unwrap(),
        Captured::Kept,
        "the brand reported an attribution: a later capture changes nothing"
    );
    assert_eq!(store.player_context(&p).await.unwrap(), context);

    // A player the brand reported first is never touched by a capture.
    let reg = serde_json::json!([{"event_id": "r2", "type": "registration", "player_id": "q", "params": {"clickid": "c-brand"}}]);
    store.ingest(&brand, events(reg)).await.unwrap();
    let q = key("q");
    let before = store.player_context(&q).await.unwrap();
    assert_eq!(
        store
            .capture(&q, click("c-browser", now), Touch::Last)
            .await
            .unwrap(),
        Captured::Kept
    );
    assert_eq!(store.player_context(&q).await.unwrap(), before);
}

/// The parameter names seen in events and captures add up over every process, and survive a reopen.
pub async fn parameter_names_seen_add_up_over_processes(h: &impl Harness) {
    use crate::attribution::{CapturedClick, Touch};
    let one = store_with_brand(h).await;
    let two = h.open().await;
    let brand = key("x").brand;
    let reg = serde_json::json!([
        {"event_id": "r1", "type": "registration", "player_id": "p1", "params": {"afp": "a", "sub1": "s"}},
        {"event_id": "r2", "type": "registration", "player_id": "p2", "params": {"afp": "b"}},
    ]);
    one.ingest(&brand, events(reg)).await.unwrap();
    let click = CapturedClick {
        params: [("afp".to_owned(), "c".to_owned())].into_iter().collect(),
        captured_at_ms: h.clock().now_ms(),
    };
    two.capture(&key("p3"), click, Touch::Last).await.unwrap();
    two.flush_params(None).await.unwrap();
    let seen = one.params_seen(&brand).await.unwrap();
    let afp = seen.params["afp"];
    assert_eq!((afp.events, afp.browsers), (2, 1));
    assert_eq!(seen.params["sub1"].events, 1);
    assert_eq!(afp.last_seen_ms, h.clock().now_ms());
    assert_eq!(two.params_seen(&brand).await.unwrap(), seen);
}

pub async fn events_queue_pixels_once_even_after_a_reopen(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    for body in [
        serde_json::json!({"name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://px.example/?c={{afp}}&lead={{registration_id}}"}),
        serde_json::json!({"name": "PB", "trigger": "deposit", "kind": "s2s", "url": "https://pb.example/?c={{afp}}&a={{amount}}"}),
    ] {
        store
            .create_definition(&brand, definition_input(body))
            .await
            .unwrap();
    }
    let reg = serde_json::json!({"event_id": "reg-1", "type": "registration", "player_id": "p", "params": {"afp": "xyz"}});
    let dep = serde_json::json!({"event_id": "dep-1", "type": "deposit", "player_id": "p", "params": {"amount": 50}});

    let first = store
        .ingest(&brand, events(serde_json::json!([reg, dep, dep])))
        .await
        .unwrap();
    assert_eq!(first[1].raised, ["ftd"]);
    assert_eq!(first[1].pixels.len(), 2, "a postback and the FTD image");
    assert!(
        first[2].duplicate,
        "the same id twice in a batch counts once"
    );
    assert_eq!(first[2].pixels, first[1].pixels);
    let queued = store.pending(&key("p")).await.unwrap();
    assert_eq!(queued.len(), 1);
    match &queued[0].pixel.body {
        PixelBody::Image { url } => assert_eq!(url, "https://px.example/?c=xyz&lead=p"),
        other => panic!("{other:?}"),
    }
    assert_eq!(queued[0].pixel.trigger.as_deref(), Some("ftd"));

    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    let again = store
        .ingest(&brand, events(serde_json::json!([dep])))
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].pixels, first[1].pixels);
    assert_eq!(store.pending(&key("p")).await.unwrap().len(), 1);
    let context = store.player_context(&key("p")).await.unwrap();
    assert_eq!(context.params["afp"], serde_json::json!("xyz"));
    assert_eq!(
        context.ftd_event_id.as_ref().map(|e| e.as_str()),
        Some("dep-1")
    );

    // The record follows the pixel to its final state.
    store
        .ack(&key("p"), &[queued[0].pixel.id.clone()])
        .await
        .unwrap();
    let record = store
        .event(&brand, &EventId::parse("dep-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    let statuses: Vec<&str> = record.pixels.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(statuses, ["queued", "fired"]);

    let later = store
        .ingest(&brand, events(serde_json::json!({"event_id": "dep-2", "type": "deposit", "player_id": "p", "params": {"amount": 20}})))
        .await
        .unwrap();
    assert!(later[0].raised.is_empty(), "FTD once per player");
    assert_eq!(later[0].pixels.len(), 1);
    assert!(matches!(
        store
            .ingest(
                &BrandId::parse("other").unwrap(),
                events(serde_json::json!({"event_id": "e", "type": "ftd", "player_id": "p"}))
            )
            .await,
        Err(StoreError::UnknownBrand(_))
    ));
}

pub async fn concurrent_event_batches_with_one_id_produce_once(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    store
        .create_definition(
            &brand,
            definition_input(serde_json::json!({"name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://a.example/?p={{player_id}}"})),
        )
        .await
        .unwrap();
    // The same event id for two different players: only one may win.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            let brand = brand.clone();
            tokio::spawn(async move {
                let body = serde_json::json!({"event_id": "once", "type": "ftd", "player_id": format!("p{i}")});
                store.ingest(&brand, events(body)).await.unwrap()
            })
        })
        .collect();
    let mut produced = 0;
    for task in tasks {
        let outcome = task.await.unwrap();
        if !outcome[0].duplicate {
            produced += 1;
        }
    }
    assert_eq!(produced, 1);
    let depth = store.stats().await.unwrap().queue_depth;
    assert_eq!(depth, 1);
}

async fn define(store: &Ledger, body: serde_json::Value) {
    store
        .create_definition(&key("x").brand, definition_input(body))
        .await
        .unwrap();
}

fn statuses(page: &DeliveryPage) -> Vec<(&str, &str, PixelStatus)> {
    page.rows
        .iter()
        .map(|d| (d.player_id.as_str(), d.kind.as_str(), d.status))
        .collect()
}

/// Pages of a few rows each walk a report whose pixels were queued many at a time: every row comes
/// once, newest first, wherever a page ends (inside one call's pixels too).
pub async fn a_report_read_in_small_pages_gives_every_row_once(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    store
        .enqueue(&key("q"), (0..5).map(image).collect())
        .await
        .unwrap();
    store
        .enqueue(&key("r"), (5..8).map(image).collect())
        .await
        .unwrap();
    h.clock().advance(Duration::from_millis(1));
    store
        .enqueue(&key("q"), (8..10).map(image).collect())
        .await
        .unwrap();
    let all = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    let whole = store.deliveries(&brand, &all).await.unwrap().rows;
    assert_eq!(whole.len(), 10);
    let order = |d: &Delivery| (d.queued_at_ms, d.player_id.clone(), d.id.clone());
    assert!(
        whole.windows(2).all(|w| order(&w[0]) > order(&w[1])),
        "newest first, then by player and id, each once"
    );
    for limit in [1, 2, 3, 4] {
        let mut paged = Vec::new();
        let mut query = DeliveryQuery {
            limit,
            ..Default::default()
        };
        for _ in 0..=10 {
            let page = store.deliveries(&brand, &query).await.unwrap();
            assert!(page.rows.len() <= limit);
            paged.extend(page.rows);
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        let ids = |rows: &[Delivery]| rows.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&paged), ids(&whole), "pages of {limit}");
    }
}

pub async fn the_report_follows_every_pixel_and_postback(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    define(&store, serde_json::json!({"id": "img", "name": "FTD image", "trigger": "ftd", "kind": "image", "url": "https://px.example/?c={{afp}}&s={{sub}}"})).await;
    define(&store, serde_json::json!({"id": "pb", "name": "FTD postback", "trigger": "ftd", "kind": "s2s", "url": "https://pb.example/?c={{afp}}"})).await;
    store
        .ingest(&brand, events(serde_json::json!([
            {"event_id": "r1", "type": "registration", "player_id": "p", "params": {"afp": "click-9"}},
            {"event_id": "d1", "type": "deposit", "player_id": "p", "params": {"amount": 10}},
        ])))
        .await
        .unwrap();
    h.clock().advance(Duration::from_millis(2)); // a later queued_at for the next rows
    store
        .enqueue(&key("q"), vec![image(1), image(2)])
        .await
        .unwrap();
    let session = SessionId::generate();
    let sent = store.lease(&key("q"), session, 1).await.unwrap();
    store.ack(&key("p"), &[]).await.unwrap();

    let all = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    let page = store.deliveries(&brand, &all).await.unwrap();
    assert_eq!(page.next, None);
    assert_eq!(page.rows.len(), 4);
    let mut seen = statuses(&page);
    seen.sort_by_key(|(p, k, s)| (p.to_string(), k.to_string(), s.as_str()));
    assert_eq!(
        seen,
        [
            ("p", "image", PixelStatus::Queued),
            ("p", "s2s", PixelStatus::Queued),
            ("q", "image", PixelStatus::Delivered),
            ("q", "image", PixelStatus::Queued),
        ]
    );
    assert!(
        page.rows
            .windows(2)
            .all(|w| w[0].queued_at_ms >= w[1].queued_at_ms),
        "newest first"
    );
    let image_row = page
        .rows
        .iter()
        .find(|d| d.kind == "image" && d.player_id.as_str() == "p")
        .unwrap();
    assert_eq!(
        image_row.final_url.as_deref(),
        Some("https://px.example/?c=click-9&s=")
    );
    assert_eq!(
        image_row.template.as_deref(),
        Some("https://px.example/?c={{afp}}&s={{sub}}")
    );
    assert_eq!(image_row.definition_name.as_deref(), Some("FTD image"));
    assert_eq!(image_row.event_id.as_ref().map(|e| e.as_str()), Some("d1"));
    assert_eq!(image_row.trigger.as_deref(), Some("ftd"));
    assert_eq!(image_row.click_id.as_deref(), Some("click-9"));
    assert_eq!(image_row.missing, ["sub"]);
    let delivered = page
        .rows
        .iter()
        .find(|d| d.status == PixelStatus::Delivered)
        .unwrap();
    assert_eq!(delivered.id, sent[0].id);
    assert_eq!(delivered.attempts, 1);
    assert!(delivered.sent_at_ms.is_some());

    store.ack(&key("q"), &[sent[0].id.clone()]).await.unwrap();
    let fired = DeliveryQuery {
        status: Some(PixelStatus::Fired),
        ..all.clone()
    };
    let page = store.deliveries(&brand, &fired).await.unwrap();
    assert_eq!(statuses(&page), [("q", "image", PixelStatus::Fired)]);
    assert!(page.rows[0].fired_at_ms.is_some());

    let of_p = DeliveryQuery {
        player: Some(PlayerId::parse("p").unwrap()),
        ..all.clone()
    };
    assert_eq!(store.deliveries(&brand, &of_p).await.unwrap().rows.len(), 2);
    let by_trigger = DeliveryQuery {
        trigger: Some("ftd".into()),
        ..all.clone()
    };
    assert_eq!(
        store
            .deliveries(&brand, &by_trigger)
            .await
            .unwrap()
            .rows
            .len(),
        2
    );
    let window = DeliveryQuery {
        from_ms: Some(image_row.queued_at_ms),
        to_ms: Some(image_row.queued_at_ms + 1),
        ..all.clone()
    };
    assert_eq!(
        store.deliveries(&brand, &window).await.unwrap().rows.len(),
        2
    );

    // Pages of one row walk the same rows in the same order, for the brand and for one player.
    for query in [all.clone(), of_p.clone()] {
        let whole = store.deliveries(&brand, &query).await.unwrap().rows;
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .deliveries(
                    &brand,
                    &DeliveryQuery {
                        limit: 1,
                        after: after.clone(),
                        ..query.clone()
                    },
                )
                .await
                .unwrap();
            walked.extend(page.rows);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(walked, whole);
    }
}

pub async fn postbacks_are_claimed_retried_and_recorded(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    define(&store, serde_json::json!({"id": "pb", "name": "PB", "trigger": "sale", "kind": "s2s", "url": "https://pb.example/?e={{event_id}}"})).await;
    let sale =
        |id: &str| events(serde_json::json!({"event_id": id, "type": "sale", "player_id": "p"}));
    let lane = Lane::of(&brand, "https://pb.example/");
    assert_eq!(lane.host, "pb.example:443");
    store.ingest(&brand, sale("s1")).await.unwrap();
    let now = h.clock().now_ms();
    let lanes = store.postback_lanes().await.unwrap();
    assert_eq!(
        (lanes.len(), &lanes[0].lane),
        (1, &lane),
        "one lane: the brand's postbacks to pb.example"
    );
    assert!(lanes[0].next_ms <= now);
    let due = store.due_postbacks(&lane, now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let first = due[0].clone();
    assert_eq!(first.url, "https://pb.example/?e=s1");
    assert_eq!(
        (
            first.attempts,
            first.definition_id.as_ref().map(|d| d.as_str())
        ),
        (0, Some("pb"))
    );

    let until = now + 60_000;
    assert!(store.claim_postback(&first, until).await.unwrap());
    assert_eq!(
        store.postback_lanes().await.unwrap()[0].next_ms,
        until,
        "a claimed postback waits at the end of its claim"
    );
    assert!(
        !store.claim_postback(&first, until).await.unwrap(),
        "claimed once"
    );
    assert!(
        store
            .due_postbacks(&lane, now, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due while claimed"
    );
    assert_eq!(
        store.due_postbacks(&lane, until, 10).await.unwrap().len(),
        1,
        "due again if the sender dies"
    );

    let failed_attempt = Attempt {
        at_ms: now,
        duration_ms: 3,
        http_status: Some(503),
        error: None,
        response: Some("busy".into()),
    };
    let health = store
        .record_attempt(
            &first,
            until,
            failed_attempt.clone(),
            Verdict::Retry { at_ms: now + 1000 },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (health.consecutive_failures, health.last_error.as_deref()),
        (1, Some("HTTP 503"))
    );
    assert!(
        store
            .due_postbacks(&lane, now + 999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = store.due_postbacks(&lane, now + 1000, 10).await.unwrap();
    assert_eq!((retry.len(), retry[0].attempts), (1, 1));
    let record = store
        .event(&brand, &EventId::parse("s1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.pixels[0].status, PixelStatus::PendingRetry);

    assert!(store.claim_postback(&retry[0], until).await.unwrap());
    let ok = Attempt {
        http_status: Some(204),
        response: None,
        ..failed_attempt.clone()
    };
    let health = store
        .record_attempt(&retry[0], until, ok, Verdict::Fired)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.consecutive_failures, 0);
    assert!(
        store
            .due_postbacks(&lane, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "never sent again"
    );
    assert!(
        store.postback_lanes().await.unwrap().is_empty(),
        "an empty lane is gone"
    );
    let row = &store
        .deliveries(
            &brand,
            &DeliveryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .rows[0];
    assert_eq!(
        (row.status, row.attempts, row.http_status),
        (PixelStatus::Fired, 2, Some(204))
    );
    assert_eq!(row.attempt_log.len(), 2);
    assert_eq!(row.attempt_log[0].response.as_deref(), Some("busy"));

    // A refusal ends it; a cancel takes it out of the outbox, but not while an attempt runs.
    store.ingest(&brand, sale("s2")).await.unwrap();
    store.ingest(&brand, sale("s3")).await.unwrap();
    let due = store
        .due_postbacks(&lane, h.clock().now_ms(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);
    let (s2, s3) = if due[0].url.ends_with("s2") {
        (&due[0], &due[1])
    } else {
        (&due[1], &due[0])
    };
    assert!(store.claim_postback(s2, until).await.unwrap());
    assert_eq!(
        store.cancel(&s2.key, &s2.id).await.unwrap(),
        CancelOutcome::InFlight
    );
    let refused = Attempt {
        http_status: Some(404),
        ..failed_attempt
    };
    store
        .record_attempt(s2, until, refused, Verdict::Failed)
        .await
        .unwrap();
    assert_eq!(
        store.cancel(&s2.key, &s2.id).await.unwrap(),
        CancelOutcome::AlreadyFinal(PixelStatus::Failed)
    );
    assert_eq!(
        store.cancel(&s3.key, &s3.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert!(
        store
            .due_postbacks(&lane, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store.claim_postback(s3, until).await.unwrap(),
        "a cancelled postback cannot be claimed"
    );

    let health = store.definition_health(&brand).await.unwrap();
    assert_eq!(
        health[&DefinitionId::parse("pb").unwrap()].consecutive_failures,
        1
    );

    // A claim survives a reopen as a due time: the postback is sent again, never lost.
    store.ingest(&brand, sale("s4")).await.unwrap();
    let s4 = store
        .due_postbacks(&lane, h.clock().now_ms(), 10)
        .await
        .unwrap()
        .remove(0);
    assert!(store.claim_postback(&s4, until).await.unwrap());
    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    assert!(
        store
            .due_postbacks(&lane, until - 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.due_postbacks(&lane, until, 10).await.unwrap()[0].id,
        s4.id
    );

    assert!(
        store
            .disable_definition(
                &brand,
                &DefinitionId::parse("pb").unwrap(),
                "failing".into()
            )
            .await
            .unwrap()
    );
    let pb = store
        .definition(&brand, &DefinitionId::parse("pb").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (pb.enabled, pb.disabled_reason.as_deref()),
        (false, Some("failing"))
    );
}

pub async fn the_outbox_keeps_a_lane_per_brand_and_host(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let one = key("x").brand;
    let two = BrandId::parse("other").unwrap();
    store
        .put_brand(&two, BrandSettings::default())
        .await
        .unwrap();
    for brand in [&one, &two] {
        for (id, url) in [
            ("dead", "https://dead.example/pb?e={{event_id}}"),
            ("live", "https://live.example:8443/pb?e={{event_id}}"),
        ] {
            let input = definition_input(
                serde_json::json!({"id": id, "name": id, "trigger": "sale", "kind": "s2s", "url": url}),
            );
            store.create_definition(brand, input).await.unwrap();
        }
    }
    for i in 0..3 {
        let sale = events(
            serde_json::json!({"event_id": format!("s{i}"), "type": "sale", "player_id": "p"}),
        );
        store.ingest(&one, sale).await.unwrap();
    }
    let sale = events(serde_json::json!({"event_id": "t", "type": "sale", "player_id": "q"}));
    store.ingest(&two, sale).await.unwrap();

    let mut lanes: Vec<(String, String)> = store
        .postback_lanes()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lane.brand.to_string(), l.lane.host))
        .collect();
    lanes.sort();
    assert_eq!(
        lanes,
        [
            (one.to_string(), "dead.example:443".into()),
            (one.to_string(), "live.example:8443".into()),
            ("other".into(), "dead.example:443".into()),
            ("other".into(), "live.example:8443".into()),
        ]
    );
    let now = h.clock().now_ms();
    let dead = Lane::of(&one, "https://dead.example/");
    let due = store.due_postbacks(&dead, now, 10).await.unwrap();
    assert_eq!(due.len(), 3, "a lane holds only its own brand's and host's");
    assert!(
        due.iter()
            .all(|p| p.lane == dead && p.url.starts_with("https://dead.example/"))
    );
    assert!(
        due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
        "earliest first"
    );
    let other_dead = Lane::of(&two, "https://dead.example/");
    assert_eq!(
        store
            .due_postbacks(&other_dead, now, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Reopened, the lanes are the same.
    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    assert_eq!(store.postback_lanes().await.unwrap().len(), 4);
    assert_eq!(store.due_postbacks(&dead, now, 2).await.unwrap().len(), 2);
}

pub async fn brand_secrets_rotate_with_a_grace_period(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    let now = h.clock().now_ms();
    let inbound = store.secret(&brand, SecretKind::Inbound).await.unwrap();
    let signing = store.secret(&brand, SecretKind::Signing).await.unwrap();
    assert_ne!(inbound.current, signing.current, "each kind has its own");
    store
        .rotate_secret(&brand, SecretKind::Inbound, 0)
        .await
        .unwrap();
    assert_eq!(
        store.secret(&brand, SecretKind::Signing).await.unwrap(),
        signing,
        "rotating one kind leaves the other alone"
    );
    for kind in [SecretKind::Inbound, SecretKind::Signing] {
        let first = store.secret(&brand, kind).await.unwrap();
        assert!(first.current.len() >= 32);
        assert!(first.accepts(&first.current, now));
        assert!(!first.accepts("guess", now));
        assert_eq!(
            first.active(now).collect::<Vec<_>>(),
            [first.current.as_str()]
        );
        let (again, _) = store
            .put_brand(&brand, BrandSettings::default())
            .await
            .unwrap();
        assert_eq!(again.id, brand);
        assert_eq!(
            store.secret(&brand, kind).await.unwrap(),
            first,
            "an update keeps the secret"
        );

        let second = store.rotate_secret(&brand, kind, 60_000).await.unwrap();
        assert_ne!(second.current, first.current);
        assert!(second.accepts(&second.current, now));
        assert!(
            second.accepts(&first.current, now),
            "the old one during the grace period"
        );
        assert_eq!(
            second.active(now).collect::<Vec<_>>(),
            [second.current.as_str(), first.current.as_str()]
        );
        assert!(
            !second.accepts(&first.current, now + 61_000),
            "and not after it"
        );
        assert_eq!(second.active(now + 61_000).count(), 1);
        let third = store.rotate_secret(&brand, kind, 0).await.unwrap();
        assert!(!third.accepts(&second.current, now));
        assert!(matches!(
            store.secret(&BrandId::parse("nope").unwrap(), kind).await,
            Err(StoreError::UnknownBrand(_))
        ));
    }
}

pub async fn api_keys_are_kept_by_hash_listed_and_revoked(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    let other = BrandId::parse("other").unwrap();
    store
        .put_brand(&other, BrandSettings::default())
        .await
        .unwrap();
    let record = |id: &str, brand: &BrandId, at: u64| ApiKeyRecord {
        id: id.into(),
        brand_id: brand.clone(),
        name: Some(format!("key {id}")),
        created_at_ms: at,
        hash: format!("hash-{id}"),
    };
    store.create_api_key(record("k2", &brand, 2)).await.unwrap();
    store.create_api_key(record("k1", &brand, 1)).await.unwrap();
    store.create_api_key(record("k3", &other, 3)).await.unwrap();
    assert!(matches!(
        store
            .create_api_key(record("k4", &BrandId::parse("nope").unwrap(), 4))
            .await,
        Err(StoreError::UnknownBrand(_))
    ));

    assert_eq!(
        store.api_key("k2").await.unwrap(),
        Some(record("k2", &brand, 2))
    );
    assert_eq!(store.api_key("k4").await.unwrap(), None);
    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.api_keys(&brand).await.unwrap()),
        ["k1", "k2"],
        "oldest first"
    );
    assert_eq!(ids(store.api_keys(&other).await.unwrap()), ["k3"]);

    assert!(
        !store.revoke_api_key(&brand, "k3").await.unwrap(),
        "not this brand's key"
    );
    assert!(store.api_key("k3").await.unwrap().is_some());
    assert!(store.revoke_api_key(&brand, "k1").await.unwrap());
    assert!(
        !store.revoke_api_key(&brand, "k1").await.unwrap(),
        "already gone"
    );
    assert_eq!(store.api_key("k1").await.unwrap(), None);
    assert_eq!(ids(store.api_keys(&brand).await.unwrap()), ["k2"]);
}

pub async fn backlogs_oldest_pixels_and_the_cap_are_exact(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let (a, b, c) = (key("a"), key("b"), key("c"));
    assert_eq!(
        store.stats().await.unwrap().brands[&a.brand],
        BrandQueue::default()
    );
    store.enqueue(&b, vec![image(1)]).await.unwrap();
    let oldest = store.stats().await.unwrap().brands[&a.brand].oldest_queued_at_ms;
    h.clock().advance(Duration::from_millis(5));
    store
        .enqueue(&a, (1..=3).map(image).collect())
        .await
        .unwrap();
    store
        .enqueue(&c, (1..=2).map(image).collect())
        .await
        .unwrap();
    let queue = store.stats().await.unwrap().brands[&a.brand];
    assert_eq!(queue.queue_depth, 6);
    assert!(oldest.is_some());
    assert_eq!(queue.oldest_queued_at_ms, oldest, "b's pixel is the oldest");

    let ranking = |backlogs: Vec<Backlog>| -> Vec<(String, u64)> {
        backlogs
            .into_iter()
            .map(|b| (b.player_id.to_string(), b.pending))
            .collect()
    };
    let top = store.backlogs(Some(&a.brand), 2).await.unwrap();
    assert_eq!(ranking(top), [("a".into(), 3), ("c".into(), 2)]);

    // A fire, a cancel and an expiry all move the ranking; an emptied queue leaves it.
    let s = SessionId::generate();
    let sent = store.lease(&b, s, 10).await.unwrap();
    store.ack(&b, &ids(&sent)).await.unwrap();
    let first = store.pending(&a).await.unwrap()[0].pixel.id.clone();
    store.cancel(&a, &first).await.unwrap();
    let all = store.backlogs(None, 10).await.unwrap();
    assert_eq!(ranking(all), [("a".into(), 2), ("c".into(), 2)]);
    let queue = store.stats().await.unwrap().brands[&a.brand];
    assert_eq!(queue.queue_depth, 4);
    assert!(
        queue.oldest_queued_at_ms > oldest,
        "b's fired pixel no longer counts"
    );

    // Purge keeps what a browser holds.
    let held = store.lease(&c, s, 1).await.unwrap();
    assert_eq!(
        store.purge(&c).await.unwrap(),
        Purged {
            cancelled: 1,
            in_flight: 1
        }
    );
    assert_eq!(
        ids(&store
            .pending(&c)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.pixel)
            .collect::<Vec<_>>()),
        ids(&held)
    );
    let all = store.backlogs(None, 10).await.unwrap();
    assert_eq!(ranking(all), [("a".into(), 2), ("c".into(), 1)]);

    // The cap refuses a whole batch that would go over it, and writes none of it.
    let room = QUEUE_CAP - 2;
    store
        .enqueue(&a, (0..room as u32).map(image).collect())
        .await
        .unwrap();
    let err = store
        .enqueue(&a, vec![image(9), image(10)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::QueueFull { pending, cap, .. } if pending == QUEUE_CAP && cap == QUEUE_CAP),
        "{err:?}"
    );
    assert_eq!(store.pending(&a).await.unwrap().len() as u64, QUEUE_CAP);
    assert_eq!(
        store.backlogs(Some(&a.brand), 1).await.unwrap()[0].pending,
        QUEUE_CAP
    );
    // Another player is not affected.
    store.enqueue(&b, vec![image(1)]).await.unwrap();

    // Everything is rebuilt the same after a reopen.
    store.close().await.unwrap();
    drop(store);
    let store = h.open().await;
    let all = store.backlogs(None, 10).await.unwrap();
    assert_eq!(
        ranking(all),
        [("a".into(), QUEUE_CAP), ("b".into(), 1), ("c".into(), 1)]
    );
    assert_eq!(
        store.stats().await.unwrap().brands[&a.brand].queue_depth,
        QUEUE_CAP + 2
    );
    store.check_writable().await.unwrap();
}

/// Two processes on one database race for a player's lease: exactly one gets the pixels.
pub async fn two_processes_race_for_a_lease_and_one_wins(h: &impl Harness) {
    let one = store_with_brand(h).await;
    let two = h.open().await;
    let k = key("p");
    one.enqueue(&k, (1..=3).map(image).collect()).await.unwrap();
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let (got_a, got_b) = tokio::join!(one.lease(&k, a, 10), two.lease(&k, b, 10));
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    assert!(
        got_a.is_empty() != got_b.is_empty(),
        "one holder: {} and {} pixels",
        got_a.len(),
        got_b.len()
    );
    assert_eq!(got_a.len() + got_b.len(), 3);
}

/// Two senders (two processes) claim the same due postback: exactly one claim holds.
pub async fn two_senders_claim_a_postback_once(h: &impl Harness) {
    let one = store_with_brand(h).await;
    let two = h.open().await;
    let brand = key("x").brand;
    define(&one, serde_json::json!({"id": "pb", "name": "PB", "trigger": "sale", "kind": "s2s", "url": "https://pb.example/?e={{event_id}}"})).await;
    let sale = events(serde_json::json!({"event_id": "s1", "type": "sale", "player_id": "p"}));
    one.ingest(&brand, sale).await.unwrap();
    let lane = Lane::of(&brand, "https://pb.example/");
    let now = h.clock().now_ms();
    let seen_by_one = one.due_postbacks(&lane, now, 10).await.unwrap();
    let seen_by_two = two.due_postbacks(&lane, now, 10).await.unwrap();
    assert_eq!(seen_by_one, seen_by_two, "both see the one due postback");
    let until = now + 60_000;
    let (a, b) = tokio::join!(
        one.claim_postback(&seen_by_one[0], until),
        two.claim_postback(&seen_by_two[0], until)
    );
    assert!(a.unwrap() != b.unwrap(), "exactly one claim holds");
}

/// A lease held on one process runs out (that process died); another process takes the queue over,
/// and the stale holder's renewal is refused.
pub async fn a_lease_held_on_a_dead_process_is_taken_over_on_another(h: &impl Harness) {
    let one = store_with_brand(h).await;
    let two = h.open().await;
    let k = key("p");
    one.enqueue(&k, (1..=2).map(image).collect()).await.unwrap();
    let (a, b) = (SessionId::generate(), SessionId::generate());
    assert_eq!(one.lease(&k, a, 10).await.unwrap().len(), 2);
    assert!(
        two.lease(&k, b, 10).await.unwrap().is_empty(),
        "held on one"
    );
    h.clock().advance(LEASE_TTL + Duration::from_secs(1));
    assert_eq!(
        two.lease(&k, b, 10).await.unwrap().len(),
        2,
        "taken over on two once the lease ran out"
    );
    assert!(
        one.lease(&k, a, 10).await.unwrap().is_empty(),
        "the stale holder's renewal is refused"
    );
}

/// Pixels queued through one process wake the sessions of another.
pub async fn an_enqueue_on_one_process_wakes_another(h: &impl Harness) {
    let one = store_with_brand(h).await;
    let two = h.open().await;
    let k = key("p");
    let mut heard = two.subscribe();
    one.enqueue(&k, vec![image(1)]).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("announced within 5 s")
        .unwrap();
    assert_eq!(woken, Announcement::Player(k));
}

/// Instantiates every check of [`self`] as a test of the engine the harness expression opens;
/// `single_handle` leaves out the checks that need two handles on one backing store (two processes on
/// one database), which an embedded engine cannot open.
#[macro_export]
macro_rules! rules_contract {
    ($harness:expr) => {
        $crate::rules_contract!($harness, single_handle);

        mod contract_shared_tests {
            use super::*;
            use $crate::store::contract::rules as contract;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_processes_race_for_a_lease_and_one_wins() {
                contract::two_processes_race_for_a_lease_and_one_wins(&$harness).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_senders_claim_a_postback_once() {
                contract::two_senders_claim_a_postback_once(&$harness).await
            }

            #[tokio::test]
            async fn a_lease_held_on_a_dead_process_is_taken_over_on_another() {
                contract::a_lease_held_on_a_dead_process_is_taken_over_on_another(&$harness).await
            }

            #[tokio::test]
            async fn an_enqueue_on_one_process_wakes_another() {
                contract::an_enqueue_on_one_process_wakes_another(&$harness).await
            }

            #[tokio::test]
            async fn parameter_names_seen_add_up_over_processes() {
                contract::parameter_names_seen_add_up_over_processes(&$harness).await
            }
        }
    };
    ($harness:expr, single_handle) => {
        mod contract_tests {
            use super::*;
            use $crate::store::contract::rules as contract;

            #[tokio::test]
            async fn a_lease_that_runs_out_is_taken_over() {
                contract::a_lease_that_runs_out_is_taken_over(&$harness).await
            }

            #[tokio::test]
            async fn upkeep_expires_nothing_a_browser_holds() {
                contract::upkeep_expires_nothing_a_browser_holds(&$harness).await
            }

            #[tokio::test]
            async fn the_brand_pixel_policy_holds_for_every_write() {
                contract::the_brand_pixel_policy_holds_for_every_write(&$harness).await
            }

            #[tokio::test]
            async fn pixels_wait_for_consent_until_a_page_has_it() {
                contract::pixels_wait_for_consent_until_a_page_has_it(&$harness).await
            }

            #[tokio::test]
            async fn a_click_id_finds_the_player_who_registered_with_it() {
                contract::a_click_id_finds_the_player_who_registered_with_it(&$harness).await
            }

            #[tokio::test]
            async fn a_browsers_capture_never_replaces_the_brands_attribution() {
                contract::a_browsers_capture_never_replaces_the_brands_attribution(&$harness).await
            }

            #[tokio::test]
            async fn a_report_read_in_small_pages_gives_every_row_once() {
                contract::a_report_read_in_small_pages_gives_every_row_once(&$harness).await
            }

            #[tokio::test]
            async fn the_report_follows_every_pixel_and_postback() {
                contract::the_report_follows_every_pixel_and_postback(&$harness).await
            }
            #[tokio::test]
            async fn postbacks_are_claimed_retried_and_recorded() {
                contract::postbacks_are_claimed_retried_and_recorded(&$harness).await
            }
            #[tokio::test]
            async fn the_outbox_keeps_a_lane_per_brand_and_host() {
                contract::the_outbox_keeps_a_lane_per_brand_and_host(&$harness).await
            }
            #[tokio::test]
            async fn brand_secrets_rotate_with_a_grace_period() {
                contract::brand_secrets_rotate_with_a_grace_period(&$harness).await
            }
            #[tokio::test]
            async fn api_keys_are_kept_by_hash_listed_and_revoked() {
                contract::api_keys_are_kept_by_hash_listed_and_revoked(&$harness).await
            }
            #[tokio::test]
            async fn backlogs_oldest_pixels_and_the_cap_are_exact() {
                contract::backlogs_oldest_pixels_and_the_cap_are_exact(&$harness).await
            }
            #[tokio::test]
            async fn unknown_brands_are_refused() {
                contract::unknown_brands_are_refused(&$harness).await
            }
            #[tokio::test]
            async fn brands_are_created_then_updated() {
                contract::brands_are_created_then_updated(&$harness).await
            }
            #[tokio::test]
            async fn the_queue_keeps_order_and_ids_are_idempotent() {
                contract::the_queue_keeps_order_and_ids_are_idempotent(&$harness).await
            }
            #[tokio::test]
            async fn one_session_holds_a_player_at_a_time() {
                contract::one_session_holds_a_player_at_a_time(&$harness).await
            }
            #[tokio::test]
            async fn acks_are_final_and_remembered() {
                contract::acks_are_final_and_remembered(&$harness).await
            }
            #[tokio::test]
            async fn cancel_covers_every_state() {
                contract::cancel_covers_every_state(&$harness).await
            }
            #[tokio::test]
            async fn expired_pixels_are_dropped_and_counted() {
                contract::expired_pixels_are_dropped_and_counted(&$harness).await
            }
            #[tokio::test]
            async fn sessions_hear_of_new_and_released_work() {
                contract::sessions_hear_of_new_and_released_work(&$harness).await
            }
            #[tokio::test]
            async fn everything_survives_a_reopen() {
                contract::everything_survives_a_reopen(&$harness).await
            }
            #[tokio::test]
            async fn a_closed_store_refuses_changes() {
                contract::a_closed_store_refuses_changes(&$harness).await
            }
            #[tokio::test]
            async fn definitions_are_created_replaced_and_deleted() {
                contract::definitions_are_created_replaced_and_deleted(&$harness).await
            }
            #[tokio::test]
            async fn events_queue_pixels_once_even_after_a_reopen() {
                contract::events_queue_pixels_once_even_after_a_reopen(&$harness).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_event_batches_with_one_id_produce_once() {
                contract::concurrent_event_batches_with_one_id_produce_once(&$harness).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_enqueues_share_flushes_and_lose_nothing() {
                contract::concurrent_enqueues_share_flushes_and_lose_nothing(&$harness).await
            }
        }
    };
}
