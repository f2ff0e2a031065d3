//! Key encoding for the `data` tree (the layout is in the engine's module docs): one function per table,
//! so no key is spelled out twice.

use super::*;

fn push_player(out: &mut Vec<u8>, key: &PlayerKey) {
    out.extend_from_slice(key.brand.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(key.player.as_str().as_bytes());
    out.push(0);
}

/// Bytes `brand NUL player NUL` takes.
fn player_len(key: &PlayerKey) -> usize {
    key.brand.as_str().len() + key.player.as_str().len() + 2
}

/// `tag brand NUL player NUL`, with room for `room` bytes more: every key is built in one allocation
/// (a key grown byte by byte is reallocated three or four times, on the hottest path of the engine).
fn player_table(tag: u8, key: &PlayerKey, room: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + player_len(key) + room);
    k.push(tag);
    push_player(&mut k, key);
    k
}

pub fn brand(brand: &BrandId) -> Vec<u8> {
    [b"b".as_slice(), brand.as_str().as_bytes()].concat()
}

pub fn parse_brand(k: &[u8]) -> Option<BrandId> {
    BrandId::parse_stored(std::str::from_utf8(k.strip_prefix(b"b")?).ok()?).ok()
}

/// `tag brand NUL`: the start of every key of that table for the brand.
fn brand_table(tag: u8, brand: &BrandId) -> Vec<u8> {
    brand_table_with_room(tag, brand, 0)
}

/// [`brand_table`] with room for `room` bytes more.
fn brand_table_with_room(tag: u8, brand: &BrandId, room: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + brand.as_str().len() + room);
    k.push(tag);
    k.extend_from_slice(brand.as_str().as_bytes());
    k.push(0);
    k
}

pub fn definition_prefix(brand: &BrandId) -> Vec<u8> {
    brand_table(b'd', brand)
}

pub fn definition(brand: &BrandId, id: &DefinitionId) -> Vec<u8> {
    [definition_prefix(brand), id.as_str().as_bytes().to_vec()].concat()
}

pub fn event(brand: &BrandId, id: &EventId) -> Vec<u8> {
    [brand_table(b'e', brand), id.as_str().as_bytes().to_vec()].concat()
}

pub fn health_prefix(brand: &BrandId) -> Vec<u8> {
    brand_table(b'h', brand)
}

pub fn health(brand: &BrandId, id: &DefinitionId) -> Vec<u8> {
    [health_prefix(brand), id.as_str().as_bytes().to_vec()].concat()
}

pub fn secret(kind: SecretKind, brand: &BrandId) -> Vec<u8> {
    let tag: &[u8] = match kind {
        SecretKind::Inbound => b"t",
        SecretKind::Signing => b"g",
    };
    [tag, brand.as_str().as_bytes()].concat()
}

/// A brand's tally of parameter names seen.
pub fn params_seen(brand: &BrandId) -> Vec<u8> {
    [b"f".as_slice(), brand.as_str().as_bytes()].concat()
}

pub fn api_key(id: &str) -> Vec<u8> {
    [b"a".as_slice(), id.as_bytes()].concat()
}

pub fn brand_api_key(brand: &BrandId, id: &str) -> Vec<u8> {
    [brand_table(b'o', brand), id.as_bytes().to_vec()].concat()
}

