//! The embedded engine's catalog: brands (`b`), secrets, definitions (`d`) and API keys (`a`, with the
//! brand's index `o`) in the one `data` tree, written under one lock and made durable by the journal.
//!
//! Entries read are kept in memory until they are written ([`Inner::catalog_cache`]): every request
//! reads its brand, and every session its brand's signing secret, so a read from memory saves each one
//! a trip to a store thread and a JSON parse. sled is one process's (it locks its directory), so no
//! other writer can make the copy stale.

use async_trait::async_trait;

use super::{Changes, Inner, SledStore, backend, json, keys, lock};
use crate::api_key::ApiKeyRecord;
use crate::definition::Definition;
use crate::ids::BrandId;
use crate::store::StoreError;
use crate::store::catalog::{Applied, Catalog, Change, Entry, Value};

impl Inner {
    /// Where an entry is stored.
    fn entry_key(entry: &Entry) -> Vec<u8> {
        match entry {
            Entry::Brand(brand) => keys::brand(brand),
            Entry::Secret(brand, kind) => keys::secret(*kind, brand),
            Entry::Definition(brand, id) => keys::definition(brand, id),
            Entry::ApiKey(id) => keys::api_key(id),
            Entry::ParamsSeen(brand) => keys::params_seen(brand),
        }
    }

    fn read_entry(&self, entry: &Entry) -> Result<Value, StoreError> {
        let key = Self::entry_key(entry);
        Ok(match entry {
            Entry::Brand(_) => self.read(&key)?.map(Value::Brand),
            Entry::Secret(..) => self.read(&key)?.map(Value::Secret),
            Entry::Definition(..) => self.read(&key)?.map(|d| Value::Definition(Box::new(d))),
            Entry::ApiKey(_) => self.read(&key)?.map(Value::ApiKey),
            Entry::ParamsSeen(_) => self.read(&key)?.map(Value::ParamsSeen),
        }
        .unwrap_or(Value::Absent))
    }

    /// Stages one write, with the index entries that go with it.
    fn stage_entry(&self, batch: &mut Changes, entry: &Entry, value: &Value) {
        let key = Self::entry_key(entry);
        match value {
            Value::Absent => batch.remove(key),
            Value::Brand(brand) => batch.insert(key, json(brand)),
            Value::Secret(secret) => batch.insert(key, json(secret)),
            Value::Definition(definition) => batch.insert(key, json(definition)),
            Value::ApiKey(record) => batch.insert(key, json(record)),
            Value::ParamsSeen(seen) => batch.insert(key, json(seen)),
        }
        if let (Entry::ApiKey(id), Value::ApiKey(record)) = (entry, value) {
            // The brand's index of its keys (a deleted key's index entry goes in `apply`, which reads
            // whose it was).
            batch.insert(keys::brand_api_key(&record.brand_id, id), &[]);
        }
    }
}

#[async_trait]
impl Catalog for SledStore {
    async fn read(&self, entry: &Entry) -> Result<Value, StoreError> {
        if let Some(value) = self.inner.catalog_cache.get(entry) {
            return Ok(value.clone());
        }
        let entry = entry.clone();
        self.blocking(move |inner| {
            // Under the lock writes take, so a value read before a write is never kept after it.
            let _guard = lock(&inner.catalog_lock);
            let value = inner.read_entry(&entry)?;
            // Absent entries are not kept: anyone may ask for any brand id.
            if value != Value::Absent {
                inner.catalog_cache.insert(entry, value.clone());
            }
            Ok(value)
        })
        .await
    }

    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        let brand = brand.clone();
        self.blocking(move |inner| inner.definitions(&brand)).await
    }

    async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let brand = brand.clone();
        self.blocking(move |inner| {
            let prefix = keys::brand_api_key(&brand, "");
            let mut found = Vec::new();
            for k in inner.log.scan_prefix(&prefix).keys() {
                let k = k?;
                let id = std::str::from_utf8(&k[prefix.len()..]).map_err(backend)?;
                if let Some(record) = inner.read::<ApiKeyRecord>(&keys::api_key(id))? {
                    found.push(record);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        change.check()?;
        let applied = self
            .blocking(move |inner| {
                inner.check_open()?;
                let _guard = lock(&inner.catalog_lock);
                for (entry, expected) in &change.expect {
                    if inner.read_entry(entry)? != *expected {
                        return Ok(None);
                    }
                }
                let mut batch = Changes::default();
                for (entry, value) in &change.writes {
                    if let (Entry::ApiKey(id), Value::Absent) = (entry, value)
                        && let Value::ApiKey(old) = inner.read_entry(entry)?
                    {
                        batch.remove(keys::brand_api_key(&old.brand_id, id));
                    }
                    inner.stage_entry(&mut batch, entry, value);
                }
                // Catalog entries only: nothing here needs `Inner::apply`'s queue bookkeeping.
                debug_assert!(batch.report_rows.is_empty() && batch.pending.is_empty());
                let durable = inner.log.commit(batch.ops, &[])?;
                for (entry, _) in &change.writes {
                    inner.catalog_cache.remove(entry);
                }
                Ok(Some(durable))
            })
            .await?;
        match applied {
            Some(durable) => durable.wait().await.map(|_| Applied::Done),
            None => Ok(Applied::Conflict),
        }
    }
}
