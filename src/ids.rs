//! Identifiers that cross the wire: brands, players, pixels, definitions, events and sessions.
//!
//! Brand, player and pixel ids arrive from strangers (URL paths, JSON bodies, WebSocket hellos) and end up in
//! storage keys, log fields and metric labels. They are validated once, here, into types that cannot hold
//! anything else, so no later layer has to wonder whether an id may contain a separator byte or a newline.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id accepted anywhere.
pub const MAX_ID_LEN: usize = 128;

/// Names one family of ids, so that a `PlayerId` can never be passed where a `BrandId` is expected.
pub trait IdKind: 'static {
    /// The field name used in error messages, e.g. `brand_id`.
    const FIELD: &'static str;
    /// The schema name in the OpenAPI document, e.g. `BrandId`.
    const SCHEMA: &'static str;
}

/// A validated id: 1–128 characters of `[A-Za-z0-9._:@-]`, other than `.` and `..`.
///
/// Backed by an `Arc<str>` because the same id is held by the hub's session map, every queued pixel and
/// every log span; cloning must be cheap.
pub struct Id<K> {
    value: Arc<str>,
    _kind: PhantomData<fn() -> K>,
}

/// The id rule, as error messages state it.
pub const ID_RULE: &str =
    "must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -, other than . and ..";

/// Lower-case hex of `bytes`: how tokens and digests are shown to people and put in URLs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret of `len` random bytes from the OS, as hex (admin and inbound tokens).
pub fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Why a string was refused as an id; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {}", ID_RULE)]
pub struct InvalidId {
    /// Which field was wrong, e.g. `player_id`.
    pub field: &'static str,
}

/// Whether `s` is a well-formed id. Exposed for callers that validate ids of their own (e.g. session ids).
/// `.` and `..` are refused: ids go into URL paths (a brand's inbound postback URLs), where they would
/// mean "this segment" and "the one above" and the URL would not reach the brand.
pub fn is_valid_id(s: &str) -> bool {
    is_stored_id(s) && !is_dot_segment(s)
}

/// Whether `s` is an id as earlier versions accepted them, `.` and `..` included: what stored data may
/// hold. Reading it back must never fail on an id that was valid when it was written.
fn is_stored_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// Whether a path segment or query value is `.` or `..`, which no id may be (see [`is_valid_id`]).
pub fn is_dot_segment(s: &str) -> bool {
    s == "." || s == ".."
}

impl<K: IdKind> Id<K> {
    /// Validates `s`; the only way to build an id from outside input.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if is_dot_segment(s) {
            return Err(InvalidId { field: K::FIELD });
        }
        Self::parse_stored(s)
    }

    /// Reads back an id from stored data: as [`Id::parse`], but `.` and `..`, which earlier versions
    /// accepted, are too. Input from callers never comes through here.
    pub fn parse_stored(s: &str) -> Result<Self, InvalidId> {
        if is_stored_id(s) {
            Ok(Self {
                value: Arc::from(s),
                _kind: PhantomData,
            })
        } else {
            Err(InvalidId { field: K::FIELD })
        }
    }

    /// The id as text; it never contains a NUL byte, which the store uses as a key separator.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            _kind: PhantomData,
        }
    }
}
impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<K> Eq for Id<K> {}
impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state)
    }
}
impl<K> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}
impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}
impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.value, f)
    }
}
impl<K> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}
/// Deserialised ids are read as stored ([`Id::parse_stored`]): stored records must always read back. The
/// places where serde reads caller input (path and query parameters) refuse `.` and `..` themselves.
impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_stored(&s).map_err(serde::de::Error::custom)
    }
}

/// Ids are documented in the OpenAPI document with the rule [`Id::parse`] enforces, so a client generated
/// from it can validate before calling.
impl<K: IdKind> utoipa::PartialSchema for Id<K> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .pattern(Some(ID_PATTERN))
            .description(Some(format!("An id; {ID_RULE}.")))
            .into()
    }
}
impl<K: IdKind> utoipa::ToSchema for Id<K> {
    fn name() -> std::borrow::Cow<'static, str> {
        K::SCHEMA.into()
    }
}

/// [`is_valid_id`] as a regular expression, for the OpenAPI document.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:@-]+$";

