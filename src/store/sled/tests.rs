//! The embedded engine's own checks: the shared contract on it, and what only it has (migrations,
//! its key layout, its flush grouping).

use super::*;
use crate::brand::BrandSettings;
use crate::clock::{Clock, ManualClock};
use crate::event::EventOutcome;
use crate::ids::SessionId;
use crate::ledger::Ledger;
use crate::pixel::NewPixel;
use crate::store::contract::rules as contract;
use crate::store::queues::Queues;
use crate::store::sled::backlog::Summary;
use crate::store::sled::queues::position;
use crate::store::{DeliveryQuery, OnFull, PixelStatus, QueueCap, Store};
use tokio_util::sync::CancellationToken;

/// How long final records are kept in these tests.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

fn options(clock: &Arc<ManualClock>) -> SledOptions {
    SledOptions {
        cache_bytes: 16 << 20,
        journal_segment_bytes: 1 << 20,
        metrics: Arc::new(Metrics::new()),
        clock: clock.clone(),
    }
}

/// A fresh temporary directory; every `open` opens the same database in it, on the same clock.
struct SledHarness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl SledHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
            clock: ManualClock::starting_now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

impl contract::Harness for SledHarness {
    async fn open(&self) -> Ledger {
        let options = options(&self.clock);
        let store = SledStore::open(self.dir.path(), options).expect("the store opens");
        ledger(&store)
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

crate::rules_contract!(SledHarness::new(), single_handle);

/// One store, every handle the same: sled's files belong to one process.
struct SledCatalogHarness {
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
}

impl SledCatalogHarness {
    fn new() -> Self {
        let harness = SledHarness::new();
        let store = Arc::new(open(&harness));
        SledCatalogHarness {
            _dir: harness.dir,
            store,
        }
    }
}

impl crate::store::contract::catalog::CatalogHarness for SledCatalogHarness {
    async fn catalog(&self) -> Arc<dyn crate::store::catalog::Catalog> {
        self.store.clone()
    }
}

crate::catalog_contract!(SledCatalogHarness::new(), single_handle);

fn open(harness: &SledHarness) -> SledStore {
    let options = options(&harness.clock);
    SledStore::open(harness.dir.path(), options).unwrap()
}

/// Opens the harness's store, counting into `metrics`, and the rules over it with another queue cap.
fn open_capped(
    harness: &SledHarness,
    max_per_player: u64,
    on_full: OnFull,
    metrics: Arc<Metrics>,
) -> (SledStore, Ledger) {
    let store = SledStore::open(harness.dir.path(), options(&harness.clock)).unwrap();
    let cap = QueueCap {
        max_per_player,
        on_full,
    };
    let rules = ledger_capped(&store, cap, metrics);
    (store, rules)
}

/// The rules over `store` alone, as the hub runs them.
fn ledger(store: &SledStore) -> Ledger {
    let cap = QueueCap {
        max_per_player: contract::QUEUE_CAP,
        on_full: OnFull::Reject,
    };
    ledger_capped(store, cap, Arc::new(Metrics::new()))
}

/// The rules over `store` with another queue cap.
fn ledger_capped(store: &SledStore, queue_cap: QueueCap, metrics: Arc<Metrics>) -> Ledger {
    let engine = Arc::new(store.clone());
    let inner = &store.inner;
    let options = crate::ledger::Options {
        default_ttl: Duration::from_secs(3600),
        retention: RETENTION,
        queue_cap,
        lease_ttl: contract::LEASE_TTL,
        quotas: crate::store::Quotas::default(),
    };
    let engines = crate::ledger::Engines::one(engine);
    Ledger::new(engines, options, metrics, Arc::clone(&inner.clock))
}

async fn with_brand(store: &SledStore) -> PlayerKey {
    let brand = BrandId::parse("b").unwrap();
    ledger(store).put_brand(&brand, any_kind()).await.unwrap();
    PlayerKey::new(brand, PlayerId::parse("p").unwrap())
}

/// Saves `definition` for `brand`, then reports the sale `e1` of player `p`; returns what it produced.
async fn define_and_sell(
    store: &SledStore,
    brand: &BrandId,
    definition: serde_json::Value,
) -> Vec<EventOutcome> {
    let mut definition = definition;
    definition["audience"] = "all_players".into();
    let definition = crate::definition::parse_definition(definition, false).unwrap();
    ledger(store)
        .create_definition(brand, definition)
        .await
        .unwrap();
    let sale = crate::event::parse_events(
        serde_json::json!({"event_id": "e1", "type": "sale", "player_id": "p"}),
        1,
    )
    .unwrap();
    ledger(store).ingest(brand, sale).await.unwrap()
}

/// A brand that allows every kind of pixel, `js` too.
fn any_kind() -> BrandSettings {
    BrandSettings {
        allowed_kinds: crate::pixel::PixelKind::ALL.to_vec(),
        ..BrandSettings::default()
    }
}

fn js(id: &str, ttl_seconds: Option<u64>) -> NewPixel {
    NewPixel {
        id: Some(PixelId::parse(id).unwrap()),
        trigger: None,
        ttl_seconds,
        tcf_vendor_id: None,
        body: crate::pixel::PixelBody::Js { code: "1".into() },
        origin: None,
    }
}

#[tokio::test]
async fn drop_oldest_makes_room_but_never_drops_what_a_browser_holds() {
    let harness = SledHarness::new();
    let metrics = Arc::new(Metrics::new());
    let (store, rules) = open_capped(&harness, 3, OnFull::DropOldest, Arc::clone(&metrics));
    let key = with_brand(&store).await;
    rules
        .enqueue(&key, vec![js("a", None), js("b", None), js("c", None)])
        .await
        .unwrap();
    let held = rules.lease(&key, SessionId::generate(), 1).await.unwrap();
    assert_eq!(held[0].id.as_str(), "a");

    let outcome = rules
        .enqueue(&key, vec![js("d", None), js("e", None)])
        .await
        .unwrap();
    let dropped: Vec<&str> = outcome.dropped.iter().map(PixelId::as_str).collect();
    assert_eq!(dropped, ["b", "c"], "the oldest not in flight");
    assert_eq!(pending_ids(&rules, &key).await, ["a", "d", "e"]);
    let b = store
        .inner
        .record(&key, &PixelId::parse("b").unwrap(), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        b.delivery.status,
        PixelStatus::Dropped,
        "reported as dropped"
    );
    assert!(
        metrics
            .encode()
            .contains("pixelhub_pixels_dropped_total{brand=\"b\",kind=\"js\"} 2")
    );

    // Only "a" is held: two more cannot fit, one can.
    let err = rules
        .enqueue(
            &key,
            vec![js("f", None), js("g", None), js("h", None), js("i", None)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::QueueFull { .. }), "{err:?}");
    assert_eq!(
        rules.pending(&key).await.unwrap().len(),
        3,
        "nothing written"
    );
    let outcome = rules.enqueue(&key, vec![js("f", None)]).await.unwrap();
    assert_eq!(outcome.dropped, [PixelId::parse("d").unwrap()]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_retry_of_queued_ids_is_answered_even_over_a_lowered_cap() {
    let harness = SledHarness::new();
    let store = open(&harness);
    let key = with_brand(&store).await;
    let three = || vec![js("a", None), js("b", None), js("c", None)];
    ledger(&store).enqueue(&key, three()).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    for on_full in [OnFull::Reject, OnFull::DropOldest] {
        let (store, rules) = open_capped(&harness, 2, on_full, Arc::new(Metrics::new()));
        let again = rules.enqueue(&key, three()).await.unwrap();
        assert!(again.pixels.iter().all(|p| p.duplicate), "{on_full:?}");
        assert!(again.dropped.is_empty(), "{on_full:?}");
        assert_eq!(rules.pending(&key).await.unwrap().len(), 3);
        store.close().await.unwrap();
    }
}

/// The ids of the player's pending pixels, in queue order.
async fn pending_ids(rules: &Ledger, key: &PlayerKey) -> Vec<String> {
    rules
        .pending(key)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.pixel.id.to_string())
        .collect()
}

/// A store whose brand's player has pixels `a` and `b` pending.
async fn with_a_and_b(harness: &SledHarness) -> (SledStore, PlayerKey) {
    let store = open(harness);
    let key = with_brand(&store).await;
    ledger(&store)
        .enqueue(&key, vec![js("a", None), js("b", None)])
        .await
        .unwrap();
    (store, key)
}

/// Keys of the `data` tree under `tag`.
fn keys_of(store: &SledStore, tag: &[u8]) -> Vec<IVec> {
    store
        .inner
        .log
        .scan_prefix(tag)
        .map(|entry| entry.unwrap().0)
        .collect()
}

#[tokio::test]
async fn a_data_dir_from_before_the_summaries_gets_them_at_open() {
    let harness = SledHarness::new();
    let store = open(&harness);
    let key = with_brand(&store).await;
    // `a` expires in a minute, `b` in the default 30 days.
    ledger(&store)
        .enqueue(&key, vec![js("a", Some(60)), js("b", None)])
        .await
        .unwrap();
    let oldest = store.stats().await.unwrap().brands[&key.brand].oldest_queued_at_ms;
    // Rewrite the queue's indexes as the layout before the summaries had them: an age key `p` and an
    // expiry key `x` per pending pixel, the player's count alone in `n`, no marker.
    tamper(&store, |data| {
        one_entry_per_key(data);
        let mut count = 0u64;
        for entry in data.scan_prefix(b"q") {
            let (k, v) = entry.unwrap();
            let (player, seq) = keys::parse_queue(&k).unwrap();
            let pixel = entry::pixel(&v).unwrap();
            let age = keys::legacy_age(&player, pixel.queued_at_ms, seq);
            data.insert(age, &[]).unwrap();
            let expiry = keys::expiry(pixel.expires_at_ms, &player, seq);
            data.insert(expiry, pixel.id.as_str().as_bytes()).unwrap();
            count += 1;
        }
        data.insert(keys::summary(&key), count.to_be_bytes().as_slice())
            .unwrap();
        data.remove(b"mpending-summaries-v2").unwrap();
    });
    store.close().await.unwrap();
    drop(store);

    let store = open(&harness);
    let queue = store.stats().await.unwrap().brands[&key.brand];
    assert_eq!((queue.queue_depth, queue.oldest_queued_at_ms), (2, oldest));
    let top = store.backlogs(None, 5).await.unwrap();
    assert_eq!((top.len(), top[0].pending), (1, 2));
    let summary = store.inner.log.get(&keys::summary(&key)).unwrap().unwrap();
    assert_eq!(Summary::decode(&summary).unwrap().count, 2);
    assert_eq!(summary.len(), 24, "the count is a summary now");
    assert_eq!(
        (keys_of(&store, b"p").len(), keys_of(&store, b"x").len()),
        (2, 2),
        "the old keys stay until their pixels end"
    );

    // `a` fires; a minute later its old expiry key must not make the upkeep forget its record (the
    // retention is a week).
    let rules = ledger(&store);
    let session = SessionId::generate();
    let sent = rules.lease(&key, session, 1).await.unwrap();
    rules.ack(&key, &[sent[0].id.clone()]).await.unwrap();
    assert_eq!(keys_of(&store, b"p").len(), 1, "a's age key went with it");
    harness.clock.advance(Duration::from_secs(120));
    swept_depth(&store, &rules, &harness).await;
    let page = store
        .deliveries(&key.brand, &DeliveryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 2, "a's record is kept for its retention");

    // `b` still expires, from the summaries; its old keys go with it.
    harness.clock.advance(Duration::from_secs(31 * 24 * 3600));
    assert_eq!(swept_depth(&store, &rules, &harness).await, 0);
    assert!(keys_of(&store, b"p").is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_pending_pixel_costs_sled_its_queue_entry_and_report_row_alone() {
    let harness = SledHarness::new();
    let (store, _) = with_a_and_b(&harness).await;
    store.inner.log.checkpoint().unwrap();
    let tree = store.inner.log.sled_tree();
    let count = |tag: &[u8]| tree.scan_prefix(tag).count();
    assert_eq!(
        [
            count(b"q"),
            count(b"i"),
            count(b"r"),
            count(b"n"),
            count(b"x"),
            count(b"p")
        ],
        [1, 0, 1, 1, 0, 0],
        "one page of the queue holding both entries and their records, queued in one call; one \
         report bucket for both; one summary; no per-pixel index"
    );
    store.close().await.unwrap();
}

/// A store whose checkpointer runs only when the test says, its ledger, and a player of its brand.
async fn paused_with_player(harness: &SledHarness) -> (SledStore, Ledger, PlayerKey) {
    let (store, brand, rules) = with_brand_and_rules(harness).await;
    store.inner.log.pause_checkpointer().unwrap();
    let key = PlayerKey::new(brand, PlayerId::parse("p").unwrap());
    (store, rules, key)
}

/// The changes of keys under `tag` that the journal holds and sled does not yet.
fn unwritten_under(store: &SledStore, tag: &[u8]) -> Vec<Op> {
    let ops = store.inner.log.unwritten();
    ops.into_iter()
        .filter(|(k, _)| k.starts_with(tag))
        .collect()
}

#[tokio::test]
async fn a_pixel_delivered_between_two_checkpoints_costs_sled_no_summary() {
    let harness = SledHarness::new();
    let (store, rules, key) = paused_with_player(&harness).await;
    let summary = keys::summary(&key);
    let unwritten = || unwritten_under(&store, b"n");
    let in_sled = || store.inner.log.sled_tree().contains_key(&summary).unwrap();
    let session = SessionId::generate();
    let deliver = |id: &'static str| {
        let (rules, key) = (rules.clone(), key.clone());
        async move {
            rules.enqueue(&key, vec![js(id, None)]).await.unwrap();
            let sent = rules.lease(&key, session, 10).await.unwrap();
            assert_eq!(rules.ack(&key, &[sent[0].id.clone()]).await.unwrap(), 1);
        }
    };

    deliver("a").await;
    assert_eq!(unwritten(), vec![], "put and removed before any checkpoint");

    // Pending across a checkpoint, the summary is in sled, and its removal must reach it.
    rules.enqueue(&key, vec![js("b", None)]).await.unwrap();
    store.inner.log.checkpoint().unwrap();
    assert!(in_sled());
    let sent = rules.lease(&key, session, 10).await.unwrap();
    rules.ack(&key, &[sent[0].id.clone()]).await.unwrap();
    assert_eq!(unwritten(), vec![(IVec::from(summary.clone()), None)]);
    // Put again before that removal is written: the put must reach sled.
    rules.enqueue(&key, vec![js("c", None)]).await.unwrap();
    assert_eq!(unwritten().len(), 1);
    assert!(unwritten()[0].1.is_some());
    store.inner.log.checkpoint().unwrap();
    assert!(in_sled());
    let sent = rules.lease(&key, session, 10).await.unwrap();
    rules.ack(&key, &[sent[0].id.clone()]).await.unwrap();
    store.inner.log.checkpoint().unwrap();
    assert!(!in_sled());

    deliver("d").await;
    assert_eq!(unwritten(), vec![], "sled dropped it: free again");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_lease_costs_no_sync_of_its_own_and_is_durable_within_a_checkpoint_turn() {
    let harness = SledHarness::new();
    let (store, rules, key) = paused_with_player(&harness).await;
    let log = Arc::clone(&store.inner.log);
    let journal_syncs = || log.journal().counters().syncs.load(Ordering::Relaxed);
    rules.enqueue(&key, vec![js("a", None)]).await.unwrap();
    let before = journal_syncs();
    let sent = rules.lease(&key, SessionId::generate(), 10).await.unwrap();
    assert_eq!(sent.len(), 1);
    let stamped = log.journal().position();
    assert!(
        stamped > log.journal().durable(),
        "the lease wrote its stamp"
    );
    // Given the time, the journal still has not synced for it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(journal_syncs(), before, "the lease took a sync of its own");

    // The checkpointer's turn syncs it and writes it to sled, with nobody waiting.
    let turn = Arc::clone(&log);
    tokio::task::spawn_blocking(move || turn.turn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(journal_syncs(), before + 1);
    assert!(log.journal().durable() >= stamped);
    assert_eq!(log.unwritten(), vec![], "the checkpoint took the stamp");
    store.close().await.unwrap();
}

#[tokio::test]
async fn an_online_players_next_pixel_is_found_by_its_ack_without_reading_the_queue() {
    let harness = SledHarness::new();
    let (store, rules, key) = paused_with_player(&harness).await;
    let session = SessionId::generate();
    let index = |id: &PixelId| store.inner.pending_ids.find(&key, id.as_str().as_bytes());
    for round in 0..3 {
        let name = format!("p{round}");
        rules.enqueue(&key, vec![js(&name, None)]).await.unwrap();
        let id = PixelId::parse(&name).unwrap();
        if round > 0 {
            // Its queue emptied by the last ack, the player is still indexed: no walk of its queue.
            assert!(
                matches!(index(&id), pending::Lookup::At(_)),
                "round {round}: {:?}",
                index(&id)
            );
        }
        let sent = rules.lease(&key, session, 10).await.unwrap();
        assert_eq!(rules.ack(&key, &[sent[0].id.clone()]).await.unwrap(), 1);
        assert_eq!(index(&id), pending::Lookup::Absent);
        assert_eq!(rules.ack(&key, &[id]).await.unwrap(), 0, "acked once only");
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_stale_floor_is_made_exact_when_the_oldest_pixel_is_asked_for() {
    let harness = SledHarness::new();
    let store = open(&harness);
    let key = with_brand(&store).await;
    let rules = ledger(&store);
    rules.enqueue(&key, vec![js("a", None)]).await.unwrap();
    let first = harness.now_ms();
    harness.clock.advance(Duration::from_secs(5));
    rules.enqueue(&key, vec![js("b", None)]).await.unwrap();
    let a = rules.pending(&key).await.unwrap()[0].pixel.id.clone();
    rules.cancel(&key, &a).await.unwrap();
    // The cancel left the floor at a's time: a lower bound, not the answer.
    assert_eq!(store.inner.summaries().summary(&key).queued_floor, first);
    let oldest = store.stats().await.unwrap().brands[&key.brand].oldest_queued_at_ms;
    assert_eq!(oldest, Some(first + 5_000), "b is the oldest now");
    assert_eq!(
        store.inner.summaries().summary(&key).queued_floor,
        first + 5_000
    );

    // Reopened, the summary read from `n` still holds (a floor is never above the truth).
    store.close().await.unwrap();
    drop((store, rules));
    let store = open(&harness);
    let oldest = store.stats().await.unwrap().brands[&key.brand].oldest_queued_at_ms;
    assert_eq!(oldest, Some(first + 5_000));
    store.close().await.unwrap();
}

/// Runs one upkeep sweep at the harness's time; the queue depth it leaves.
async fn swept_depth(store: &SledStore, rules: &Ledger, harness: &SledHarness) -> u64 {
    rules
        .sweep(harness.now_ms(), &CancellationToken::new())
        .await
        .unwrap();
    store.stats().await.unwrap().queue_depth
}

/// A store with a brand, and the ledger over it.
async fn with_brand_and_rules(harness: &SledHarness) -> (SledStore, BrandId, Ledger) {
    let store = open(harness);
    let brand = with_brand(&store).await.brand;
    let rules = ledger(&store);
    (store, brand, rules)
}

/// A player of `brand` with one pending pixel that expires in `ttl` seconds, behind a pixel of 1 s
/// that was cancelled: its floors are stale (below its pixel's).
async fn with_stale_floor(rules: &Ledger, brand: &BrandId, player: &str, ttl: u64) -> PlayerKey {
    let key = PlayerKey::new(brand.clone(), PlayerId::parse(player).unwrap());
    rules
        .enqueue(&key, vec![js("early", Some(1)), js("late", Some(ttl))])
        .await
        .unwrap();
    let early = rules.pending(&key).await.unwrap()[0].pixel.id.clone();
    rules.cancel(&key, &early).await.unwrap();
    key
}

#[tokio::test]
async fn the_sweep_finds_due_pixels_behind_stale_floors_and_past_its_budget() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    // More players than one call surveys, each with a short-lived pixel behind an acked one whose
    // expiry is earlier still: every floor is stale once the first pixels are gone.
    let players = queues::SURVEY_BUDGET + 40;
    let mut keys = Vec::new();
    for p in 0..players {
        keys.push(with_stale_floor(&rules, &brand, &format!("p{p}"), 60).await);
    }
    assert_eq!(store.stats().await.unwrap().queue_depth, players as u64);
    harness.clock.advance(Duration::from_secs(30));
    assert_eq!(
        swept_depth(&store, &rules, &harness).await,
        players as u64,
        "nothing is due yet: the stale floors were surveyed, none expired early"
    );
    harness.clock.advance(Duration::from_secs(31));
    let mut sweeps = 1;
    while swept_depth(&store, &rules, &harness).await > 0 {
        sweeps += 1;
        assert!(sweeps <= 3, "every pixel expires within a few sweeps");
    }
    for key in &keys {
        assert!(rules.pending(key).await.unwrap().is_empty());
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn one_sweep_goes_on_past_any_number_of_expired_pixels_a_browser_holds() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    let session = SessionId::generate();
    // More players than a call's survey budget, each holding an expired pixel in a browser (the
    // upkeep passes over those), and after them one player whose expired pixel nobody holds.
    let held = queues::SURVEY_BUDGET + 76;
    for p in 0..held {
        let key = PlayerKey::new(brand.clone(), PlayerId::parse(&format!("h{p:04}")).unwrap());
        rules
            .enqueue(&key, vec![js("held", Some(1))])
            .await
            .unwrap();
        assert_eq!(rules.lease(&key, session, 1).await.unwrap().len(), 1);
    }
    let idle = PlayerKey::new(brand.clone(), PlayerId::parse("z").unwrap());
    rules
        .enqueue(&idle, vec![js("idle", Some(1))])
        .await
        .unwrap();
    harness.clock.advance(Duration::from_secs(2));

    assert_eq!(
        swept_depth(&store, &rules, &harness).await,
        held as u64,
        "the idle pixel expired in the first sweep; what browsers hold stays (their acks decide)"
    );
    assert_eq!(store.inner.summaries().summary(&idle).count, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn due_pixels_come_in_expiry_order_even_behind_stale_floors() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    // Seventy players whose floors went stale at 1 s and whose pixel expires at 100 s and later;
    // one player whose only pixel expires at 50 s.
    for p in 0..70 {
        with_stale_floor(&rules, &brand, &format!("s{p}"), 100 + p).await;
    }
    let soon = PlayerKey::new(brand.clone(), PlayerId::parse("e").unwrap());
    rules
        .enqueue(&soon, vec![js("soon", Some(50))])
        .await
        .unwrap();
    harness.clock.advance(Duration::from_secs(300));
    let due = store.inner.due_entries(harness.now_ms(), None, 2).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].key, soon, "the earliest expiry comes first");
    assert!(due[0].due_ms < due[1].due_ms);
    // Walking on from each answer lists every due pixel once, in order.
    let mut all = due.clone();
    while let Some(last) = all.last().cloned() {
        let more = store
            .inner
            .due_entries(harness.now_ms(), Some(&last), 7)
            .unwrap();
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    assert_eq!(all.len(), 71);
    assert!(all.windows(2).all(|w| position(&w[0]) < position(&w[1])));
    store.close().await.unwrap();
}

/// Changes sled behind the engine's back, as an older version would have left the data dir: the
/// journal's changes are checkpointed first, so the overlay hides nothing it did.
fn tamper(store: &SledStore, change: impl FnOnce(&::sled::Tree)) {
    store.inner.log.checkpoint().unwrap();
    change(store.inner.log.sled_tree());
    store.inner.log.settle().unwrap();
}

/// Rewrites every page of the queue as an entry per key, as data dirs written before pages hold it.
fn one_entry_per_key(data: &::sled::Tree) {
    for item in data.scan_prefix(b"q") {
        let (k, v) = item.unwrap();
        let (player, first) = keys::parse_queue(&k).unwrap();
        data.remove(&k).unwrap();
        for queued in entry::entries(first, &v) {
            let (seq, bytes) = queued.unwrap();
            data.insert(keys::queue(&player, seq), bytes).unwrap();
        }
    }
}

/// A store whose brand has one postback to `pb.example` in its outbox; the outbox entry's key.
async fn with_one_postback(harness: &SledHarness) -> (SledStore, PlayerKey, IVec) {
    let store = open(harness);
    let key = with_brand(&store).await;
    define_and_sell(
        &store,
        &key.brand,
        serde_json::json!({"name": "pb", "trigger": "sale", "kind": "s2s", "url": "https://pb.example/?e={{event_id}}"}),
    )
    .await;
    let (entry, _) = store.inner.log.scan_prefix(b"l").next().unwrap().unwrap();
    (store, key, entry)
}

#[tokio::test]
async fn an_outbox_written_before_lanes_is_moved_to_its_lanes_at_open() {
    let harness = SledHarness::new();
    let (store, key, lane_key) = with_one_postback(&harness).await;
    // Rewrite the data dir as the version before lanes left it: one `s` entry, no marker.
    let (_, due, player, id) = keys::parse_outbox(&lane_key).unwrap();
    let mut old = vec![b's'];
    old.extend_from_slice(&due.to_be_bytes());
    old.extend_from_slice(format!("{}\0{}\0{}", player.brand, player.player, id).as_bytes());
    tamper(&store, |data| {
        data.remove(&lane_key).unwrap();
        data.insert(old, &[]).unwrap();
        data.remove(b"moutbox-lanes-v1").unwrap();
    });
    store.close().await.unwrap();
    drop(store);

    let store = open(&harness);
    let lane = Lane::of(&key.brand, "https://pb.example/");
    let due = ledger(&store)
        .due_postbacks(&lane, harness.now_ms(), 10)
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].id.as_str()), (1, id.as_str()));
    assert!(
        store.inner.log.scan_prefix(b"s").next().is_none(),
        "the old outbox is gone"
    );
    assert_eq!(ledger(&store).postback_lanes().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_outbox_entry_with_no_postback_behind_it_is_dropped_not_kept_due() {
    let harness = SledHarness::new();
    let (store, _, lane_key) = with_one_postback(&harness).await;
    // As if the record were lost: the entry alone would keep its lane due for ever.
    let (lane, _, player, id) = keys::parse_outbox(&lane_key).unwrap();
    tamper(&store, |data| {
        data.remove(keys::index(&player, &id)).unwrap();
    });
    assert!(
        ledger(&store)
            .due_postbacks(&lane, harness.now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        ledger(&store).postback_lanes().await.unwrap().is_empty(),
        "the lane is gone"
    );
    assert!(store.inner.log.scan_prefix(b"l").next().is_none());
}

#[tokio::test]
async fn ids_an_earlier_version_accepted_still_read_back() {
    // `.` and `..` were valid ids before they were refused as input; data holding them must open,
    // list and expire as any other.
    let harness = SledHarness::new();
    let store = open(&harness);
    let brand = BrandId::parse_stored("..").unwrap();
    ledger(&store).put_brand(&brand, any_kind()).await.unwrap();
    let key = PlayerKey::new(brand, PlayerId::parse_stored(".").unwrap());
    ledger(&store)
        .enqueue(&key, vec![js("a", Some(60)), js("b", None)])
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(&harness);
    assert_eq!(ledger(&store).pending(&key).await.unwrap().len(), 2);
    assert_eq!(
        store.stats().await.unwrap().brands[&key.brand].queue_depth,
        2
    );
    ledger(&store)
        .sweep(harness.now_ms() + 61_000, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        ledger(&store).pending(&key).await.unwrap().len(),
        1,
        "expired as usual"
    );
}

#[tokio::test]
async fn nothing_written_but_not_yet_flushed_is_leased() {
    let harness = SledHarness::new();
    let (store, key) = with_a_and_b(&harness).await;
    let seq_b = store
        .inner
        .record(&key, &PixelId::parse("b").unwrap(), None)
        .unwrap()
        .unwrap()
        .seq;

    // As if `b` belonged to a batch whose fsync is still running.
    store
        .inner
        .unflushed
        .entry(key.clone())
        .or_default()
        .push((seq_b, seq_b));
    let session = SessionId::generate();
    let first = ledger(&store).lease(&key, session, 10).await.unwrap();
    assert_eq!(
        first.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["a"],
        "stops before the unflushed"
    );

    store.inner.flushed(&key, (seq_b, seq_b));
    let rest = ledger(&store).lease(&key, session, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
}

/// A session asks for work after every ack and every heartbeat: the engine answers from memory when
/// the player has nothing pending and nothing in flight, even while other players of the brand wait
/// (an online hub's sessions, each acking as others are queued for), and asks the queue whenever a
/// lease could send something.
#[tokio::test]
async fn a_player_with_nothing_pending_or_in_flight_is_idle_whatever_the_brand_holds() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    let player = |p: &str| PlayerKey::new(brand.clone(), PlayerId::parse(p).unwrap());
    let (a, b) = (player("a"), player("b"));
    assert!(store.surely_idle(&a), "a player never seen");
    rules.enqueue(&a, vec![js("a1", None)]).await.unwrap();
    rules.enqueue(&b, vec![js("b1", None)]).await.unwrap();
    assert!(!store.surely_idle(&a), "a pixel pending");

    let session = SessionId::generate();
    let sent = rules.lease(&a, session, 10).await.unwrap();
    assert_eq!(sent.len(), 1);
    assert!(!store.surely_idle(&a), "a pixel in flight");
    assert_eq!(rules.ack(&a, &[sent[0].id.clone()]).await.unwrap(), 1);
    assert!(
        store.surely_idle(&a),
        "acked, the lease holding nothing, while b waits in the same brand"
    );
    assert!(!store.surely_idle(&b));
    assert!(rules.lease(&a, session, 10).await.unwrap().is_empty());

    rules.enqueue(&a, vec![js("a2", None)]).await.unwrap();
    assert!(!store.surely_idle(&a), "a new pixel");
    let next = rules.lease(&a, session, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["a2"]
    );
    store.close().await.unwrap();
    assert!(!store.surely_idle(&a), "closed: the caller must hear it");
}

#[tokio::test]
async fn the_sweeper_expires_pixels_and_later_forgets_their_ids() {
    let harness = SledHarness::new();
    let store = open(&harness);
    let key = with_brand(&store).await;
    let rules = ledger(&store);
    rules
        .enqueue(&key, vec![js("short", Some(60)), js("fired", None)])
        .await
        .unwrap();
    rules
        .ack(&key, &[PixelId::parse("fired").unwrap()])
        .await
        .unwrap();
    let now = harness.now_ms();

    assert_eq!(
        rules.sweep(now, &CancellationToken::new()).await.unwrap(),
        0,
        "nothing is due yet"
    );
    rules
        .sweep(now + 61_000, &CancellationToken::new())
        .await
        .unwrap();
    let stats = rules.stats().await.unwrap();
    assert_eq!((stats.queue_depth, stats.expired_total), (0, 1));
    let again = rules
        .enqueue(&key, vec![js("short", None), js("fired", None)])
        .await
        .unwrap()
        .pixels;
    assert!(
        again.iter().all(|e| e.duplicate),
        "ids are remembered after the pixels are gone"
    );

    rules
        .sweep(
            now + 61_000 + RETENTION.as_millis() as u64,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let later = rules
        .enqueue(&key, vec![js("short", None), js("fired", None)])
        .await
        .unwrap()
        .pixels;
    assert!(
        later
            .iter()
            .all(|e| !e.duplicate && e.status == PixelStatus::Queued),
        "and forgotten after retention"
    );
}

#[tokio::test]
async fn reports_and_event_records_are_forgotten_after_the_retention() {
    let harness = SledHarness::new();
    let store = open(&harness);
    let key = with_brand(&store).await;
    let produced = define_and_sell(
        &store,
        &key.brand,
        serde_json::json!({"name": "n", "trigger": "sale", "kind": "image", "url": "https://t.example/", "ttl_seconds": 600}),
    )
    .await;
    let now = harness.now_ms();
    let event_id = EventId::parse("e1").unwrap();
    let all = DeliveryQuery {
        limit: 10,
        ..Default::default()
    };
    let retention = RETENTION.as_millis() as u64;

    ledger(&store)
        .sweep(now + 599_000, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        store.deliveries(&key.brand, &all).await.unwrap().rows.len(),
        1
    );
    ledger(&store)
        .sweep(now + 601_000, &CancellationToken::new())
        .await
        .unwrap();
    let rows = store.deliveries(&key.brand, &all).await.unwrap().rows;
    assert_eq!(rows[0].status, PixelStatus::Expired, "kept as expired");

    ledger(&store)
        .sweep(now + retention - 1000, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        ledger(&store)
            .event(&key.brand, &event_id)
            .await
            .unwrap()
            .is_some()
    );
    ledger(&store)
        .sweep(now + 601_000 + retention + 1000, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        store
            .deliveries(&key.brand, &all)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    assert!(
        ledger(&store)
            .event(&key.brand, &event_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.inner.log.scan_prefix(b"r").next().is_none(),
        "no index entry left"
    );
    assert!(store.inner.log.scan_prefix(b"y").next().is_none());
    assert!(store.inner.log.scan_prefix(b"i").next().is_none());
    assert_eq!(produced[0].pixels.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_one_flush() {
    let harness = SledHarness::new();
    let options = options(&harness.clock);
    let store = SledStore::open(harness.dir.path(), options).unwrap();
    let brand = BrandId::parse("b").unwrap();
    ledger(&store).put_brand(&brand, any_kind()).await.unwrap();
    let syncs = || store.inner.log.counters().0.syncs.load(Ordering::Relaxed);
    let before = syncs();

    let writers: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let key = PlayerKey::new(brand.clone(), PlayerId::parse(&format!("p{i}")).unwrap());
            let pixel = NewPixel {
                id: None,
                trigger: None,
                ttl_seconds: None,
                tcf_vendor_id: None,
                body: crate::pixel::PixelBody::Js { code: "1".into() },
                origin: None,
            };
            tokio::spawn(async move { ledger(&store).enqueue(&key, vec![pixel]).await.unwrap() })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let flushes = syncs() - before;
    assert!(
        flushes < 200,
        "200 concurrent writers needed {flushes} journal syncs: group commit is not grouping"
    );
}

#[test]
fn keys_round_trip_even_when_the_sequence_holds_nul_bytes() {
    let key = PlayerKey::new(
        BrandId::parse("b-1").unwrap(),
        PlayerId::parse("p:1@x").unwrap(),
    );
    for seq in [0, 1, 256, u64::MAX] {
        assert_eq!(
            keys::parse_queue(&keys::queue(&key, seq)),
            Some((key.clone(), seq))
        );
        assert_eq!(
            keys::parse_expiry(&keys::expiry(12345, &key, seq)),
            Some((key.clone(), seq))
        );
    }
    assert_eq!(
        keys::parse_brand(&keys::brand(&key.brand)),
        Some(key.brand.clone())
    );
}

#[test]
fn a_player_prefix_never_matches_another_player_that_extends_it() {
    let a = PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse("p").unwrap());
    let b = PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse("p2").unwrap());
    assert!(!keys::queue(&b, 1).starts_with(&keys::queue_prefix(&a)));
}

#[tokio::test]
async fn a_data_dir_from_before_the_journal_opens_and_keeps_its_order() {
    let harness = SledHarness::new();
    let (store, key) = with_a_and_b(&harness).await;
    store.close().await.unwrap();
    drop(store);
    // As the version before the journal left it: sled alone, sequence numbers from sled's generator,
    // no journal and no checkpoint position.
    std::fs::remove_dir_all(harness.dir.path().join(super::JOURNAL_DIR)).unwrap();
    {
        let db = ::sled::Config::new()
            .path(harness.dir.path())
            .open()
            .unwrap();
        let data = db.open_tree("data").unwrap();
        data.remove(super::log::CHECKPOINT_KEY).unwrap();
        data.remove(b"mjournal-seq").unwrap();
        // That version numbered with sled's generator, which is past every number in the data dir.
        while db.generate_id().unwrap() < 1_000 {}
        db.flush().unwrap();
    }

    let store = open(&harness);
    ledger(&store)
        .enqueue(&key, vec![js("c", None)])
        .await
        .unwrap();
    assert_eq!(
        pending_ids(&ledger(&store), &key).await,
        ["a", "b", "c"],
        "new pixels queue after the old ones"
    );
    store.close().await.unwrap();
    drop(store);
    // And the journal it now has carries the next start.
    let store = open(&harness);
    assert_eq!(ledger(&store).pending(&key).await.unwrap().len(), 3);
}

/// Requests get a core before the checkpointer: its thread runs at nice 10 (online p99 depends on it,
/// docs/benchmarks.md). Threads of other tests' stores are in this process too; each must be lowered.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_checkpointer_runs_at_a_lower_priority_than_requests() {
    let harness = SledHarness::new();
    let _store = open(&harness);
    let nice_of = |comm: &str| -> Vec<i64> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .expect("procfs")
            .flatten()
        {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end() != comm {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name: state is field 3, nice field 19.
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            if let Some(nice) = after.split(' ').nth(16).and_then(|n| n.parse().ok()) {
                found.push(nice);
            }
        }
        found
    };
    // comm keeps 15 bytes of the name. The thread lowers itself as it starts: give it a moment.
    let mut checkpointers = nice_of("pixelhub-checkp");
    for _ in 0..100 {
        if !checkpointers.is_empty() && checkpointers.iter().all(|&n| n == 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        checkpointers = nice_of("pixelhub-checkp");
    }
    assert!(
        !checkpointers.is_empty(),
        "the checkpointer thread is running"
    );
    assert!(checkpointers.iter().all(|&n| n == 10), "{checkpointers:?}");
    assert!(
        nice_of("pixelhub-journa").iter().all(|&n| n == 0),
        "the journal is not lowered"
    );
}

/// A checkpoint marks its journal position in sled only once sled holds every key before it durably:
/// when the sync of sled's files fails, the mark stays where it was, so the next open replays the
/// journal from there, whatever sled's own log recovered.
#[tokio::test]
async fn a_checkpoint_marks_its_position_only_after_sled_synced_its_keys() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    let log = &store.inner.log;
    log.checkpoint().unwrap();
    let mark = || {
        let value = log.sled_tree().get(log::CHECKPOINT_KEY).unwrap().unwrap();
        u64::from_be_bytes(<[u8; 8]>::try_from(value.as_ref()).unwrap())
    };
    let before = mark();
    log.fail_settles();
    let key = PlayerKey::new(brand, PlayerId::parse("p1").unwrap());
    rules.enqueue(&key, vec![js("a", None)]).await.unwrap();

    assert!(log.checkpoint().is_err(), "the sync failed");
    // The pixel's keys reached sled's tree; its mark did not.
    let queued = log
        .sled_tree()
        .scan_prefix(keys::queue_prefix(&key))
        .count();
    assert_eq!(queued, 1, "the checkpoint wrote the queue entry");
    assert_eq!(mark(), before, "no mark before the sync of what it covers");
}

/// What the report says of the player's pixels, by id, read the way a page asks: by player, or over the
/// brand's time index.
async fn statuses(store: &SledStore, key: &PlayerKey) -> [Vec<(String, String)>; 2] {
    let by_player = DeliveryQuery {
        player: Some(key.player.clone()),
        limit: 10,
        ..Default::default()
    };
    let by_time = DeliveryQuery {
        limit: 10,
        ..Default::default()
    };
    let mut out = [Vec::new(), Vec::new()];
    for (rows, query) in out.iter_mut().zip([by_player, by_time]) {
        let page = store.deliveries(&key.brand, &query).await.unwrap();
        *rows = page
            .rows
            .into_iter()
            .map(|d| (d.id.to_string(), d.status.as_str().to_owned()))
            .collect();
        rows.sort();
    }
    out
}

/// The ids of the brand's report, read one row a page.
async fn report_in_pages_of_one(store: &SledStore, key: &PlayerKey) -> Vec<String> {
    report_in_pages(store, key, 1).await
}

/// The ids of the brand's report, read `limit` rows a page (at most 200 pages).
async fn report_in_pages(store: &SledStore, key: &PlayerKey, limit: usize) -> Vec<String> {
    let mut query = DeliveryQuery {
        limit,
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..200 {
        let page = store.deliveries(&key.brand, &query).await.unwrap();
        ids.extend(page.rows.iter().map(|d| d.id.to_string()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    ids
}

#[tokio::test]
async fn queue_entries_written_before_records_moved_in_keep_working_beside_new_ones() {
    // Before, a pending pixel's queue entry held its JSON alone, its record was under `i` and its report
    // row was a key of its own, empty. Such a data dir opens, and its pixels are found, sent, reported,
    // end and are forgotten as any, beside pixels written the new way.
    let harness = SledHarness::new();
    let (store, key) = with_a_and_b(&harness).await;
    tamper(&store, |data| {
        one_entry_per_key(data);
        for k in data.scan_prefix(b"r").keys() {
            data.remove(k.unwrap()).unwrap();
        }
        for item in data.scan_prefix(b"q") {
            let (k, v) = item.unwrap();
            let pixel = entry::pixel(&v).unwrap();
            let record = entry::record(&v).unwrap().unwrap();
            data.insert(&k, json(&pixel)).unwrap();
            data.insert(keys::index(&key, &pixel.id), json(&record))
                .unwrap();
            data.insert(keys::report(&key, pixel.queued_at_ms, &pixel.id), &[])
                .unwrap();
        }
    });
    store.close().await.unwrap();
    drop(store);

    let store = open(&harness);
    let rules = ledger(&store);
    let queued = rules
        .enqueue(&key, vec![js("a", None), js("c", None)])
        .await
        .unwrap();
    assert_eq!(
        queued
            .pixels
            .iter()
            .map(|p| p.duplicate)
            .collect::<Vec<_>>(),
        [true, false],
        "an old entry's id is still known"
    );
    assert_eq!(pending_ids(&rules, &key).await, ["a", "b", "c"]);
    let queued = |ids: &[&str], status: PixelStatus| {
        let status = status.as_str().to_owned();
        ids.iter()
            .map(|id| (id.to_string(), status.clone()))
            .collect()
    };
    let all_queued: Vec<_> = queued(&["a", "b", "c"], PixelStatus::Queued);
    assert_eq!(
        statuses(&store, &key).await,
        [all_queued.clone(), all_queued]
    );
    // c was queued in a's and b's millisecond: its bucket and their rows of their own read as one
    // group, in order, wherever a page ends.
    assert_eq!(report_in_pages_of_one(&store, &key).await, ["c", "b", "a"]);

    let sent = rules.lease(&key, SessionId::generate(), 10).await.unwrap();
    assert_eq!(sent.len(), 3);
    let delivered: Vec<_> = queued(&["a", "b", "c"], PixelStatus::Delivered);
    assert_eq!(statuses(&store, &key).await, [delivered.clone(), delivered]);

    let ids: Vec<PixelId> = sent.iter().map(|p| p.id.clone()).collect();
    assert_eq!(rules.ack(&key, &ids).await.unwrap(), 3);
    assert!(pending_ids(&rules, &key).await.is_empty());
    let fired: Vec<_> = queued(&["a", "b", "c"], PixelStatus::Fired);
    assert_eq!(statuses(&store, &key).await, [fired.clone(), fired]);
    store.inner.log.checkpoint().unwrap();
    let tree = store.inner.log.sled_tree();
    assert_eq!(
        [
            tree.scan_prefix(b"q").count(),
            tree.scan_prefix(b"i").count()
        ],
        [0, 3],
        "every pixel ended: its record is under `i`"
    );
    assert_eq!(
        tree.scan_prefix(b"r").count(),
        3,
        "a's and b's rows of their own, c's bucket"
    );
    // A retention period later, every record and report row goes, whichever kind it is.
    let later = harness.now_ms() + RETENTION.as_millis() as u64 + 1;
    rules.sweep(later, &CancellationToken::new()).await.unwrap();
    assert!(statuses(&store, &key).await.iter().all(Vec::is_empty));
    assert_eq!(
        [keys_of(&store, b"i").len(), keys_of(&store, b"r").len()],
        [0, 0],
        "nothing is left of the three"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn rows_past_a_full_bucket_have_keys_of_their_own_and_all_are_reported_and_forgotten() {
    let harness = SledHarness::new();
    let n = report::MAX_BUCKET_ROWS + 2;
    let metrics = Arc::new(Metrics::new());
    let (store, rules) = open_capped(&harness, n as u64, OnFull::Reject, metrics);
    let key = with_brand(&store).await;
    let ids: Vec<String> = (0..n).map(|i| format!("p{i:03}")).collect();
    rules
        .enqueue(&key, ids.iter().map(|id| js(id, None)).collect())
        .await
        .unwrap();
    assert_eq!(
        keys_of(&store, b"r").len(),
        3,
        "one full bucket, two rows of their own"
    );
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(report_in_pages(&store, &key, 7).await, newest_first);

    let all: Vec<PixelId> = ids.iter().map(|id| PixelId::parse(id).unwrap()).collect();
    assert_eq!(rules.ack(&key, &all).await.unwrap(), n);
    let later = harness.now_ms() + RETENTION.as_millis() as u64 + 1;
    let appends = || store.inner.log.commits.load(Ordering::Relaxed);
    let before = appends();
    rules.sweep(later, &CancellationToken::new()).await.unwrap();
    assert_eq!(
        appends() - before,
        n.div_ceil(128) as u64,
        "the player's records are forgotten together, each bucket rewritten once a transaction"
    );
    assert!(report_in_pages(&store, &key, 7).await.is_empty());
    assert_eq!(
        [keys_of(&store, b"i").len(), keys_of(&store, b"r").len()],
        [0, 0],
        "every record and report row is forgotten, in the bucket or not"
    );
    store.close().await.unwrap();
}

#[test]
fn a_report_bucket_reads_back_as_written_and_a_cut_one_is_corrupt() {
    let id = |s: &str| PixelId::parse(s).unwrap();
    let mut bucket = report::Bucket::default();
    assert_eq!(
        bucket.edit(report::RowEdit::Add(id("b"), Some(7))),
        report::Edited::Bucket
    );
    bucket.edit(report::RowEdit::Add(id("a"), None));
    bucket.edit(report::RowEdit::Add(id("c"), Some(u64::MAX)));
    bucket.edit(report::RowEdit::Remove(id("c")));
    assert_eq!(
        bucket.edit(report::RowEdit::Remove(id("d"))),
        report::Edited::Own(id("d"), None),
        "a row the bucket does not hold has a key of its own"
    );
    let value = bucket.encode();
    assert_eq!(report::Bucket::decode(&value).unwrap(), bucket);
    for cut in 0..value.len() {
        let whole_rows = [1, 5].contains(&cut); // the version alone, then a's row after it
        assert_eq!(
            report::Bucket::decode(&value[..cut]).is_ok(),
            whole_rows,
            "cut at {cut}"
        );
    }
    bucket.edit(report::RowEdit::Remove(id("a")));
    bucket.edit(report::RowEdit::Remove(id("b")));
    assert!(bucket.is_empty());
}

/// The player's queue as the engine holds it: per page, its key's position, its value's length and
/// its entries' positions.
fn queue_pages(store: &SledStore, key: &PlayerKey) -> Vec<(u64, usize, Vec<u64>)> {
    let pages = store.inner.log.scan_prefix(&keys::queue_prefix(key));
    pages
        .map(|item| {
            let (k, value) = item.unwrap();
            let (_, first) = keys::parse_queue(&k).unwrap();
            let seqs = entry::entries(first, &value).map(|e| e.unwrap().0);
            (first, value.len(), seqs.collect())
        })
        .collect()
}

/// Leases and acks everything the player has, `window` at a time, then lets the lease go; the ids, in
/// the order sent.
async fn deliver_all(rules: &Ledger, key: &PlayerKey, window: usize) -> Vec<String> {
    let session = SessionId::generate();
    let mut out = Vec::new();
    loop {
        let sent = rules.lease(key, session, window).await.unwrap();
        if sent.is_empty() {
            rules.release(key, session).await.unwrap();
            return out;
        }
        let ids: Vec<PixelId> = sent.iter().map(|p| p.id.clone()).collect();
        assert_eq!(rules.ack(key, &ids).await.unwrap(), ids.len());
        out.extend(ids.iter().map(|id| id.to_string()));
    }
}

#[tokio::test]
async fn a_batch_for_one_player_is_paged_and_a_window_ending_inside_a_page_splits_it() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    let key = PlayerKey::new(brand, PlayerId::parse("p").unwrap());
    let ids: Vec<String> = (0..40).map(|n| format!("px-{n:02}")).collect();
    let batch = ids.iter().map(|id| js(id, None)).collect();
    rules.enqueue(&key, batch).await.unwrap();

    let pages = queue_pages(&store, &key);
    let seqs: Vec<u64> = pages.iter().flat_map(|p| p.2.clone()).collect();
    assert_eq!(seqs.len(), 40);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in queue order");
    assert!(
        pages.len() <= 40 / 4,
        "a page holds several entries: {pages:?}"
    );
    for (first, len, seqs) in &pages {
        assert_eq!(*first, seqs[0], "a page's key is its first position");
        assert!(seqs.len() <= entry::PAGE_ENTRIES && *len <= 3 + entry::PAGE_BYTES);
    }
    // An id inside a page is found: a retry is a duplicate.
    let again = rules.enqueue(&key, vec![js("px-17", None)]).await.unwrap();
    assert!(again.pixels[0].duplicate);
    assert_eq!(pending_ids(&rules, &key).await, ids);

    // A window of 3 ends inside the first page: the page is split after it, and the window's acks
    // take out that page whole.
    let session = SessionId::generate();
    let sent = rules.lease(&key, session, 3).await.unwrap();
    let split = queue_pages(&store, &key);
    assert_eq!(split[0].2, pages[0].2[..3]);
    assert_eq!(split[1].2, pages[0].2[3..]);
    assert_eq!(
        split[1].0, pages[0].2[3],
        "the rest under its first position"
    );
    assert_eq!(split[2..], pages[1..]);
    let sent: Vec<PixelId> = sent.iter().map(|p| p.id.clone()).collect();
    assert_eq!(rules.ack(&key, &sent).await.unwrap(), 3);
    assert_eq!(queue_pages(&store, &key), split[1..]);

    // Reopened, the pages read back, and the rest goes out in order.
    store.close().await.unwrap();
    drop((store, rules));
    let store = open(&harness);
    let rules = ledger(&store);
    assert_eq!(deliver_all(&rules, &key, 7).await, ids[3..]);
    assert_eq!(queue_pages(&store, &key), []);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_page_put_and_removed_between_two_checkpoints_costs_sled_nothing() {
    let harness = SledHarness::new();
    let (store, rules, key) = paused_with_player(&harness).await;
    let queued_q = || unwritten_under(&store, b"q");
    let batch = |tag: &str| (0..10).map(|n| js(&format!("{tag}-{n}"), None)).collect();

    rules.enqueue(&key, batch("a")).await.unwrap();
    assert_eq!(deliver_all(&rules, &key, 4).await.len(), 10);
    assert_eq!(
        queued_q(),
        [],
        "pages and the parts split off them, put and removed"
    );

    // Across a checkpoint, the page is in sled: its removal must reach it, and the part split off it
    // (under a key sled never held) costs nothing.
    rules.enqueue(&key, batch("b")).await.unwrap();
    store.inner.log.checkpoint().unwrap();
    let in_sled: Vec<_> = queue_pages(&store, &key)
        .iter()
        .map(|(first, ..)| (IVec::from(keys::queue(&key, *first)), None))
        .collect();
    assert_eq!(deliver_all(&rules, &key, 4).await.len(), 10);
    assert_eq!(queued_q(), in_sled);
    store.inner.log.checkpoint().unwrap();
    assert_eq!(store.inner.log.sled_tree().scan_prefix(b"q").count(), 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn paged_pixels_expire_and_are_reported_one_by_one() {
    let harness = SledHarness::new();
    let (store, brand, rules) = with_brand_and_rules(&harness).await;
    let key = PlayerKey::new(brand, PlayerId::parse("p").unwrap());
    // One call, one page: `short-*` expire in a minute, the others in 30 days.
    let batch = [
        "short-0", "long-0", "short-1", "long-1", "short-2", "long-2",
    ]
    .iter()
    .map(|id| js(id, id.starts_with("short").then_some(60)))
    .collect();
    rules.enqueue(&key, batch).await.unwrap();
    assert_eq!(queue_pages(&store, &key).len(), 1);
    harness.clock.advance(Duration::from_secs(120));
    assert_eq!(swept_depth(&store, &rules, &harness).await, 3);
    assert_eq!(
        pending_ids(&rules, &key).await,
        ["long-0", "long-1", "long-2"]
    );
    let [by_player, by_time] = statuses(&store, &key).await;
    let expected: Vec<(String, String)> = ["long-0", "long-1", "long-2"]
        .iter()
        .map(|id| (id.to_string(), "queued".to_owned()))
        .chain(
            ["short-0", "short-1", "short-2"]
                .iter()
                .map(|id| (id.to_string(), "expired".to_owned())),
        )
        .collect();
    assert_eq!((by_player, by_time), (expected.clone(), expected));
    store.close().await.unwrap();
}

#[test]
fn a_checkpoint_turn_rests_as_long_as_it_worked_until_the_overlay_fills() {
    let took = Duration::from_millis(5);
    assert_eq!(log::rest_after(took, 0), took);
    assert_eq!(log::rest_after(took, log::CHECKPOINT_BYTES - 1), took);
    assert_eq!(
        log::rest_after(took, log::CHECKPOINT_BYTES),
        Duration::ZERO,
        "behind: no rest"
    );
}
