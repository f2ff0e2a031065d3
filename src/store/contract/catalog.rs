//! The catalog checks: what [`Catalog`] promises, engine by engine, with no rule above it.

use std::sync::Arc;

use crate::api_key::ApiKeyRecord;
use crate::brand::{Brand, BrandSecret, BrandSettings, SecretKind};
use crate::definition::{Definition, parse_definition};
use crate::ids::{BrandId, DefinitionId};
use crate::store::catalog::{Applied, Catalog, Change, Entry, Value};

/// Opens handles on one backing store.
#[allow(async_fn_in_trait)] // the checks await the harness in place; no future crosses threads
pub trait CatalogHarness {
    /// A handle on the harness's backing store. An engine whose store can be shared opens a new handle
    /// at each call (another process); an embedded one gives the same handle again, and runs the
    /// single-handle checks only (`catalog_contract!(harness, single_handle)`).
    async fn catalog(&self) -> Arc<dyn Catalog>;
}

fn brand_id(id: &str) -> BrandId {
    BrandId::parse(id).unwrap()
}

fn brand(id: &str, name: &str) -> Box<Brand> {
    Box::new(Brand {
        id: brand_id(id),
        settings: BrandSettings {
            name: Some(name.into()),
            ..BrandSettings::default()
        },
        created_at_ms: 1,
        updated_at_ms: 1,
    })
}

fn definition(id: &str) -> Definition {
    let body = serde_json::json!({
        "id": id, "name": id, "trigger": "ftd", "kind": "image", "url": "https://px.example/{{player_id}}",
    });
    parse_definition(body, true)
        .unwrap()
        .into_definition(DefinitionId::parse(id).unwrap(), 1, 1)
}

fn key(id: &str, brand: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        brand_id: brand_id(brand),
        name: None,
        created_at_ms: 1,
        hash: format!("hash-of-{id}"),
    }
}

fn secret(current: &str) -> BrandSecret {
    BrandSecret {
        current: current.into(),
        previous: None,
        previous_valid_until_ms: None,
        rotated_at_ms: 1,
    }
}

async fn put(catalog: &dyn Catalog, entry: Entry, value: Value) {
    let change = Change::default().write(entry, value);
    assert_eq!(catalog.apply(change).await.unwrap(), Applied::Done);
}

