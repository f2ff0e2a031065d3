//! The S2S sender: sends the postbacks in the store's outbox to affiliates' endpoints, and retries them.
//!
//! A postback is written to the outbox in the same atomic, fsync'd commit as the event that produced it,
//! so once a brand has its `202` the postback cannot be lost. This task takes due postbacks from the
//! outbox, claims each for one attempt (if the process dies mid-attempt the claim runs out and the
//! postback is due again), sends it, and records the attempt durably: a 2xx marks it `fired` and it is
//! never sent again; connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
//! jitter (or after the endpoint's `Retry-After`); any other answer, a bad redirect, or the last attempt
//! marks it `failed`.
//!
//! One slow or dead endpoint must not hold up the others, so concurrency is bounded twice: overall, and
//! per target host. A postback whose host is busy is simply left due and picked up when a slot frees.
//!
//! Every destination goes through [`Egress`]: an address that is not public (loopback, private,
//! link-local, …) is refused before the request, on every redirect hop, and for host names on the
//! addresses they resolve to, at connect time. A refused postback fails at once, never retried, with the
//! reason in its report row and in `pixelhub_s2s_refused_total`. Postbacks carry no `Referer`, and an
//! answer's first bytes are kept in the report only when it came from a public address.
//! Exactly once is "once per recorded success": a crash after the endpoint answered 2xx but before the
//! answer was recorded sends it again, which no sender can avoid without the endpoint's help.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::delivery::{Attempt, RESPONSE_EXCERPT_BYTES, excerpt};
use crate::egress::{Egress, Refused, classify, refusal_in};
use crate::ids::BrandId;
use crate::ledger::Ledger;
use crate::metrics::{AttemptResult, Metrics};
use crate::store::{DuePostback, Lane, Verdict};

/// Longest sleep between passes when nothing wakes the sender earlier.
const POLL: Duration = Duration::from_secs(1);
/// How long after its attempt's timeout a claimed postback becomes due again, should the sender die.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// Longest wait a `Retry-After` may ask for; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Each retry waits this many times longer than the one before.
const BACKOFF_FACTOR: u64 = 3;

/// How the sender behaves; from [`Config`].
#[derive(Clone, Debug)]
pub struct Policy {
    /// Per attempt, connection to the end of the response excerpt.
    pub timeout: Duration,
    /// Attempts per postback, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; multiplied by [`BACKOFF_FACTOR`] for each later one.
    pub retry_base: Duration,
    /// Attempts in flight at once, overall.
    pub concurrency: usize,
    /// Attempts in flight at once to one host.
    pub per_host: usize,
    /// Attempts in flight at once of one brand, so one brand's backlog to many hosts leaves slots for
    /// the others.
    pub per_brand: usize,
    /// Redirects followed per attempt.
    pub max_redirects: usize,
    /// Failed attempts in a row that flag a definition.
    pub failure_threshold: u32,
    /// Disable a definition when it is flagged.
    pub auto_disable: bool,
}

impl Policy {
    /// The policy the settings describe.
    pub fn from_config(config: &Config) -> Self {
        Policy {
            timeout: Duration::from_millis(config.s2s_timeout_ms),
            max_attempts: config.s2s_max_attempts as u32,
            retry_base: Duration::from_millis(config.s2s_retry_base_ms),
            concurrency: config.s2s_concurrency as usize,
            per_host: config.s2s_per_host as usize,
            per_brand: config.s2s_per_brand as usize,
            max_redirects: config.s2s_max_redirects as usize,
            failure_threshold: config.s2s_failure_threshold as u32,
            auto_disable: config.s2s_auto_disable,
        }
    }

    /// The wait before the attempt after `attempts_made`, before jitter.
    fn backoff(&self, attempts_made: u32) -> Duration {
        let factor = BACKOFF_FACTOR.saturating_pow(attempts_made.saturating_sub(1));
        self.retry_base
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(MAX_RETRY_AFTER)
    }
}

