//! The hub's limits on what one client may hold or send, and the bookkeeping they need.
//!
//! Each limit has a documented answer (an HTTP error code or a WebSocket close code) and is counted in
//! `pixelhub_limits_hit_total{limit}` under the name [`Limit::as_str`] gives, so ops see which wall
//! clients run into. The limits themselves are settings (see `pixelhub --help`); the answers are in
//! the README and docs/protocol.md.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use ipnet::IpNet;

/// A limit a client ran into, as counted in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// An HTTP body over `--max-body-bytes` (413 `payload_too_large`).
    BodyBytes,
    /// A batch of pixels or events over `--max-batch` (422 `batch_too_large`).
    BatchSize,
    /// A player's queue at `--max-queue-per-player` under the `reject` policy (429 `queue_full`).
    QueuePerPlayer,
    /// A client address holding `--max-connections-per-ip` connections already (429
    /// `too_many_connections`).
    ConnectionsPerIp,
    /// A connection that did not send a request's headers within `--header-timeout-ms`, or sat idle
    /// that long between requests (closed).
    HeaderTimeout,
    /// A WebSocket message over `--ws-max-message-bytes` (close 4504).
    WsMessageBytes,
    /// A WebSocket client sending faster than `--ws-max-messages-per-second` (close 4005).
    WsMessageRate,
    /// No hello within `--hello-timeout-ms` (close 4002).
    HelloTimeout,
    /// A player with `--max-sessions-per-player` sessions in this process already (close 4006).
    SessionsPerPlayer,
    /// A request body not received within `--body-timeout-ms` (408 `body_timeout`; for an upload,
    /// nothing received for that long).
    BodyTimeout,
    /// A brand's inbound postback URLs called faster than `--inbound-rate` (429 `rate_limited`).
    InboundRate,
    /// The demo asked to queue pixels faster than it allows, or past its caps (429).
    Demo,
    /// An event with more params than `--max-params-per-event`, or a value longer than
    /// `--max-param-bytes` (422 `too_many_params`, `param_too_long`).
    EventParams,
}

impl Limit {
    /// Every limit, for documentation checks.
    pub const ALL: [Limit; 13] = [
        Limit::BodyBytes,
        Limit::BatchSize,
        Limit::QueuePerPlayer,
        Limit::ConnectionsPerIp,
        Limit::HeaderTimeout,
        Limit::WsMessageBytes,
        Limit::WsMessageRate,
        Limit::HelloTimeout,
        Limit::SessionsPerPlayer,
        Limit::BodyTimeout,
        Limit::InboundRate,
        Limit::Demo,
        Limit::EventParams,
    ];

    /// The `limit` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::BodyBytes => "body_bytes",
            Limit::BatchSize => "batch_size",
            Limit::QueuePerPlayer => "queue_per_player",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::HeaderTimeout => "header_timeout",
            Limit::WsMessageBytes => "ws_message_bytes",
            Limit::WsMessageRate => "ws_message_rate",
            Limit::HelloTimeout => "hello_timeout",
            Limit::SessionsPerPlayer => "sessions_per_player",
            Limit::BodyTimeout => "body_timeout",
            Limit::InboundRate => "inbound_rate",
            Limit::Demo => "demo",
            Limit::EventParams => "event_params",
        }
    }

    /// The limit an HTTP error code reports, if it is one.
    pub fn of_error_code(code: &str) -> Option<Limit> {
        Some(match code {
            "payload_too_large" => Limit::BodyBytes,
            "batch_too_large" => Limit::BatchSize,
            "queue_full" => Limit::QueuePerPlayer,
            "too_many_connections" => Limit::ConnectionsPerIp,
            "body_timeout" => Limit::BodyTimeout,
            "too_many_params" | "param_too_long" => Limit::EventParams,
            _ => return None,
        })
    }
}

/// A token bucket: `rate` per second on average, bursts of up to `burst`. A few bytes and no timer: it
/// refills when asked. One per WebSocket session (its incoming messages), one per brand (inbound
/// postbacks), one for the demo.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled at `per_second`.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate: per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// The bucket of a session's messages: `per_second`, in bursts of twice that.
    pub fn messages(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second);
        Self::new(rate, rate * 2.0, now)
    }

    /// Takes one token; when there is none, how long until there is.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate));
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// Takes one token; false when over the rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.take(now).is_ok()
    }
}

/// Open connections per client address, so one address cannot take the process's file descriptors.
/// Shared by the accept loop (direct clients) and the WebSocket upgrade (clients behind a trusted
/// proxy, known only by `X-Forwarded-For`). An IPv6 client is counted by its /64: one subscriber usually
/// holds a whole /64 and could otherwise take a new address per connection.
#[derive(Debug)]
pub struct PerIp {
    open: DashMap<IpAddr, u32>,
    max: u32,
}

