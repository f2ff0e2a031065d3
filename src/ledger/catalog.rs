//! The catalog's rules: what a brand, its secrets, its definitions and its API keys may become.
//!
//! Every change is read, decided and written with the read values as its expectations
//! ([`crate::store::catalog::Change`]); when another writer got there first, the change is decided again
//! on what is there now. So nothing a concurrent request wrote is ever lost, on one process or many.

use super::{Ledger, MAX_ROUNDS};
use crate::api_key::ApiKeyRecord;
use crate::brand::{Brand, BrandSecret, BrandSettings, SecretKind};
use crate::definition::{Definition, DefinitionInput};
use crate::ids::{BrandId, DefinitionId};
use crate::store::StoreError;
use crate::store::catalog::{Applied, Change, Entry, Value};

/// Both kinds of secret: each brand is created with one of each.
const SECRET_KINDS: [SecretKind; 2] = [SecretKind::Inbound, SecretKind::Signing];

/// The answer when a change lost every round to other writers.
pub(super) fn contended(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} kept changing under this request ({MAX_ROUNDS} tries); retry"
    ))
}

impl Ledger {
    /// A brand, if it exists.
    pub async fn brand(&self, id: &BrandId) -> Result<Option<Brand>, StoreError> {
        match self.catalog().read(&Entry::Brand(id.clone())).await? {
            Value::Brand(brand) => Ok(Some(*brand)),
            _ => Ok(None),
        }
    }

    /// [`StoreError::UnknownBrand`] unless the brand exists; from memory once it was seen to.
    pub(super) async fn check_brand(&self, id: &BrandId) -> Result<(), StoreError> {
        if !self.inner.known_brands.contains(id) {
            self.require_brand(id).await?;
        }
        Ok(())
    }

    /// A brand, or [`StoreError::UnknownBrand`].
    pub async fn require_brand(&self, id: &BrandId) -> Result<Brand, StoreError> {
        let brand = self
            .brand(id)
            .await?
            .ok_or_else(|| StoreError::UnknownBrand(id.clone()))?;
        self.inner.known_brands.insert(id.clone());
        Ok(brand)
    }

    /// Creates a brand with `settings`, or replaces the settings of an existing one (its creation time and
    /// secrets stay). Durable when it returns; says whether it created the brand.
    pub async fn put_brand(
        &self,
        id: &BrandId,
        settings: BrandSettings,
    ) -> Result<(Brand, bool), StoreError> {
        for _ in 0..MAX_ROUNDS {
            let old = self.brand(id).await?;
            let now = self.now_ms();
            let brand = Brand {
                id: id.clone(),
                settings: settings.clone(),
                created_at_ms: old.as_ref().map_or(now, |b| b.created_at_ms),
                updated_at_ms: now,
            };
            let mut change = Change::default()
                .expect(
                    Entry::Brand(id.clone()),
                    old.clone()
                        .map_or(Value::Absent, |b| Value::Brand(Box::new(b))),
                )
                .write(
                    Entry::Brand(id.clone()),
                    Value::Brand(Box::new(brand.clone())),
                );
            for kind in SECRET_KINDS {
                let entry = Entry::Secret(id.clone(), kind);
                if self.catalog().read(&entry).await? == Value::Absent {
                    change = change
                        .expect(entry.clone(), Value::Absent)
                        .write(entry, Value::Secret(BrandSecret::new(None, now)));
                }
            }
            if self.catalog().apply(change).await? == Applied::Done {
                self.inner.known_brands.insert(id.clone());
                return Ok((brand, old.is_none()));
            }
        }
        Err(contended("the brand"))
    }

    /// Changes a brand's settings to what `patch` makes of the current ones. `patch` may run more than
    /// once (when another writer changed the brand meanwhile), each time on the brand as it is then, so
    /// a concurrent change is never overwritten.
    pub async fn patch_brand<E: From<StoreError>>(
        &self,
        id: &BrandId,
        patch: impl Fn(&Brand) -> Result<BrandSettings, E>,
    ) -> Result<Brand, E> {
        for _ in 0..MAX_ROUNDS {
            let old = self.require_brand(id).await?;
            let brand = Brand {
                settings: patch(&old)?,
                updated_at_ms: self.now_ms(),
                ..old.clone()
            };
            let change = Change::default()
                .expect(Entry::Brand(id.clone()), Value::Brand(Box::new(old)))
                .write(
                    Entry::Brand(id.clone()),
                    Value::Brand(Box::new(brand.clone())),
                );
            if self.catalog().apply(change).await? == Applied::Done {
                return Ok(brand);
            }
        }
        Err(contended("the brand").into())
    }