/// Counters of this process's sender, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct SenderStats {
    fired: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of [`SenderStats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SenderSnapshot {
    /// Attempts answered 2xx.
    pub fired: u64,
    /// Failed attempts with another scheduled.
    pub retried: u64,
    /// Failed attempts that ended their postback.
    pub failed: u64,
    /// Attempts running now.
    pub in_flight: u64,
}

impl SenderStats {
    /// The counters now.
    pub fn snapshot(&self) -> SenderSnapshot {
        SenderSnapshot {
            fired: self.fired.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// What the report says of an answer that came from a non-public address (one the operator allowed).
const PRIVATE_ANSWER: &str = "(answer of a non-public address, not kept)";

/// What the dispatcher and its attempts share.
struct Shared {
    ledger: Ledger,
    /// Connects only where [`Egress`] allows, follows only redirects it allows.
    client: reqwest::Client,
    /// For the demo's own pixel receiver: follows no redirect, reaches nothing but the hub itself.
    demo_client: reqwest::Client,
    egress: Arc<Egress>,
    policy: Policy,
    /// Attempts in flight per host and per brand.
    busy: Mutex<Busy>,
    /// Woken when an attempt ends, freeing a slot.
    freed: Notify,
    stats: Arc<SenderStats>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
}

/// What the sender works with, from the process.
pub struct SenderParts {
    /// The outbox, and the definitions a failing postback may disable.
    pub ledger: Ledger,
    /// How it behaves.
    pub policy: Policy,
    /// Where postbacks may go.
    pub egress: Arc<Egress>,
    /// This process's sender counters, shown in the stats.
    pub stats: Arc<SenderStats>,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
    /// What "now" is: which postbacks are due, when the next attempt is, what a `Retry-After` date means.
    pub clock: SharedClock,
}

/// Starts the sender on `tracker`; it stops taking new postbacks when `stop` is cancelled and returns
/// once the attempts under way are recorded, so the store can then be closed.
pub fn spawn(
    parts: SenderParts,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), reqwest::Error> {
    let SenderParts {
        ledger,
        policy,
        egress,
        stats,
        metrics,
        clock,
    } = parts;
    let max_redirects = policy.max_redirects;
    // No proxy from the environment (it would resolve names where the guard cannot see), no Referer (the
    // URL holds click ids and tokens that the next hop has no business seeing).
    let builder = || {
        reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("pixelhub/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .referer(false)
    };
    let hops = Arc::clone(&egress);
    let client = builder()
        .dns_resolver(egress.resolver())
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if !matches!(attempt.url().scheme(), "http" | "https") {
                let refused = format!(
                    "redirect to a non-http(s) URL ({}:)",
                    attempt.url().scheme()
                );
                attempt.error(refused)
            } else if attempt.previous().len() > max_redirects {
                attempt.error(format!("more than {max_redirects} redirects"))
            } else if let Err(refused) = hops.check_url(attempt.url()) {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        }))
        .build()?;
    let demo_client = builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let shared = Arc::new(Shared {
        ledger,
        client,
        demo_client,
        egress,
        policy,
        busy: Mutex::new(Busy::default()),
        freed: Notify::new(),
        stats,
        metrics,
        clock,
    });
    tracker.spawn(run(shared, stop));
    Ok(())
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(shared.policy.concurrency));
    let attempts = TaskTracker::new();
    let mut turns = Turns::default();
    while !stop.is_cancelled() {
        let wait = match dispatch(&shared, &slots, &attempts, &mut turns).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "reading the postback outbox failed");
                POLL
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = shared.ledger.postbacks_added() => {}
            _ = shared.freed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    attempts.close();
    attempts.wait().await;
}

/// Whose turn it is, kept from one pass to the next: the brand served last, and per brand the host
/// served last, so each pass starts after them and no brand, and no host of a brand, is always first.
#[derive(Default)]
struct Turns {
    brand: Option<BrandId>,
    hosts: HashMap<BrandId, String>,
}

/// One pass: starts an attempt for every due postback there is a slot for, taking them **in turn**: one
/// brand after another (starting after the brand served last), and within a brand one lane (host) after
/// another (starting after the host it was served last). A lane whose host is at `--s2s-per-host`, or
/// whose brand is at `--s2s-per-brand`, is passed over without being read, so however many postbacks
/// wait for a dead endpoint, another host's or brand's due postback goes out at the next free slot.
/// Returns how long to sleep if nothing wakes the sender earlier (an attempt ending, new postbacks).
async fn dispatch(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    attempts: &TaskTracker,
    turns: &mut Turns,
) -> Result<Duration, crate::store::StoreError> {
    let now = shared.clock.now_ms();
    let lanes = shared.ledger.postback_lanes().await?;
    let next = lanes.iter().map(|l| l.next_ms).filter(|&at| at > now).min();
    let mut due: BTreeMap<BrandId, VecDeque<Lane>> = BTreeMap::new();
    for lane in lanes.into_iter().filter(|l| l.next_ms <= now) {
        due.entry(lane.lane.brand.clone())
            .or_default()
            .push_back(lane.lane);
    }
    for (brand, lanes) in due.iter_mut() {
        let lanes = lanes.make_contiguous();
        lanes.sort();
        if let Some(last) = turns.hosts.get(brand) {
            let after = lanes.partition_point(|lane| lane.host <= *last);
            lanes.rotate_left(after);
        }
    }
    let mut order: Vec<BrandId> = due.keys().cloned().collect();
    if let Some(last) = turns.brand.as_ref() {
        let after = order.partition_point(|b| b <= last);
        order.rotate_left(after);
    }
    let wait = next
        .map_or(POLL, |at| Duration::from_millis(at - now))
        .min(POLL);
    loop {
        let mut started = false;
        for brand in &order {
            let Some(lanes) = due.get_mut(brand) else {
                continue;
            };
            // The brand's turn: its next lane with room and a postback due.
            let (lane, postback, slot) = loop {
                let Some(pos) = lanes.iter().position(|lane| shared.has_room(lane)) else {
                    break (None, None, None);
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    return Ok(wait); // every slot busy: an ending attempt wakes us
                };
                let lane = lanes.remove(pos).expect("the position was just found");
                // A lane with nothing due any more leaves this pass; the brand's next lane is tried.
                if let Some(postback) = shared.ledger.due_postbacks(&lane, now, 1).await?.pop() {
                    break (Some(lane), Some(postback), Some(slot));
                }
            };
            let (Some(lane), Some(postback), Some(slot)) = (lane, postback, slot) else {
                continue;
            };
            // The lane's next turn comes after the brand's other lanes.
            lanes.push_back(lane.clone());
            if !shared.take(&lane) {
                continue;
            }
            let until = shared.clock.now_ms() + ms(shared.policy.timeout + CLAIM_MARGIN);
            match shared.ledger.claim_postback(&postback, until).await {
                Ok(true) => {
                    turns.brand = Some(brand.clone());
                    turns.hosts.insert(brand.clone(), lane.host.clone());
                    let shared = Arc::clone(shared);
                    attempts.spawn(async move {
                        shared.attempt(postback, until, slot).await;
                        shared.release(&lane);
                        shared.freed.notify_one();
                    });
                    started = true;
                }
                Ok(false) => shared.release(&lane),
                Err(e) => {
                    shared.release(&lane);
                    return Err(e);
                }
            }
        }
        if !started {
            return Ok(wait);
        }
    }
}

/// Attempts in flight per host and per brand; an entry is removed when it drops to zero.
#[derive(Default)]
struct Busy {
    hosts: HashMap<String, usize>,
    brands: HashMap<BrandId, usize>,
}

impl Shared {
    /// Whether a postback of `lane` may start now: its host and its brand are under their limits.
    fn has_room(&self, lane: &Lane) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.hosts.get(&lane.host).copied().unwrap_or(0) < self.policy.per_host
            && busy.brands.get(&lane.brand).copied().unwrap_or(0) < self.policy.per_brand
    }

    /// Counts an attempt of `lane` in flight, if its host and brand have room.
    fn take(&self, lane: &Lane) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let host = busy.hosts.get(&lane.host).copied().unwrap_or(0);
        let brand = busy.brands.get(&lane.brand).copied().unwrap_or(0);
        if host >= self.policy.per_host || brand >= self.policy.per_brand {
            return false;
        }
        busy.hosts.insert(lane.host.clone(), host + 1);
        busy.brands.insert(lane.brand.clone(), brand + 1);
        true
    }

    fn release(&self, lane: &Lane) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let Busy { hosts, brands } = &mut *busy;
        if let Some(n) = hosts.get_mut(&lane.host) {
            *n -= 1;
            if *n == 0 {
                hosts.remove(&lane.host);
            }
        }
        if let Some(n) = brands.get_mut(&lane.brand) {
            *n -= 1;
            if *n == 0 {
                brands.remove(&lane.brand);
            }
        }
    }

    /// Sends one postback and records the attempt; `_slot` is held until it is recorded.
    async fn attempt(&self, postback: DuePostback, until: u64, _slot: OwnedSemaphorePermit) {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let (attempt, verdict) = self.send(&postback).await;
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (counter, result) = match verdict {
            Verdict::Fired => (&self.stats.fired, AttemptResult::Fired),
            Verdict::Retry { .. } => (&self.stats.retried, AttemptResult::Retry),
            Verdict::Failed => (&self.stats.failed, AttemptResult::Failed),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let took = Duration::from_millis(attempt.duration_ms);
        self.metrics.s2s_attempt(result, outcome_of(&attempt), took);
        tracing::debug!(
            brand = %postback.key.brand, postback = %postback.id, status = ?attempt.http_status,
            error = ?attempt.error, ?verdict, "postback attempt"
        );
        let health = match self
            .ledger
            .record_attempt(&postback, until, attempt, verdict)
            .await
        {
            Ok(health) => health,
            Err(e) => {
                // The claim runs out and the postback is due again: nothing is lost.
                tracing::error!(error = %e, postback = %postback.id, "recording a postback attempt failed");
                return;
            }
        };
        let (Some(health), Some(definition)) = (health, &postback.definition_id) else {
            return;
        };
        if health.consecutive_failures < self.policy.failure_threshold {
            return;
        }
        if health.consecutive_failures == self.policy.failure_threshold {
            tracing::warn!(
                brand = %postback.key.brand, %definition, failures = health.consecutive_failures,
                "postbacks of this definition keep failing"
            );
        }
        // At or past the threshold (the setting may have been lowered, or just turned on).
        if self.policy.auto_disable {
            let reason = format!(
                "disabled by the hub after {} failed postback attempts in a row (last: {})",
                health.consecutive_failures,
                health.last_error.as_deref().unwrap_or("unknown")
            );
            if let Err(e) = self
                .ledger
                .disable_definition(&postback.key.brand, definition, reason)
                .await
            {
                tracing::error!(error = %e, %definition, "disabling a failing definition failed");
            }
        }
    }

    /// Makes the request and decides what it means.
    async fn send(&self, postback: &DuePostback) -> (Attempt, Verdict) {
        let at_ms = self.clock.now_ms();
        let started = Instant::now();
        let mut attempt = Attempt {
            at_ms,
            duration_ms: 0,
            http_status: None,
            error: None,
            response: None,
        };
        let parsed = url::Url::parse(&postback.url).ok();
        let demo = parsed.as_ref().and_then(|u| self.egress.demo_receiver(u));
        let (client, url) = match &demo {
            Some(own) => (&self.demo_client, own.as_str()),
            None => (&self.client, postback.url.as_str()),
        };
        if demo.is_none()
            && let Some(Err(refused)) = parsed.as_ref().map(|u| self.egress.check_url(u))
        {
            return (self.refused(attempt, &refused, started), Verdict::Failed);
        }
        let request = match &postback.post {
            None => client.get(url),
            Some(post) => client
                .post(url)
                .header(CONTENT_TYPE, &post.content_type)
                .body(post.body.clone()),
        };
        let made = postback.attempts + 1;
        let retryable = match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                attempt.http_status = Some(status.as_u16());
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, self.clock.now_ms()));
                let media = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // What a service on a private network answers is not the brand's to read.
                let public = demo.is_some()
                    || response
                        .remote_addr()
                        .is_some_and(|peer| classify(peer.ip()).is_none());
                match media.as_deref().filter(|m| !is_text(m)) {
                    _ if !public => attempt.response = Some(PRIVATE_ANSWER.into()),
                    // A tracking GIF's bytes tell nobody anything; its type does.
                    Some(binary) => attempt.response = Some(format!("({binary} body)")),
                    None => {
                        let mut body = Vec::new();
                        while body.len() < RESPONSE_EXCERPT_BYTES {
                            match response.chunk().await {
                                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                                // The status is what counts; a body cut short keeps its first bytes.
                                Ok(None) | Err(_) => break,
                            }
                        }
                        if !body.is_empty() {
                            attempt.response = Some(excerpt(&body));
                        }
                    }
                }
                if status.is_success() {
                    attempt.duration_ms = ms(started.elapsed());
                    return (attempt, Verdict::Fired);
                }
                let retry = status.as_u16() == 429 || status.is_server_error();
                retry.then_some(retry_after)
            }
            Err(e) => {
                if let Some(refused) = refusal_in(&e) {
                    return (self.refused(attempt, refused, started), Verdict::Failed);
                }
                attempt.error = Some(describe(&e));
                // A refused redirect means the URL leads somewhere it must not: retrying cannot help.
                (!e.is_redirect()).then_some(None)
            }
        };
        attempt.duration_ms = ms(started.elapsed());
        let verdict = match retryable {
            Some(retry_after) if made < self.policy.max_attempts => {
                let wait = retry_after.unwrap_or_else(|| jitter(self.policy.backoff(made)));
                Verdict::Retry {
                    at_ms: self.clock.now_ms() + ms(wait),
                }
            }
            _ => Verdict::Failed,
        };
        (attempt, verdict)
    }

    /// An attempt stopped by [`Egress`]: failed for good, the reason in the report and counted.
    fn refused(&self, mut attempt: Attempt, refused: &Refused, started: Instant) -> Attempt {
        self.metrics.s2s_refused(refused.reason.as_str());
        tracing::warn!(address = %refused.address, reason = refused.reason.as_str(), "postback destination refused");
        attempt.error = Some(refused.to_string());
        attempt.duration_ms = ms(started.elapsed());
        attempt
    }
}

/// Whether a response of this media type reads as text in a report.
fn is_text(media_type: &str) -> bool {
    let media_type = media_type.to_ascii_lowercase();
    media_type.starts_with("text/")
        || ["json", "xml", "javascript", "x-www-form-urlencoded"]
            .iter()
            .any(|t| media_type.contains(t))
}

/// A `Retry-After` value: delay seconds, or an HTTP date (read against `now_ms`); capped at
/// [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let at_ms = at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Duration::from_millis(at_ms.saturating_sub(now_ms))
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Between half and all of `wait`, at random, so postbacks that failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes); // zero is still a valid wait
    let fraction = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    wait.mul_f64(0.5 + fraction / 2.0)
}

/// A bounded word for what an attempt got, for the attempts metric.
fn outcome_of(attempt: &Attempt) -> &'static str {
    match (attempt.http_status, attempt.error.as_deref()) {
        (Some(status), _) => match status / 100 {
            2 => "http_2xx",
            3 => "http_3xx",
            4 => "http_4xx",
            5 => "http_5xx",
            _ => "http_other",
        },
        (None, Some(e)) if e.starts_with("timed out") => "timeout",
        (None, Some(e)) if e.starts_with("destination refused") => "destination_refused",
        (None, Some(e)) if e.starts_with("redirect refused") => "redirect_refused",
        (None, Some(e)) if e.starts_with("connection failed") => "connection_failed",
        _ => "request_failed",
    }
}

/// What went wrong, for the report: the kind, then the innermost cause (which names the real problem).
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    if e.is_timeout() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base: Duration::from_secs(100),
            concurrency: 64,
            per_host: 4,
            per_brand: 16,
            max_redirects: 5,
            failure_threshold: 20,
            auto_disable: false,
        }
    }

    #[test]
    fn the_default_backoff_spreads_eight_attempts_over_about_a_day() {
        let p = policy();
        let waits: Vec<u64> = (1..8).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(waits, [100, 300, 900, 2_700, 8_100, 24_300, 72_900]);
        let total: u64 = waits.iter().sum();
        // With jitter each wait is between half and all of this: 15 to 30 hours in all.
        assert_eq!(total, 109_300);
        assert_eq!(p.backoff(40), MAX_RETRY_AFTER, "capped, never overflowing");
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(100));
            assert!(
                j >= Duration::from_secs(50) && j <= Duration::from_secs(100),
                "{j:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        // A whole second, as HTTP dates are.
        const NOW: u64 = 1_796_000_000_000;
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("9999999", NOW), Some(MAX_RETRY_AFTER));
        let in_a_minute = UNIX_EPOCH + Duration::from_millis(NOW) + Duration::from_secs(60);
        let wait = parse_retry_after(&httpdate::fmt_http_date(in_a_minute), NOW).unwrap();
        assert_eq!(wait, Duration::from_secs(60));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", NOW), None);
    }

    #[test]
    fn only_text_answers_are_quoted() {
        assert!(is_text("text/plain; charset=utf-8"));
        assert!(is_text("application/json"));
        assert!(is_text("Application/XML"));
        assert!(!is_text("image/gif"));
        assert!(!is_text("application/octet-stream"));
    }
}