pub fn forget_event(due_ms: u64, brand: &BrandId, id: &EventId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 + brand.as_str().len() + 1 + id.as_str().len());
    k.push(b'y');
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(brand.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

pub fn parse_forget_event(k: &[u8]) -> Option<(BrandId, EventId)> {
    let rest = k.strip_prefix(b"y")?.get(8..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let brand = BrandId::parse_stored(std::str::from_utf8(&rest[..nul]).ok()?).ok()?;
    let id = EventId::parse_stored(std::str::from_utf8(&rest[nul + 1..]).ok()?).ok()?;
    Some((brand, id))
}

/// `n`: a player's pending summary.
pub fn summary(key: &PlayerKey) -> Vec<u8> {
    player_table(b'n', key, 0)
}

/// The player of a brand's and a player's id as stored in a key.
fn player_key(brand: &[u8], player: &[u8]) -> Option<PlayerKey> {
    let brand = BrandId::parse_stored(std::str::from_utf8(brand).ok()?).ok()?;
    let player = PlayerId::parse_stored(std::str::from_utf8(player).ok()?).ok()?;
    Some(PlayerKey::new(brand, player))
}

/// Splits `brand NUL player`.
fn parse_player(ids: &[u8]) -> Option<PlayerKey> {
    let nul = ids.iter().position(|&b| b == 0)?;
    player_key(&ids[..nul], &ids[nul + 1..])
}

/// The player a summary key `n` is of.
pub fn parse_summary(k: &[u8]) -> Option<PlayerKey> {
    parse_player(k.strip_prefix(b"n")?.strip_suffix(&[0])?)
}

/// `p brand NUL queued-at player NUL seq`: a pending pixel's age key in data dirs written before the
/// pending summaries; removed when that pixel ends.
pub fn legacy_age(key: &PlayerKey, queued_at_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = brand_table(b'p', &key.brand);
    k.extend_from_slice(&queued_at_ms.to_be_bytes());
    k.extend_from_slice(key.player.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn index_prefix(key: &PlayerKey) -> Vec<u8> {
    index_table(key, 0)
}

/// [`index_prefix`] with room for `room` bytes more.
fn index_table(key: &PlayerKey, room: usize) -> Vec<u8> {
    player_table(b'i', key, room)
}

pub fn report_prefix(brand: &BrandId) -> Vec<u8> {
    report_table(brand, 0)
}

/// [`report_prefix`] with room for `room` bytes more.
fn report_table(brand: &BrandId, room: usize) -> Vec<u8> {
    brand_table_with_room(b'r', brand, room)
}

/// `r brand NUL queued-at player NUL`: the report rows of every record of the player queued at that
/// millisecond, in one key ([`super::report::Bucket`]): a batch of a hundred pixels is one sled key
/// for the report, not a hundred.
pub fn report_bucket(key: &PlayerKey, queued_at_ms: u64) -> Vec<u8> {
    let mut k = report_table(&key.brand, 8 + key.player.as_str().len() + 1);
    k.extend_from_slice(&queued_at_ms.to_be_bytes());
    k.extend_from_slice(key.player.as_str().as_bytes());
    k.push(0);
    k
}

/// `r brand NUL queued-at player NUL id`: one record's report row in a key of its own, where its
/// bucket is full ([`super::report::MAX_BUCKET_ROWS`]) or was written before buckets; also the bound a
/// report page's cursor stands for.
pub fn report(key: &PlayerKey, queued_at_ms: u64, id: &PixelId) -> Vec<u8> {
    report_own(&report_bucket(key, queued_at_ms), id)
}

/// The key of its own a row of the bucket `bucket` ([`report_bucket`]) has.
pub fn report_own(bucket: &[u8], id: &PixelId) -> Vec<u8> {
    [bucket, id.as_str().as_bytes()].concat()
}

/// Splits `brand NUL player NUL id`.
fn parse_player_id(rest: &[u8]) -> Option<(PlayerKey, PixelId)> {
    let mut parts = rest.splitn(3, |&b| b == 0);
    let key = player_key(parts.next()?, parts.next()?)?;
    let id = PixelId::parse_stored(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    Some((key, id))
}

/// Splits a report key into player, queued-at and id: the id of a single row, `None` for a bucket.
pub fn parse_report(k: &[u8]) -> Option<(PlayerKey, u64, Option<PixelId>)> {
    let rest = k.strip_prefix(b"r")?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let (brand, rest) = (&rest[..nul], &rest[nul + 1..]);
    let (at, rest) = rest.split_at_checked(8)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    if let Some(player) = rest.strip_suffix(&[0])
        && !player.contains(&0)
    {
        return Some((player_key(brand, player)?, at, None));
    }
    let (key, id) = parse_player_id(&[brand, &[0], rest].concat())?;
    Some((key, at, Some(id)))
}

/// `l brand NUL host NUL`: one lane of the outbox.
pub fn outbox_prefix(lane: &Lane) -> Vec<u8> {
    outbox_lane(lane, 0)
}

/// [`outbox_prefix`] with room for `room` bytes more.
fn outbox_lane(lane: &Lane, room: usize) -> Vec<u8> {
    let mut k = brand_table_with_room(b'l', &lane.brand, lane.host.len() + 1 + room);
    k.extend_from_slice(lane.host.as_bytes());
    k.push(0);
    k
}

/// `l`: one postback's place in its lane, by due time.
pub fn outbox(lane: &Lane, due_ms: u64, key: &PlayerKey, id: &PixelId) -> Vec<u8> {
    let mut k = outbox_lane(lane, 8 + key.player.as_str().len() + 1 + id.as_str().len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(key.player.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// Splits an outbox key into lane, due time, player and postback id.
pub fn parse_outbox(k: &[u8]) -> Option<(Lane, u64, PlayerKey, PixelId)> {
    let rest = k.strip_prefix(b"l")?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let (brand, rest) = (&rest[..nul], &rest[nul + 1..]);
    let nul = rest.iter().position(|&b| b == 0)?;
    let host = std::str::from_utf8(&rest[..nul]).ok()?.to_owned();
    let (due, rest) = rest[nul + 1..].split_at_checked(8)?;
    let (key, id) = parse_player_id(&[brand, &[0], rest].concat())?;
    let lane = Lane {
        brand: key.brand.clone(),
        host,
    };
    Some((lane, u64::from_be_bytes(due.try_into().ok()?), key, id))
}

/// Splits a key of the outbox before lanes: `s` due brand NUL player NUL id.
pub fn parse_global_outbox(k: &[u8]) -> Option<(u64, PlayerKey, PixelId)> {
    let rest = k.strip_prefix(b"s")?;
    let (due, rest) = rest.split_at_checked(8)?;
    let (key, id) = parse_player_id(rest)?;
    Some((u64::from_be_bytes(due.try_into().ok()?), key, id))
}

/// `v<brand>\0<click id>` → the player who came with it.
pub fn click(brand: &BrandId, click_id: &str) -> Vec<u8> {
    let mut k = brand_table(b'v', brand);
    k.extend_from_slice(click_id.as_bytes());
    k
}

pub fn context(key: &PlayerKey) -> Vec<u8> {
    player_table(b'c', key, 0)
}

/// The brand of a `c` key.
pub fn parse_context_brand(k: &[u8]) -> Option<BrandId> {
    let rest = k.strip_prefix(b"c")?;
    let nul = rest.iter().position(|&b| b == 0)?;
    BrandId::parse_stored(std::str::from_utf8(&rest[..nul]).ok()?).ok()
}

pub fn queue_prefix(key: &PlayerKey) -> Vec<u8> {
    queue_table(key, 0)
}

/// [`queue_prefix`] with room for `room` bytes more.
fn queue_table(key: &PlayerKey, room: usize) -> Vec<u8> {
    player_table(b'q', key, room)
}

pub fn queue(key: &PlayerKey, seq: u64) -> Vec<u8> {
    let mut k = queue_table(key, 8);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn index(key: &PlayerKey, id: &PixelId) -> Vec<u8> {
    let mut k = index_table(key, id.as_str().len());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

pub fn expiry(due_ms: u64, key: &PlayerKey, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 + player_len(key) + 8);
    k.push(b'x');
    k.extend_from_slice(&due_ms.to_be_bytes());
    push_player(&mut k, key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The due time of a key of a due-ordered table (`x`, `y`): the 8 bytes after its tag.
pub fn due_of(k: &[u8]) -> Option<u64> {
    k.get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// First key of the due-ordered table `tag` that is not yet due at `now`.
pub fn due_bound(tag: u8, now: u64) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&now.saturating_add(1).to_be_bytes());
    k
}

/// Splits `brand NUL player NUL seq(8)`.
fn parse_player_seq(rest: &[u8]) -> Option<(PlayerKey, u64)> {
    let (ids, seq) = rest.split_at_checked(rest.len().checked_sub(8)?)?;
    let key = parse_player(ids.strip_suffix(&[0])?)?;
    Some((key, u64::from_be_bytes(seq.try_into().ok()?)))
}

pub fn parse_queue(k: &[u8]) -> Option<(PlayerKey, u64)> {
    parse_player_seq(k.strip_prefix(b"q")?)
}

pub fn parse_expiry(k: &[u8]) -> Option<(PlayerKey, u64)> {
    parse_player_seq(k.strip_prefix(b"x")?.get(8..)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a pixel's life writes are built in one allocation of their exact size, and still read
    /// back as what they were built from.
    #[test]
    fn the_keys_of_the_write_path_are_allocated_once_at_their_size() {
        let key = PlayerKey::new(
            BrandId::parse("brand-7").unwrap(),
            PlayerId::parse("player-42").unwrap(),
        );
        let id = PixelId::parse("px-1").unwrap();
        let lane = Lane {
            brand: key.brand.clone(),
            host: "aff.example:443".into(),
        };
        let event = EventId::parse("ev-1").unwrap();
        let built = [
            ("q", queue(&key, 9)),
            ("q prefix", queue_prefix(&key)),
            ("i", index(&key, &id)),
            ("i prefix", index_prefix(&key)),
            ("n", summary(&key)),
            ("c", context(&key)),
            ("x", expiry(5, &key, 9)),
            ("r", report_bucket(&key, 5)),
            ("l", outbox(&lane, 5, &key, &id)),
            ("y", forget_event(5, &key.brand, &event)),
        ];
        for (name, k) in &built {
            assert_eq!(
                k.capacity(),
                k.len(),
                "{name}: built with room to spare or regrown"
            );
        }
        assert_eq!(parse_queue(&built[0].1), Some((key.clone(), 9)));
        assert_eq!(parse_summary(&built[4].1), Some(key.clone()));
        assert_eq!(parse_expiry(&built[6].1), Some((key.clone(), 9)));
        assert_eq!(parse_report(&built[7].1), Some((key.clone(), 5, None)));
        assert_eq!(
            parse_outbox(&built[8].1),
            Some((lane, 5, key.clone(), id.clone()))
        );
        assert_eq!(
            parse_forget_event(&built[9].1),
            Some((key.brand.clone(), event))
        );
    }
}
