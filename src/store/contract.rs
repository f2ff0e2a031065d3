//! The [`Store`] contract, as executable checks every engine must pass.
//!
//! Each check is a function over a [`Harness`] that can open (and re-open) one engine instance;
//! [`store_contract!`] instantiates them all as tests for an engine. A future Redis engine adds one line.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::definition::parse_definition;
use crate::event::parse_events;
use crate::ids::{PlayerId, SessionId};
use crate::pixel::{NewPixel, PixelBody};

/// Opens an engine instance; opening again after `close` must see the same durable data.
pub(super) trait Harness {
    async fn open(&self) -> Arc<dyn Store>;
}

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
        body: PixelBody::Image {
            url: format!("https://px.example/{n}"),
        },
    }
}

fn with_id(id: &str, n: u32) -> NewPixel {
    NewPixel {
        id: Some(PixelId::parse(id).unwrap()),
        ..image(n)
    }
}

async fn store_with_brand(h: &impl Harness) -> Arc<dyn Store> {
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

pub(super) async fn unknown_brands_are_refused(h: &impl Harness) {
    let store = h.open().await;
    let err = store.enqueue(&key("p"), vec![image(1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownBrand(b) if b.as_str() == "brand-1"));
}

pub(super) async fn brands_are_created_then_updated(h: &impl Harness) {
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
        store.get_brand(&id).await.unwrap().unwrap().name.as_deref(),
        Some("B")
    );
}

pub(super) async fn the_queue_keeps_order_and_ids_are_idempotent(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let first = store
        .enqueue(
            &k,
            vec![image(1), with_id("ftd-1", 2), with_id("ftd-1", 99)],
        )
        .await
        .unwrap();
    assert_eq!(first[1].status, PixelStatus::Queued);
    assert!(!first[1].duplicate);
    assert!(
        first[2].duplicate,
        "the same id twice in one batch is one pixel"
    );
    let again = store
        .enqueue(&k, vec![with_id("ftd-1", 3), image(4)])
        .await
        .unwrap();
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
    assert_eq!(store.stats().await.unwrap().brands[&k.brand], 3);
}

pub(super) async fn one_session_holds_a_player_at_a_time(h: &impl Harness) {
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

pub(super) async fn acks_are_final_and_remembered(h: &impl Harness) {
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

    let again = store.enqueue(&k, vec![with_id("reg-1", 1)]).await.unwrap();
    assert_eq!(
        (again[0].status, again[0].duplicate),
        (PixelStatus::Fired, true)
    );
    assert!(store.lease(&k, s, 10).await.unwrap().is_empty());
}

pub(super) async fn cancel_covers_every_state(h: &impl Harness) {
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

pub(super) async fn expired_pixels_are_dropped_and_counted(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let short = NewPixel {
        ttl_seconds: Some(1),
        ..with_id("short", 1)
    };
    store.enqueue(&k, vec![short, image(2)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

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
    let again = store.enqueue(&k, vec![with_id("short", 1)]).await.unwrap();
    assert_eq!(again[0].status, PixelStatus::Expired);
}

pub(super) async fn sessions_hear_of_new_and_released_work(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let k = key("p");
    let mut heard = store.subscribe();
    store.enqueue(&k, vec![image(1)]).await.unwrap();
    assert_eq!(heard.recv().await.unwrap(), k);

    let s = SessionId::generate();
    store.lease(&k, s, 10).await.unwrap();
    store.release(&k, s).await.unwrap();
    assert_eq!(
        heard.recv().await.unwrap(),
        k,
        "released pixels are announced for another session"
    );
}

pub(super) async fn everything_survives_a_reopen(h: &impl Harness) {
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
        "leases die with the process; acks do not"
    );
    store.enqueue(&k, vec![image(3)]).await.unwrap();
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
    let again = store.enqueue(&k, vec![with_id("two", 2)]).await.unwrap();
    assert!(again[0].duplicate);
}

pub(super) async fn concurrent_enqueues_share_flushes_and_lose_nothing(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
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

pub(super) async fn a_closed_store_refuses_changes(h: &impl Harness) {
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
fn definition_input(body: serde_json::Value) -> DefinitionInput {
    parse_definition(body, true).expect("a valid definition")
}

fn events(body: serde_json::Value) -> Vec<crate::event::Event> {
    parse_events(body).expect("valid events")
}

pub(super) async fn definitions_are_created_replaced_and_deleted(h: &impl Harness) {
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

pub(super) async fn events_queue_pixels_once_even_after_a_reopen(h: &impl Harness) {
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
    assert_eq!(statuses, ["pending", "fired"]);

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

pub(super) async fn concurrent_event_batches_with_one_id_produce_once(h: &impl Harness) {
    let store = store_with_brand(h).await;
    let brand = key("x").brand;
    store
        .create_definition(
            &brand,
            definition_input(serde_json::json!({"name": "FTD", "trigger": "ftd", "kind": "js", "code": "f({{player_id}})"})),
        )
        .await
        .unwrap();
    // The same event id for two different players: only one may win.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
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

macro_rules! store_contract {
    ($harness:expr) => {
        mod contract_tests {
            use super::*;
            use $crate::store::contract;

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
pub(super) use store_contract;
