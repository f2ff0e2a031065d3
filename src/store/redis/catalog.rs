//! The catalog in Redis: one hash per kind of entry (a brand's definitions in a hash of their own), all
//! under the hash tag `{pxh:catalog}`, values as their JSON.
//!
//! A guarded change is one script: it compares each expected entry with the value stored, byte for
//! byte, and writes only if all of them hold. The bytes compare because a value is stored as
//! `serde_json` writes it and read back into the same type: written again, it is the same bytes (its
//! maps are ordered, its fields in declaration order).

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RedisStore, backend};
use crate::api_key::ApiKeyRecord;
use crate::brand::SecretKind;
use crate::definition::Definition;
use crate::ids::BrandId;
use crate::store::StoreError;
use crate::store::catalog::{Applied, Catalog, Change, Entry, Value};

/// Brands, by id.
pub(super) const BRANDS: &str = "{pxh:catalog}:brands";
/// Secrets, by `<brand>:<kind>`.
const SECRETS: &str = "{pxh:catalog}:secrets";
/// API keys, by their public id (unique across brands).
const API_KEYS: &str = "{pxh:catalog}:api-keys";
/// Brands' tallies of parameter names seen, by brand id.
const PARAMS_SEEN: &str = "{pxh:catalog}:params-seen";

/// The hash holding a brand's definitions, by definition id.
fn definitions_key(brand: &BrandId) -> String {
    format!("{{pxh:catalog}}:definitions:{}", brand.as_str())
}

/// Where an entry lives: its hash and its field there.
pub(super) fn address(entry: &Entry) -> (String, String) {
    match entry {
        Entry::Brand(brand) => (BRANDS.into(), brand.as_str().into()),
        Entry::Secret(brand, kind) => {
            let kind = match kind {
                SecretKind::Inbound => "inbound",
                SecretKind::Signing => "signing",
            };
            (SECRETS.into(), format!("{}:{kind}", brand.as_str()))
        }
        Entry::Definition(brand, id) => (definitions_key(brand), id.as_str().into()),
        Entry::ApiKey(id) => (API_KEYS.into(), id.clone()),
        Entry::ParamsSeen(brand) => (PARAMS_SEEN.into(), brand.as_str().into()),
    }
}

/// A value as the script sees it: empty for absent, else `=` and its JSON (so an empty JSON string
/// could never pass for an absent entry).
fn tagged(value: &Value) -> Result<Vec<u8>, StoreError> {
    fn json(value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
        let mut out = b"=".to_vec();
        serde_json::to_writer(&mut out, value)
            .map_err(|_| StoreError::corrupt("a catalog value would not encode"))?;
        Ok(out)
    }
    match value {
        Value::Absent => Ok(Vec::new()),
        Value::Brand(brand) => json(brand),
        Value::Secret(secret) => json(secret),
        Value::Definition(definition) => json(definition),
        Value::ApiKey(key) => json(key),
        Value::ParamsSeen(seen) => json(seen),
    }
}

/// Reads a stored value back as the kind its entry holds.
fn decode(entry: &Entry, stored: Option<Vec<u8>>) -> Result<Value, StoreError> {
    let Some(bytes) = stored else {
        return Ok(Value::Absent);
    };
    Ok(match entry {
        Entry::Brand(_) => Value::Brand(parse(&bytes)?),
        Entry::Secret(..) => Value::Secret(parse(&bytes)?),
        Entry::Definition(..) => Value::Definition(Box::new(parse(&bytes)?)),
        Entry::ApiKey(_) => Value::ApiKey(parse(&bytes)?),
        Entry::ParamsSeen(_) => Value::ParamsSeen(parse(&bytes)?),
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|_| StoreError::corrupt("a catalog value would not decode"))
}

/// `ARGV`: how many of the items are expectations, then per item (expectations first, then writes)
/// the index of its hash in `KEYS`, its field and its tagged value. Returns 1 when written, 0 when an
/// expectation failed (nothing written).
const APPLY: &str = r#"#!lua
local expected = tonumber(ARGV[1])
local items = (#ARGV - 1) / 3
for i = 0, expected - 1 do
  local at = 2 + i * 3
  local stored = redis.call('HGET', KEYS[tonumber(ARGV[at])], ARGV[at + 1])
  if stored then stored = '=' .. stored else stored = '' end
  if stored ~= ARGV[at + 2] then return 0 end
end
for i = expected, items - 1 do
  local at = 2 + i * 3
  local key, field, value = KEYS[tonumber(ARGV[at])], ARGV[at + 1], ARGV[at + 2]
  if value == '' then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, string.sub(value, 2))
  end
end
return 1
"#;

/// [`APPLY`], its hash taken once rather than at every change.
static APPLY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY));

#[async_trait]
impl Catalog for RedisStore {
    async fn read(&self, entry: &Entry) -> Result<Value, StoreError> {
        let (key, field) = address(entry);
        let stored: Option<Vec<u8>> = self.conn().hget(key, field).await.map_err(backend)?;
        decode(entry, stored)
    }

    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        let stored: Vec<Vec<u8>> = self
            .conn()
            .hvals(definitions_key(brand))
            .await
            .map_err(backend)?;
        let mut found: Vec<Definition> = stored
            .iter()
            .map(|bytes| parse(bytes))
            .collect::<Result<_, _>>()?;
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        // Every key of every brand: a few each, read when a brand's keys are listed or revoked.
        let stored: Vec<Vec<u8>> = self.conn().hvals(API_KEYS).await.map_err(backend)?;
        let mut found = Vec::new();
        for bytes in &stored {
            let key: ApiKeyRecord = parse(bytes)?;
            if key.brand_id == *brand {
                found.push(key);
            }
        }
        Ok(found)
    }

    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        change.check()?;
        let mut invocation = APPLY_SCRIPT.prepare_invoke();
        let mut keys: Vec<String> = Vec::new();
        invocation.arg(change.expect.len());
        for (entry, value) in change.expect.iter().chain(&change.writes) {
            let (key, field) = address(entry);
            let index = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    invocation.key(&key);
                    keys.push(key);
                    keys.len() - 1
                }
            };
            invocation.arg(index + 1).arg(field).arg(tagged(value)?);
        }
        let written: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend)?;
        Ok(if written == 1 {
            Applied::Done
        } else {
            Applied::Conflict
        })
    }
}
