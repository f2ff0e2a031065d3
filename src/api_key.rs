//! Brand API keys: credentials that act for one brand only.
//!
//! A key reads `phk_<id>_<secret>`: the id (16 hex) finds the stored record, the secret (64 hex, 256 random
//! bits) proves possession. Only the SHA-256 of the whole key is stored, so the store, its backups and its
//! logs never hold a usable key; a key is shown once, when it is created. With that much entropy a plain
//! SHA-256 is enough: there is nothing to guess, so a slow password hash would only cost every request.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{BrandId, hex, random_hex};

/// What every key starts with, so a leaked one is recognisable (and secret scanners can find it).
pub const PREFIX: &str = "phk_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A key just made: the record to store, and the key to show once.
pub struct NewKey {
    /// What the store keeps.
    pub record: ApiKeyRecord,
    /// The key itself; never stored.
    pub key: String,
}

/// Makes a key for `brand`, created at `now_ms`.
pub fn generate(
    brand: &BrandId,
    name: Option<String>,
    now_ms: u64,
) -> Result<NewKey, getrandom::Error> {
    let id = random_hex(ID_HEX / 2)?;
    let key = format!("{PREFIX}{id}_{}", random_hex(SECRET_HEX / 2)?);
    let record = ApiKeyRecord {
        hash: digest(&key),
        id,
        brand_id: brand.clone(),
        name,
        created_at_ms: now_ms,
    };
    Ok(NewKey { record, key })
}

/// The id inside `presented`, when it has the shape of a key.
pub fn id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_HEX) && hex_of(secret, SECRET_HEX)).then_some(id)
}

/// Whether `presented` is the key `record` was made for, compared in constant time.
pub fn matches(record: &ApiKeyRecord, presented: &str) -> bool {
    bool::from(digest(presented).as_bytes().ct_eq(record.hash.as_bytes()))
}

/// A key as people may see it after creation: enough to tell keys apart, nothing to use.
pub fn shown(record: &ApiKeyRecord) -> String {
    format!("{PREFIX}{}_…", record.id)
}

fn digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// A brand API key as stored: never the key itself, only its SHA-256, so a copy of the store gives no
/// access. The key is shown once, when it is created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id, the middle part of the key (`phk_<id>_<secret>`); how the key is found and revoked.
    pub id: String,
    /// The brand the key may act for, and no other.
    pub brand_id: BrandId,
    /// What the key is for, for people.
    pub name: Option<String>,
    /// Unix milliseconds of creation.
    pub created_at_ms: u64,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_matches_its_record_and_nothing_else() {
        let brand = BrandId::parse("12345").unwrap();
        let NewKey { record, key } = generate(&brand, Some("back end".into()), 1).unwrap();
        assert_eq!(id_of(&key), Some(record.id.as_str()));
        assert!(matches(&record, &key));
        assert!(
            !key.contains(&record.hash),
            "the stored hash is not the key"
        );
        let mut tampered = key.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(!matches(&record, &tampered));
        assert_eq!(shown(&record), format!("phk_{}_…", record.id));
    }

    #[test]
    fn only_the_key_shape_has_an_id() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        assert_eq!(id_of(&format!("phk_{id}_{secret}")), Some(id));
        assert_eq!(id_of(&format!("phk_{id}{secret}")), None);
        assert_eq!(id_of(&format!("phk_{id}_{}", &secret[1..])), None);
        assert_eq!(id_of(&format!("pk_{id}_{secret}")), None);
        assert_eq!(id_of(&format!("phk_{}_{secret}", "z".repeat(16))), None);
        assert_eq!(id_of("an admin token of some length"), None);
    }
}
