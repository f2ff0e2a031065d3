//! Where the hot half of a brand lives in Redis. Every key of a brand carries the hash tag
//! `{pxh:b:<brand>}`, so everything one transaction reads or writes (a batch of events over many of the
//! brand's players, with their event ids, the brand's report, outbox and expiry index) is on one Redis
//! Cluster slot and its commit is one script. Brands spread over a cluster's slots; one brand's writes
//! are one slot's (docs/scaling.md says what that bounds).
//!
//! Ordered indexes are sorted sets of members that sort as their fields do (every score 0, read with
//! `ZRANGEBYLEX`): numbers written as 20 digits, fields joined by a space, which no id contains and
//! which sorts below every character one may ([`crate::ids`] allows letters, digits and `._:@-`), so
//! a member sorts as the tuple of its fields does.

use crate::ids::{BrandId, PlayerId};

/// The global counter [`crate::store::queues::Tx::next_seq`] draws from (its own slot: an `INCRBY`
/// outside any commit).
pub(super) const SEQ: &str = "{pxh:seq}";

/// The key the readiness probe writes.
pub(super) const PROBE: &str = "{pxh:probe}";

/// The channel announcements of players with work go out on: `<origin> <brand> <player>`.
pub(super) const ANNOUNCE_CHANNEL: &str = "pxh:announce";

/// The channel that tells every process's postback sender that postbacks were added: `<origin>`.
pub(super) const POSTBACKS_CHANNEL: &str = "pxh:postbacks";

/// Separates the fields of an ordered member.
pub(super) const SEP: char = ' ';

/// A number as 20 digits, so members sort as their numbers do.
pub(super) fn pad(n: u64) -> String {
    format!("{n:020}")
}

/// One brand's keys.
#[derive(Clone, Debug)]
pub(super) struct BrandKeys {
    tag: String,
}

impl BrandKeys {
    pub(super) fn new(brand: &BrandId) -> Self {
        BrandKeys {
            tag: format!("{{pxh:b:{}}}", brand.as_str()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }

    /// The counter the brand's queue positions and record numbers are drawn from (a player's are all
    /// its brand's, so each player's are in the order its transactions committed).
    pub(super) fn seq(&self) -> String {
        self.key("seq")
    }

    /// Hash: player → version, raised by every commit that writes the player's state.
    pub(super) fn versions(&self) -> String {
        self.key("ver")
    }

    /// Hash: player → lease (JSON).
    pub(super) fn leases(&self) -> String {
        self.key("lease")
    }

    /// Hash: player → attribution context (JSON). Its length is the brand's players.
    pub(super) fn contexts(&self) -> String {
        self.key("ctx")
    }

    /// Hash: click id → player.
    pub(super) fn clicks(&self) -> String {
        self.key("click")
    }

    /// Sorted set: the player's queue, scored by queue position; each member the position and the
    /// pixel's `queued_at_ms`, each in 20 digits, then the pixel's JSON.
    pub(super) fn queue(&self, player: &PlayerId) -> String {
        self.key(&format!("q:{}", player.as_str()))
    }

    /// Hash: the player's records, by pixel or postback id (JSON).
    pub(super) fn records(&self, player: &PlayerId) -> String {
        self.key(&format!("r:{}", player.as_str()))
    }

    /// Ordered set: the report, `<queued_at_ms> <player> <id>`.
    pub(super) fn report(&self) -> String {
        self.key("report")
    }

    /// Ordered set: the expiry index, `<due_ms> <player> <seq> <id>`.
    pub(super) fn expiry(&self) -> String {
        self.key("expiry")
    }

    /// Set: the hosts of the brand's outbox lanes.
    pub(super) fn lanes(&self) -> String {
        self.key("lanes")
    }

    /// Ordered set: one lane of the outbox, `<due_ms> <player> <id>`.
    pub(super) fn lane(&self, host: &str) -> String {
        self.key(&format!("lane:{host}"))
    }

    /// Hash: event id → the event's record (JSON).
    pub(super) fn events(&self) -> String {
        self.key("ev")
    }

    /// Ordered set: when each event is forgotten, `<due_ms> <id>`.
    pub(super) fn event_forgets(&self) -> String {
        self.key("evf")
    }

    /// Hash: definition id → its postback health (JSON).
    pub(super) fn health(&self) -> String {
        self.key("health")
    }

    /// Hash of the brand's counters: `depth` (pending client pixels), `outbox` (postbacks in it),
    /// `day` and `events` (new events on that UTC day), `waiting` (pending pixels waiting for consent).
    pub(super) fn counts(&self) -> String {
        self.key("counts")
    }

    /// Sorted set: player → pending client pixels (players with none are not in it).
    pub(super) fn backlog(&self) -> String {
        self.key("backlog")
    }

    /// Sorted set: the player's sessions on every process, each scored by when its claim runs out.
    pub(super) fn session_claims(&self, player: &PlayerId) -> String {
        self.key(&format!("sess:{}", player.as_str()))
    }

    /// Hash: the player's sessions as ops list them, by session id (JSON).
    pub(super) fn session_infos(&self, player: &PlayerId) -> String {
        self.key(&format!("sinfo:{}", player.as_str()))
    }

    /// Sorted set: player → `queued_at_ms` of the head of its queue.
    pub(super) fn oldest(&self) -> String {
        self.key("oldest")
    }
}

/// A brand's counters and players, read together (queue depth, outbox, the day's events, pixels waiting
/// for consent: what the stats show and the quotas weigh).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Pending client pixels.
    pub(super) depth: u64,
    /// Postbacks in the outbox.
    pub(super) outbox: u64,
    /// The UTC day `events` counts, and the new events on it.
    day: Option<u64>,
    events: u64,
    /// Players with an attribution context.
    pub(super) players: u64,
    /// Pending pixels waiting for consent.
    pub(super) waiting: u64,
}

impl Counts {
    /// Adds the two reads to `pipe`; their answers read back as one [`Counts`].
    pub(super) fn ask(pipe: &mut redis::Pipeline, keys: &BrandKeys) {
        pipe.hmget(
            keys.counts(),
            &["depth", "outbox", "day", "events", "waiting"],
        )
        .hlen(keys.contexts());
    }