/// One counted connection; dropping it frees the address's slot.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// At most `max` connections per address.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            open: DashMap::new(),
            max,
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it holds `max` already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = subscriber(ip);
        let mut open = self.open.entry(ip).or_insert(0);
        if *open >= self.max {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            ip,
        })
    }

    /// Connections counted for `ip` now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.open.get(&subscriber(ip)).map_or(0, |n| *n)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut entry) = self.owner.open.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// Where requests really come from when the hub sits behind proxies: `X-Forwarded-For` is believed only
/// when the connection comes from one of the configured proxies, and then only as far back as the chain
/// of trusted proxies goes.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    /// Trusts these networks (a single address is a /32 or /128).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets: nets.into() }
    }

    /// Whether `ip` is one of the proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer itself, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` entry that is not a trusted proxy (each proxy appends the address it saw, so
    /// entries left of the first untrusted one may be forged by the client).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.trusts(peer) {
            return peer;
        }
        let mut chain = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(forwarded_ip)
            .collect::<Vec<_>>();
        let mut client = peer;
        while let Some(entry) = chain.pop() {
            // A garbled entry ends the chain: what lies left of it cannot be trusted.
            let Some(ip) = entry else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The unit one client is counted by: an IPv4 address, or the /64 of an IPv6 one.
fn subscriber(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:5678`, `[2001:db8::1]:80`,
/// as some load balancers write it).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(canonical)
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses one `--trusted-proxies` entry: a network in CIDR notation, or a single address.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a network such as 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::messages(10, start);
        assert_eq!((0..25).filter(|_| bucket.allow(start)).count(), 20);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| bucket.allow(later)).count(), 5);
        // Idle time refills no further than the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| bucket.allow(much_later)).count(), 20);
    }

    #[test]
    fn an_empty_bucket_says_when_the_next_token_comes() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 1.0, start);
        assert_eq!(bucket.take(start), Ok(()));
        assert_eq!(bucket.take(start), Err(Duration::from_millis(500)));
        assert_eq!(bucket.take(start + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn per_ip_slots_are_counted_and_freed() {
        let limits = PerIp::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limits.acquire(ip).unwrap();
        let _b = limits.acquire(ip).unwrap();
        assert!(limits.acquire(ip).is_none());
        assert!(
            limits.acquire(other).is_some(),
            "another address has its own slots"
        );
        drop(a);
        assert_eq!(limits.open(ip), 1);
        assert!(limits.acquire(ip).is_some());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limits = PerIp::new(1);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _slot = limits.acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            limits.acquire(ip("2001:db8:1:2:ffff::9")).is_none(),
            "same /64"
        );
        assert!(
            limits.acquire(ip("2001:db8:1:3::1")).is_some(),
            "another /64"
        );
        let _mapped = limits.acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert!(
            limits.acquire(ip("192.0.2.1")).is_none(),
            "mapped IPv4 is that IPv4 address"
        );
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec![
            parse_net("10.0.0.0/8").unwrap(),
            parse_net("127.0.0.1").unwrap(),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let from = |s: &str| s.parse::<SocketAddr>().unwrap();
        // (peer, X-Forwarded-For, the client it names)
        let cases = [
            // A direct client cannot claim another address.
            ("203.0.113.9:5000", Some("198.51.100.7"), "203.0.113.9"),
            // Through the proxy, the proxy's view counts; a forged entry left of it does not.
            (
                "10.1.2.3:5000",
                Some("1.1.1.1, 198.51.100.7"),
                "198.51.100.7",
            ),
            // Two trusted hops are walked back.
            (
                "127.0.0.1:5000",
                Some("198.51.100.7, 10.9.9.9"),
                "198.51.100.7",
            ),
            // No header, or a garbled one: the proxy itself is all we know.
            ("10.1.2.3:1", None, "10.1.2.3"),
            ("10.1.2.3:1", Some("198.51.100.7, garbage"), "10.1.2.3"),
            // Ports and brackets, as some balancers write them, and empty entries are understood.
            (
                "10.1.2.3:1",
                Some("198.51.100.7:5678, [2001:db8::1]:443,"),
                "2001:db8::1",
            ),
        ];
        for (peer, header, client) in cases {
            let headers = header.map_or_else(HeaderMap::new, forwarded);
            assert_eq!(
                proxies.client_ip(from(peer), &headers),
                ip(client),
                "{peer} {header:?}"
            );
        }
        // IPv4 seen through a dual-stack socket is still IPv4.
        assert!(proxies.trusts(ip("::ffff:10.0.0.1")));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