/// Every kind of entry reads back as written; listings hold the brand's entries only, definitions in id
/// order.
pub async fn entries_read_back_as_written(h: &impl CatalogHarness) {
    let catalog = h.catalog().await;
    let (a, b) = (brand_id("a"), brand_id("b"));
    assert_eq!(
        catalog.read(&Entry::Brand(a.clone())).await.unwrap(),
        Value::Absent
    );
    let change = Change::default()
        .write(Entry::Brand(a.clone()), Value::Brand(brand("a", "A")))
        .write(
            Entry::Secret(a.clone(), SecretKind::Signing),
            Value::Secret(secret("s1")),
        )
        .write(
            Entry::Definition(a.clone(), DefinitionId::parse("d2").unwrap()),
            Value::Definition(Box::new(definition("d2"))),
        )
        .write(
            Entry::Definition(a.clone(), DefinitionId::parse("d1").unwrap()),
            Value::Definition(Box::new(definition("d1"))),
        )
        .write(
            Entry::Definition(b.clone(), DefinitionId::parse("d0").unwrap()),
            Value::Definition(Box::new(definition("d0"))),
        )
        .write(Entry::ApiKey("k1".into()), Value::ApiKey(key("k1", "a")))
        .write(Entry::ApiKey("k2".into()), Value::ApiKey(key("k2", "b")));
    assert_eq!(catalog.apply(change).await.unwrap(), Applied::Done);

    assert_eq!(
        catalog.read(&Entry::Brand(a.clone())).await.unwrap(),
        Value::Brand(brand("a", "A"))
    );
    assert_eq!(
        catalog
            .read(&Entry::Secret(a.clone(), SecretKind::Signing))
            .await
            .unwrap(),
        Value::Secret(secret("s1"))
    );
    assert_eq!(
        catalog
            .read(&Entry::Secret(a.clone(), SecretKind::Inbound))
            .await
            .unwrap(),
        Value::Absent,
        "each kind of secret is its own entry"
    );
    let ids = |defs: Vec<Definition>| {
        defs.into_iter()
            .map(|d| d.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(catalog.definitions(&a).await.unwrap()), ["d1", "d2"]);
    assert_eq!(ids(catalog.definitions(&b).await.unwrap()), ["d0"]);
    assert_eq!(catalog.api_keys(&a).await.unwrap(), [key("k1", "a")]);
    assert_eq!(
        catalog.read(&Entry::ApiKey("k2".into())).await.unwrap(),
        Value::ApiKey(key("k2", "b")),
        "a key is found by its id alone"
    );
}

/// A change whose expectation no longer holds writes nothing, not even its other writes; one whose
/// expectations all hold writes everything.
pub async fn a_stale_expectation_writes_nothing(h: &impl CatalogHarness) {
    let catalog = h.catalog().await;
    let a = Entry::Brand(brand_id("a"));
    let k = Entry::ApiKey("k1".into());
    put(catalog.as_ref(), a.clone(), Value::Brand(brand("a", "A"))).await;

    let stale = Change::default()
        .expect(a.clone(), Value::Brand(brand("a", "not what is stored")))
        .write(a.clone(), Value::Brand(brand("a", "B")))
        .write(k.clone(), Value::ApiKey(key("k1", "a")));
    assert_eq!(catalog.apply(stale).await.unwrap(), Applied::Conflict);
    assert_eq!(
        catalog.read(&a).await.unwrap(),
        Value::Brand(brand("a", "A"))
    );
    assert_eq!(catalog.read(&k).await.unwrap(), Value::Absent);
    assert!(catalog.api_keys(&brand_id("a")).await.unwrap().is_empty());

    let absent_expected = Change::default()
        .expect(a.clone(), Value::Absent)
        .write(a.clone(), Value::Brand(brand("a", "C")));
    assert_eq!(
        catalog.apply(absent_expected).await.unwrap(),
        Applied::Conflict,
        "expecting absence of an entry that exists conflicts"
    );

    let fresh = Change::default()
        .expect(a.clone(), Value::Brand(brand("a", "A")))
        .expect(k.clone(), Value::Absent)
        .write(a.clone(), Value::Brand(brand("a", "B")))
        .write(k.clone(), Value::ApiKey(key("k1", "a")));
    assert_eq!(catalog.apply(fresh).await.unwrap(), Applied::Done);
    assert_eq!(
        catalog.read(&a).await.unwrap(),
        Value::Brand(brand("a", "B"))
    );
    assert_eq!(catalog.api_keys(&brand_id("a")).await.unwrap().len(), 1);
}

/// Writing [`Value::Absent`] deletes an entry, and it leaves every listing.
pub async fn deletes_leave_every_listing(h: &impl CatalogHarness) {
    let catalog = h.catalog().await;
    let a = brand_id("a");
    let d = Entry::Definition(a.clone(), DefinitionId::parse("d1").unwrap());
    let k = Entry::ApiKey("k1".into());
    put(
        catalog.as_ref(),
        d.clone(),
        Value::Definition(Box::new(definition("d1"))),
    )
    .await;
    put(catalog.as_ref(), k.clone(), Value::ApiKey(key("k1", "a"))).await;
    put(catalog.as_ref(), d.clone(), Value::Absent).await;
    put(catalog.as_ref(), k.clone(), Value::Absent).await;
    assert_eq!(catalog.read(&d).await.unwrap(), Value::Absent);
    assert_eq!(catalog.read(&k).await.unwrap(), Value::Absent);
    assert!(catalog.definitions(&a).await.unwrap().is_empty());
    assert!(catalog.api_keys(&a).await.unwrap().is_empty());
}

/// A change that pairs an entry with a value of another kind is refused whole.
pub async fn a_mismatched_change_is_refused(h: &impl CatalogHarness) {
    let catalog = h.catalog().await;
    let a = Entry::Brand(brand_id("a"));
    let mixed = Change::default()
        .write(Entry::ApiKey("k1".into()), Value::ApiKey(key("k1", "a")))
        .write(a.clone(), Value::Secret(secret("s")));
    assert!(catalog.apply(mixed).await.is_err());
    assert_eq!(
        catalog.read(&Entry::ApiKey("k1".into())).await.unwrap(),
        Value::Absent
    );
}

/// Two handles on one backing store (two processes on one database): each sees the other's writes, and
/// of two changes read from the same state, exactly one is applied; writers that decide again on a
/// conflict lose nothing between them.
pub async fn two_handles_share_one_catalog_and_lose_no_write(h: &impl CatalogHarness) {
    let (one, two) = (h.catalog().await, h.catalog().await);
    let a = Entry::Brand(brand_id("a"));
    put(one.as_ref(), a.clone(), Value::Brand(brand("a", "0"))).await;
    assert_eq!(
        two.read(&a).await.unwrap(),
        Value::Brand(brand("a", "0")),
        "a write through one handle is read through the other"
    );

    let from_zero = |name: &str| {
        Change::default()
            .expect(a.clone(), Value::Brand(brand("a", "0")))
            .write(a.clone(), Value::Brand(brand("a", name)))
    };
    let (first, second) = tokio::join!(one.apply(from_zero("one")), two.apply(from_zero("two")));
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|o| *o == Applied::Conflict);
    assert_eq!(outcomes, [Applied::Done, Applied::Conflict]);

    // Counters bumped by read, decide, apply, again on conflict: every bump lands.
    put(one.as_ref(), a.clone(), Value::Brand(brand("a", "0"))).await;
    let bumps = 20;
    let tasks: Vec<_> = (0..bumps)
        .map(|i| {
            let handle = if i % 2 == 0 { one.clone() } else { two.clone() };
            let a = a.clone();
            tokio::spawn(async move {
                loop {
                    let Value::Brand(now) = handle.read(&a).await.unwrap() else {
                        panic!("the brand is there")
                    };
                    let n: u32 = now.settings.name.as_deref().unwrap().parse().unwrap();
                    let change = Change::default()
                        .expect(a.clone(), Value::Brand(now))
                        .write(a.clone(), Value::Brand(brand("a", &(n + 1).to_string())));
                    if handle.apply(change).await.unwrap() == Applied::Done {
                        return;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        one.read(&a).await.unwrap(),
        Value::Brand(brand("a", &bumps.to_string()))
    );
}

/// Instantiates every check of [`self`] as a test of the engine the harness expression opens;
/// `single_handle` leaves out the checks that need two handles on one backing store.
#[macro_export]
macro_rules! catalog_contract {
    ($harness:expr) => {
        $crate::catalog_contract!($harness, single_handle);

        mod catalog_contract_shared_tests {
            use super::*;
            use $crate::store::contract::catalog as contract;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_handles_share_one_catalog_and_lose_no_write() {
                contract::two_handles_share_one_catalog_and_lose_no_write(&$harness).await
            }
        }
    };
    ($harness:expr, single_handle) => {
        mod catalog_contract_tests {
            use super::*;
            use $crate::store::contract::catalog as contract;

            #[tokio::test]
            async fn entries_read_back_as_written() {
                contract::entries_read_back_as_written(&$harness).await
            }

            #[tokio::test]
            async fn a_stale_expectation_writes_nothing() {
                contract::a_stale_expectation_writes_nothing(&$harness).await
            }

            #[tokio::test]
            async fn deletes_leave_every_listing() {
                contract::deletes_leave_every_listing(&$harness).await
            }

            #[tokio::test]
            async fn a_mismatched_change_is_refused() {
                contract::a_mismatched_change_is_refused(&$harness).await
            }
        }
    };
}