    /// New events on UTC day `day`.
    pub(super) fn events_on(&self, day: u64) -> u64 {
        if self.day == Some(day) {
            self.events
        } else {
            0
        }
    }
}

/// The counters' fields as [`Counts::ask`] reads them: depth, outbox, day, events, waiting (a sum of
/// signed steps, so signed).
pub(super) type CountFields = (
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<i64>,
);

impl Counts {
    /// The answers to [`Counts::ask`]'s two reads.
    pub(super) fn new((depth, outbox, day, events, waiting): CountFields, players: u64) -> Self {
        Counts {
            depth: depth.unwrap_or(0),
            outbox: outbox.unwrap_or(0),
            day,
            events: events.unwrap_or(0),
            players,
            waiting: waiting.unwrap_or(0).max(0) as u64,
        }
    }
}

impl redis::FromRedisValue for Counts {
    /// A pipeline of [`Counts::ask`] alone.
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let (fields, players) = redis::FromRedisValue::from_redis_value(value)?;
        Ok(Counts::new(fields, players))
    }
}

/// The expiry member's prefix naming one record's entry, whatever id it carries: `<due> <player> <seq> `.
pub(super) fn expiry_prefix(due_ms: u64, player: &PlayerId, seq: u64) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}",
        pad(due_ms),
        player.as_str(),
        pad(seq)
    )
}

/// A report member.
pub(super) fn report_member(queued_at_ms: u64, player: &PlayerId, id: &str) -> String {
    format!("{}{SEP}{}{SEP}{id}", pad(queued_at_ms), player.as_str())
}

/// A lane member.
pub(super) fn lane_member(due_ms: u64, player: &PlayerId, id: &str) -> String {
    format!("{}{SEP}{}{SEP}{id}", pad(due_ms), player.as_str())
}

/// An event-forget member.
pub(super) fn event_forget_member(due_ms: u64, id: &str) -> String {
    format!("{}{SEP}{id}", pad(due_ms))
}

/// Splits a member into its `N` fields; `None` for a member that does not have them.
pub(super) fn fields<const N: usize>(member: &str) -> Option<[&str; N]> {
    let mut parts = member.splitn(N, SEP);
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next()?;
    }
    Some(out)
}

/// Lower and upper `ZRANGEBYLEX` bounds of every member starting with `prefix`.
pub(super) fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut low = b"[".to_vec();
    low.extend_from_slice(prefix.as_bytes());
    let mut high = b"(".to_vec();
    high.extend_from_slice(prefix.as_bytes());
    high.push(0xff);
    (low, high)
}

/// The `ZRANGEBYLEX` upper bound of members whose leading number is at most `n`.
pub(super) fn up_to(n: u64) -> String {
    match n.checked_add(1) {
        Some(next) => format!("({}", pad(next)),
        None => "+".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_brand_hashes_to_its_one_tag() {
        let keys = BrandKeys::new(&BrandId::parse("casino-1").unwrap());
        let player = PlayerId::parse("p:1").unwrap();
        for key in [
            keys.versions(),
            keys.queue(&player),
            keys.records(&player),
            keys.lane("pb.example:443"),
            keys.report(),
            keys.counts(),
        ] {
            let tag = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'));
            assert_eq!(tag.map(|(t, _)| t), Some("pxh:b:casino-1"), "{key}");
        }
    }

    #[test]
    fn members_sort_as_their_numbers_and_split_back() {
        let (a, b) = (PlayerId::parse("b").unwrap(), PlayerId::parse("a").unwrap());
        assert!(lane_member(9, &a, "x") < lane_member(10, &b, "x"));
        // A player whose id starts another's sorts first, as it does among ids.
        let (short, long) = (
            PlayerId::parse("a").unwrap(),
            PlayerId::parse("ab").unwrap(),
        );
        assert!(report_member(1, &short, "z") < report_member(1, &long, "a"));
        let member = expiry_prefix(5, &a, 7) + "id-1";
        assert_eq!(
            fields::<4>(&member),
            Some([pad(5).as_str(), "b", pad(7).as_str(), "id-1"])
        );
        assert_eq!(fields::<4>("1 2"), None);
        assert_eq!(up_to(u64::MAX), "+");
        // `(` and a bound: members below it, every member at 9 included, none at 10.
        let bound = up_to(9);
        assert!(lane_member(9, &long, "zzz").as_str() < &bound[1..]);
        assert!(lane_member(10, &short, "a").as_str() > &bound[1..]);
    }
}