macro_rules! id_kind {
    ($(#[$doc:meta])* $alias:ident, $tag:ident, $field:literal) => {
        #[doc(hidden)]
        #[derive(Debug)]
        pub enum $tag {}
        impl IdKind for $tag {
            const FIELD: &'static str = $field;
            const SCHEMA: &'static str = stringify!($alias);
        }
        $(#[$doc])*
        pub type $alias = Id<$tag>;
    };
}

id_kind!(
    /// A brand (casino or sportsbook site); the unit of configuration and of stats.
    BrandId, BrandTag, "brand_id"
);
id_kind!(
    /// A player as the brand knows them; only meaningful together with a brand.
    PlayerId, PlayerTag, "player_id"
);
id_kind!(
    /// A pixel: generated by the hub, or the caller's idempotency key, unique within one player's queue.
    PixelId, PixelTag, "id"
);

id_kind!(
    /// A pixel definition of a brand: the rule that turns events into pixels.
    DefinitionId, DefinitionTag, "definition_id"
);
id_kind!(
    /// An event the brand reported; its idempotency key, unique within the brand.
    EventId, EventTag, "event_id"
);

impl<K: IdKind> Id<K> {
    /// A fresh id for something the caller did not name. UUIDv7 sorts by creation time, which keeps ids in
    /// logs and reports roughly in creation order.
    pub fn generate() -> Self {
        let mut text = [0u8; uuid::fmt::Simple::LENGTH];
        let id = next_v7().simple().encode_lower(&mut text);
        Self {
            value: Arc::from(&*id),
            _kind: PhantomData,
        }
    }
}

/// The last id stamp handed out: the Unix millisecond, shifted left 12 bits, plus a counter.
static LAST_STAMP: AtomicU64 = AtomicU64::new(0);

/// Random bytes from the OS taken per `getrandom` call for ids: uuid's own generator makes one call per
/// id, some 6% of the hub's CPU while it queues batches of a hundred pixels.
const RANDOM_BLOCK: usize = 4096;

thread_local! {
    /// This thread's unused random bytes for ids, and where they start.
    static RANDOM: RefCell<(usize, [u8; RANDOM_BLOCK])> = const { RefCell::new((RANDOM_BLOCK, [0; RANDOM_BLOCK])) };
}

/// A UUIDv7: the Unix millisecond, a 12-bit counter so the ids of one millisecond sort in the order
/// they were made (RFC 9562, 6.2, method 1; past 4,096 in one millisecond the time part runs ahead
/// rather than wrap), and 62 random bits. The time in an id only orders ids and no rule reads it, so
/// it is the system's clock, not the hub's injectable one.
fn next_v7() -> uuid::Uuid {
    let now_ms = crate::clock::system_now_ms();
    let next = |last: u64| (now_ms << 12).max(last + 1);
    let last = LAST_STAMP
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(next(last))
        })
        .unwrap_or_else(|last| last);
    let stamp = next(last);
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&((stamp & 0xFFF) as u16).to_be_bytes());
    RANDOM.with_borrow_mut(|(at, block)| {
        if *at + 8 > RANDOM_BLOCK {
            getrandom::fill(block).expect("the OS gives random bytes");
            *at = 0;
        }
        bytes[2..].copy_from_slice(&block[*at..*at + 8]);
        *at += 8;
    });
    uuid::Builder::from_unix_timestamp_millis(stamp >> 12, &bytes).into_uuid()
}

/// One player's queue: the unit of ordering, of leasing and of delivery.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlayerKey {
    /// The brand the player belongs to.
    pub brand: BrandId,
    /// The player within that brand.
    pub player: PlayerId,
}

impl PlayerKey {
    /// Pairs a brand with one of its players.
    pub fn new(brand: BrandId, player: PlayerId) -> Self {
        Self { brand, player }
    }
}

impl fmt::Debug for PlayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.brand, self.player)
    }
}

/// Names one WebSocket connection everywhere it matters: in leases (so an ack or a release can be matched
/// to the connection that holds a player's queue, even across processes) and in log spans.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(uuid::Uuid);

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    /// As written ([`SessionId`]'s `Display`): a shared engine keeps leases by it.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        uuid::Uuid::parse_str(&text)
            .map(SessionId)
            .map_err(serde::de::Error::custom)
    }
}

impl SessionId {
    /// A new, globally unique session id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.simple(), f)
    }
}
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v7_unique_and_in_the_order_made() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| PixelId::generate()).collect()))
            .collect();
        let mut all = Vec::new();
        for made in threads {
            let made: Vec<PixelId> = made.join().unwrap();
            // More than 4,096 a millisecond on one thread still sort as made.
            assert!(made.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
            all.extend(made);
        }
        let id = uuid::Uuid::parse_str(all[0].as_str()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert!(now_ms.abs_diff(secs * 1000 + u64::from(nanos) / 1_000_000) < 60_000);
        let count = all.len();
        all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        all.dedup_by(|a, b| a.as_str() == b.as_str());
        assert_eq!(all.len(), count, "no two alike");
        // The random part is random: the low 62 bits of two ids of one millisecond differ.
        let low =
            |id: &PixelId| uuid::Uuid::parse_str(id.as_str()).unwrap().as_u128() & ((1 << 62) - 1);
        assert_ne!(low(&all[0]), low(&all[1]));
    }

    #[test]
    fn accepts_the_documented_alphabet_and_rejects_everything_else() {
        assert!(BrandId::parse("12345").is_ok());
        assert!(PlayerId::parse("user.name_1:x@example-com").is_ok());
        assert!(PlayerId::parse(&"a".repeat(128)).is_ok());

        assert!(BrandId::parse("...").is_ok() && BrandId::parse(".a").is_ok());
        for bad in [
            "", " ", "a b", "a/b", "a\0b", "é", "a?b", "a#b", "a%20", ".", "..",
        ] {
            assert_eq!(
                PlayerId::parse(bad).unwrap_err(),
                InvalidId { field: "player_id" },
                "{bad:?}"
            );
        }
        assert!(PlayerId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn generated_pixel_ids_are_valid_ids() {
        let id = PixelId::generate();
        assert!(is_valid_id(id.as_str()));
        assert_ne!(id, PixelId::generate());
    }
}