    /// The brand as it is now, provided its pixel policy allows the pixel of `input`; a definition
    /// written expects the brand to be still this, so a policy tightened meanwhile is decided again.
    async fn allowing(
        &self,
        brand: &BrandId,
        input: &DefinitionInput,
    ) -> Result<Brand, StoreError> {
        let owner = self.require_brand(brand).await?;
        input
            .action
            .check(owner.settings.pixel_policy())
            .map_err(|refusal| StoreError::NotAllowed(refusal.at("definition")))?;
        Ok(owner)
    }

    /// The brand's definitions, in id order.
    pub async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        self.check_brand(brand).await?;
        self.catalog().definitions(brand).await
    }

    /// One definition, if the brand has it; [`StoreError::UnknownBrand`] for a brand that does not exist.
    pub async fn definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
    ) -> Result<Option<Definition>, StoreError> {
        self.check_brand(brand).await?;
        self.read_definition(brand, id).await
    }

    async fn read_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
    ) -> Result<Option<Definition>, StoreError> {
        match self
            .catalog()
            .read(&Entry::Definition(brand.clone(), id.clone()))
            .await?
        {
            Value::Definition(definition) => Ok(Some(*definition)),
            _ => Ok(None),
        }
    }

    /// Saves a new definition under the caller's id or a generated one. Fails with
    /// [`StoreError::DefinitionExists`] when the id is taken, and [`StoreError::NotAllowed`] when the
    /// brand's pixel policy does not allow its pixel (the policy as it is when the definition is written).
    /// Its postback health starts afresh.
    pub async fn create_definition(
        &self,
        brand: &BrandId,
        input: DefinitionInput,
    ) -> Result<Definition, StoreError> {
        let id = input.id.clone().unwrap_or_else(DefinitionId::generate);
        let entry = Entry::Definition(brand.clone(), id.clone());
        for _ in 0..MAX_ROUNDS {
            let owner = self.allowing(brand, &input).await?;
            let now = self.now_ms();
            let definition = input.clone().into_definition(id.clone(), now, now);
            let change = Change::default()
                .expect(Entry::Brand(brand.clone()), Value::Brand(Box::new(owner)))
                .expect(entry.clone(), Value::Absent)
                .write(
                    entry.clone(),
                    Value::Definition(Box::new(definition.clone())),
                );
            if self.catalog().apply(change).await? == Applied::Done {
                self.reset_health(brand, &id).await?;
                return Ok(definition);
            }
            if self.read_definition(brand, &id).await?.is_some() {
                return Err(StoreError::DefinitionExists(id));
            }
        }
        Err(contended("the brand"))
    }

    /// Replaces a definition whole, keeping its id and creation time; its postback health starts
    /// afresh and `disabled_reason` is cleared. [`StoreError::UnknownDefinition`] when there is none,
    /// [`StoreError::NotAllowed`] when the brand's pixel policy does not allow its pixel.
    pub async fn replace_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
        input: DefinitionInput,
    ) -> Result<Definition, StoreError> {
        self.patch_definition(brand, id, |_| Ok::<_, StoreError>(input.clone()))
            .await
    }

    /// Replaces a definition with what `patch` makes of the current one (the whole input a `PUT` would
    /// carry), like [`Ledger::replace_definition`]. `patch` may run more than once, each time on the
    /// definition as it is then, so a concurrent change is never overwritten.
    pub async fn patch_definition<E: From<StoreError>>(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
        patch: impl Fn(&Definition) -> Result<DefinitionInput, E>,
    ) -> Result<Definition, E> {
        self.check_brand(brand).await?;
        let entry = Entry::Definition(brand.clone(), id.clone());
        for _ in 0..MAX_ROUNDS {
            let old = self
                .read_definition(brand, id)
                .await?
                .ok_or_else(|| StoreError::UnknownDefinition(id.clone()))?;
            let input = patch(&old)?;
            let owner = self.allowing(brand, &input).await?;
            let definition = input.into_definition(id.clone(), old.created_at_ms, self.now_ms());
            let change = Change::default()
                .expect(Entry::Brand(brand.clone()), Value::Brand(Box::new(owner)))
                .expect(entry.clone(), Value::Definition(Box::new(old)))
                .write(
                    entry.clone(),
                    Value::Definition(Box::new(definition.clone())),
                );
            if self.catalog().apply(change).await? == Applied::Done {
                // The brand has looked at it again: failures before this count no more.
                self.reset_health(brand, id).await?;
                return Ok(definition);
            }
        }
        Err(contended("the definition").into())
    }

    /// Deletes a definition (with its postback health); false when there was none. Pixels and
    /// postbacks it already produced stay.
    pub async fn delete_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
    ) -> Result<bool, StoreError> {
        self.check_brand(brand).await?;
        let entry = Entry::Definition(brand.clone(), id.clone());
        for _ in 0..MAX_ROUNDS {
            let Some(old) = self.read_definition(brand, id).await? else {
                return Ok(false);
            };
            let change = Change::default()
                .expect(entry.clone(), Value::Definition(Box::new(old)))
                .write(entry.clone(), Value::Absent);
            if self.catalog().apply(change).await? == Applied::Done {
                self.reset_health(brand, id).await?;
                return Ok(true);
            }
        }
        Err(contended("the definition"))
    }

    /// Turns a definition off, saying why (shown with it); false when there is none or it is off
    /// already.
    pub async fn disable_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
        reason: String,
    ) -> Result<bool, StoreError> {
        let entry = Entry::Definition(brand.clone(), id.clone());
        for _ in 0..MAX_ROUNDS {
            let Some(old) = self.read_definition(brand, id).await? else {
                return Ok(false);
            };
            if !old.enabled {
                return Ok(false);
            }
            let definition = Definition {
                enabled: false,
                disabled_reason: Some(reason.clone()),
                updated_at_ms: self.now_ms(),
                ..old.clone()
            };
            let change = Change::default()
                .expect(entry.clone(), Value::Definition(Box::new(old)))
                .write(entry.clone(), Value::Definition(Box::new(definition)));
            if self.catalog().apply(change).await? == Applied::Done {
                return Ok(true);
            }
        }
        Err(contended("the definition"))
    }

    /// One of the brand's secrets (each is made with the brand).
    pub async fn secret(
        &self,
        brand: &BrandId,
        kind: SecretKind,
    ) -> Result<BrandSecret, StoreError> {
        match self
            .catalog()
            .read(&Entry::Secret(brand.clone(), kind))
            .await?
        {
            Value::Secret(secret) => Ok(secret),
            _ => {
                self.check_brand(brand).await?;
                Err(StoreError::corrupt("a brand without its secrets"))
            }
        }
    }

    /// Replaces one of the brand's secrets with a new random one; the old one is still accepted for
    /// `grace_ms` (not at all for 0).
    pub async fn rotate_secret(
        &self,
        brand: &BrandId,
        kind: SecretKind,
        grace_ms: u64,
    ) -> Result<BrandSecret, StoreError> {
        let entry = Entry::Secret(brand.clone(), kind);
        for _ in 0..MAX_ROUNDS {
            let old = self.secret(brand, kind).await?;
            let now = self.now_ms();
            let previous = (grace_ms > 0).then(|| (old.current.clone(), now + grace_ms));
            let secret = BrandSecret::new(previous, now);
            let change = Change::default()
                .expect(entry.clone(), Value::Secret(old))
                .write(entry.clone(), Value::Secret(secret.clone()));
            if self.catalog().apply(change).await? == Applied::Done {
                return Ok(secret);
            }
        }
        Err(contended("the secret"))
    }

    /// Saves a new brand API key; [`StoreError::UnknownBrand`] for a brand that does not exist.
    pub async fn create_api_key(&self, key: ApiKeyRecord) -> Result<(), StoreError> {
        self.check_brand(&key.brand_id).await?;
        let entry = Entry::ApiKey(key.id.clone());
        let change = Change::default()
            .expect(entry.clone(), Value::Absent)
            .write(entry, Value::ApiKey(key));
        match self.catalog().apply(change).await? {
            Applied::Done => Ok(()),
            // 64 random bits: a collision is a broken random source, not bad luck.
            Applied::Conflict => Err(StoreError::corrupt("an API key id was generated twice")),
        }
    }

    /// The key with this id, of any brand: how a presented key is checked.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.catalog().read(&Entry::ApiKey(id.to_owned())).await? {
            Value::ApiKey(record) => Ok(Some(record)),
            _ => Ok(None),
        }
    }

    /// The brand's keys, oldest first.
    pub async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.check_brand(brand).await?;
        let mut keys = self.catalog().api_keys(brand).await?;
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(keys)
    }

    /// Deletes one of the brand's keys; it stops working at once. False when the brand has no such key
    /// (another brand's key of that id included).
    pub async fn revoke_api_key(&self, brand: &BrandId, id: &str) -> Result<bool, StoreError> {
        self.check_brand(brand).await?;
        let entry = Entry::ApiKey(id.to_owned());
        for _ in 0..MAX_ROUNDS {
            let Some(record) = self.api_key(id).await?.filter(|r| r.brand_id == *brand) else {
                return Ok(false);
            };
            let change = Change::default()
                .expect(entry.clone(), Value::ApiKey(record))
                .write(entry.clone(), Value::Absent);
            if self.catalog().apply(change).await? == Applied::Done {
                return Ok(true);
            }
        }
        Err(contended("the key"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::clock::ManualClock;
    use crate::metrics::Metrics;
    use crate::store::catalog::Catalog;
    use crate::store::memory::MemoryStore;
    use crate::store::{SledOptions, SledStore};

    /// A catalog where another writer changes the brand between the ledger's read and its first write,
    /// as a concurrent request (or another hub process) can.
    struct Meddler {
        catalog: MemoryStore,
        meddled: AtomicBool,
    }

    #[async_trait]
    impl Catalog for Meddler {
        async fn read(&self, entry: &Entry) -> Result<Value, StoreError> {
            self.catalog.read(entry).await
        }

        async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
            self.catalog.definitions(brand).await
        }

        async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
            self.catalog.api_keys(brand).await
        }

        async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
            if !self.meddled.swap(true, Ordering::SeqCst) {
                let entry = Entry::Brand(BrandId::parse("b").unwrap());
                let Value::Brand(mut brand) = self.catalog.read(&entry).await? else {
                    panic!("the brand exists")
                };
                brand.settings.https_only = true;
                let theirs = Change::default().write(entry, Value::Brand(brand));
                assert_eq!(self.catalog.apply(theirs).await?, Applied::Done);
            }
            self.catalog.apply(change).await
        }
    }

    /// A ledger over a [`Meddler`] (queues on sled), with brand `b` made and the meddler not yet armed.
    async fn meddled_ledger(dir: &std::path::Path) -> (Ledger, Arc<Meddler>, BrandId) {
        let clock = ManualClock::starting_now();
        let options = SledOptions {
            cache_bytes: 1 << 20,
            journal_segment_bytes: 1 << 20,
            metrics: Arc::new(Metrics::new()),
            clock: clock.clone(),
        };
        let queues = Arc::new(SledStore::open(dir, options).unwrap());
        let meddler = Arc::new(Meddler {
            catalog: MemoryStore::new(crate::clock::system()),
            meddled: AtomicBool::new(true),
        });
        let engines = crate::ledger::Engines {
            catalog: meddler.clone(),
            queues: queues.clone(),
            store: queues,
        };
        let options = crate::ledger::Options::default();
        let ledger = Ledger::new(engines, options, Arc::new(Metrics::new()), clock);
        let id = BrandId::parse("b").unwrap();
        ledger
            .put_brand(&id, BrandSettings::default())
            .await
            .unwrap();
        (ledger, meddler, id)
    }

    #[tokio::test]
    async fn a_patch_never_overwrites_a_change_made_while_it_was_decided() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, meddler, id) = meddled_ledger(dir.path()).await;

        meddler.meddled.store(false, Ordering::SeqCst);
        let rounds = std::sync::atomic::AtomicUsize::new(0);
        let renamed = ledger
            .patch_brand(&id, |brand| {
                rounds.fetch_add(1, Ordering::SeqCst);
                Ok::<_, StoreError>(BrandSettings {
                    name: Some("renamed".into()),
                    ..brand.settings.clone()
                })
            })
            .await
            .unwrap();
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            2,
            "decided again on the brand as the other writer left it"
        );
        assert_eq!(renamed.settings.name.as_deref(), Some("renamed"));
        assert!(
            renamed.settings.https_only,
            "the other writer's change stays"
        );
        assert_eq!(ledger.brand(&id).await.unwrap(), Some(renamed));
    }

    #[tokio::test]
    async fn a_definition_is_held_to_the_policy_its_brand_has_when_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, meddler, id) = meddled_ledger(dir.path()).await;
        let http = || {
            crate::definition::parse_definition(
                serde_json::json!({"id": "d", "name": "FTD", "trigger": "ftd", "kind": "image", "url": "http://px.example/"}),
                true,
            )
            .unwrap()
        };

        // The brand turns https_only on after the ledger read it, before the definition is written.
        meddler.meddled.store(false, Ordering::SeqCst);
        let refused = ledger.create_definition(&id, http()).await.unwrap_err();
        let StoreError::NotAllowed(why) = refused else {
            panic!("refused by the policy, not {refused:?}")
        };
        assert_eq!(
            (why.code, why.path.as_str()),
            ("https_required", "definition.url")
        );
        assert_eq!(ledger.definitions(&id).await.unwrap(), vec![]);

        // What the brand allows is written.
        let https = crate::definition::parse_definition(
            serde_json::json!({"id": "d", "name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://px.example/"}),
            true,
        )
        .unwrap();
        ledger.create_definition(&id, https).await.unwrap();
        let refused = ledger
            .replace_definition(&id, &DefinitionId::parse("d").unwrap(), http())
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::NotAllowed(_)), "{refused:?}");
    }
}
