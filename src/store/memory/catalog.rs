//! The memory engine's catalog: one ordered map of entries under one lock.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{MemoryStore, lock};
use crate::api_key::ApiKeyRecord;
use crate::definition::Definition;
use crate::ids::BrandId;
use crate::store::StoreError;
use crate::store::catalog::{Applied, Catalog, Change, Entry, Value};

/// Every catalog entry, by address.
pub(super) type Entries = BTreeMap<Entry, Value>;

#[async_trait]
impl Catalog for MemoryStore {
    async fn read(&self, entry: &Entry) -> Result<Value, StoreError> {
        Ok(lock(&self.backing.catalog)
            .get(entry)
            .cloned()
            .unwrap_or(Value::Absent))
    }

    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        // Entries sort by kind, then brand, then id: a brand's definitions are one run of the map.
        Ok(lock(&self.backing.catalog)
            .iter()
            .filter_map(|(entry, value)| match (entry, value) {
                (Entry::Definition(b, _), Value::Definition(d)) if b == brand => {
                    Some((**d).clone())
                }
                _ => None,
            })
            .collect())
    }

    async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(lock(&self.backing.catalog)
            .values()
            .filter_map(|value| match value {
                Value::ApiKey(key) if key.brand_id == *brand => Some(key.clone()),
                _ => None,
            })
            .collect())
    }

    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        change.check()?;
        let mut entries = lock(&self.backing.catalog);
        let holds = |(entry, expected): &(Entry, Value)| {
            entries.get(entry).unwrap_or(&Value::Absent) == expected
        };
        if !change.expect.iter().all(holds) {
            return Ok(Applied::Conflict);
        }
        for (entry, value) in change.writes {
            match value {
                Value::Absent => entries.remove(&entry),
                value => entries.insert(entry, value),
            };
        }
        Ok(Applied::Done)
    }
}
