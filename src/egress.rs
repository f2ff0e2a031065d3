//! Where the hub's own requests may go: the guard against server-side request forgery.
//!
//! An `s2s` definition is a URL that a brand (or anyone holding its API key) writes and the hub fetches
//! from inside the operator's network. Left alone, that reaches whatever the hub can reach: a database's
//! HTTP port on loopback, an internal admin page, the cloud metadata service at `169.254.169.254`; and the
//! delivery report would show the answer. So every destination is checked **on the address the hub is
//! about to connect to**:
//! - a host written as an IP address (in any notation the URL standard reads: `0x7f000001`,
//!   `2130706433`, `[::ffff:127.0.0.1]` are all `127.0.0.1` once parsed) is checked before the request,
//!   when the definition is saved, and on every redirect hop;
//! - a host name is checked by the resolver the HTTP client connects with ([`GuardedResolver`]): only the
//!   addresses that pass are handed to the connector, so a name that resolves to a private address (or
//!   starts to, DNS rebinding) is refused at connect time, on every hop.
//!
//! Refused: loopback, private (RFC 1918, unique-local IPv6), link-local (cloud metadata included),
//! carrier-grade NAT, multicast, unspecified, and every other range IANA lists as not globally reachable
//! (documentation, benchmarking, reserved, IPv6 outside global unicast). An IPv6 address that embeds an
//! IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4 address. The operator may allow networks
//! (`--s2s-allow-networks`) for on-premise affiliate systems; and when the demo is on, its pixel receiver
//! (`/demo/hit` on the hub's own listener) is reachable so the README's walk-through works, but nothing
//! else on loopback is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The path of the demo's pixel receiver, the one loopback destination a default hub may reach.
pub const DEMO_RECEIVER_PATH: &str = "/demo/hit";

/// Why an address is not a public destination; the `reason` label of `pixelhub_s2s_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`), unique-local and site-local IPv6, local NAT64.
    Private,
    /// `169.254.0.0/16` (where cloud metadata services answer), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Any other range that is not globally reachable: documentation, benchmarking, reserved for future
    /// use, broadcast, IETF protocol assignments, IPv6 outside global unicast.
    Reserved,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Loopback => "loopback",
            Reason::Private => "private",
            Reason::LinkLocal => "link_local",
            Reason::SharedAddressSpace => "shared_address_space",
            Reason::Multicast => "multicast",
            Reason::Unspecified => "unspecified",
            Reason::Reserved => "reserved",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::Loopback => "a loopback address",
            Reason::Private => "a private address",
            Reason::LinkLocal => "a link-local address (where cloud metadata services answer)",
            Reason::SharedAddressSpace => "a carrier-grade NAT address",
            Reason::Multicast => "a multicast address",
            Reason::Unspecified => "an unspecified address",
            Reason::Reserved => "a reserved address, not reachable on the internet",
        }
    }
}

/// A destination the hub will not send to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    /// The address refused.
    pub address: IpAddr,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination refused: {} is {}; postbacks go to public addresses only (an operator can allow a network with --s2s-allow-networks)",
            self.address,
            self.reason.describe()
        )
    }
}

/// Why `ip` is not a public destination; `None` when it is one.
pub fn classify(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Reason> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => Reason::Unspecified,
        (10, _, _) => Reason::Private,
        (100, 64..=127, _) => Reason::SharedAddressSpace,
        (127, _, _) => Reason::Loopback,
        (169, 254, _) => Reason::LinkLocal,
        (172, 16..=31, _) => Reason::Private,
        (192, 168, _) => Reason::Private,
        // IETF protocol assignments, TEST-NET-1, the old 6to4 relay anycast.
        (192, 0, 0) | (192, 0, 2) | (192, 88, 99) => Reason::Reserved,
        // Benchmarking (198.18.0.0/15), TEST-NET-2 and -3.
        (198, 18..=19, _) | (198, 51, 100) | (203, 0, 113) => Reason::Reserved,
        (224..=239, _, _) => Reason::Multicast,
        // 240.0.0.0/4, reserved, with the broadcast address.
        (240..=255, _, _) => Reason::Reserved,
        _ => return None,
    };
    Some(reason)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Reason> {
    if ip.is_unspecified() {
        return Some(Reason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Reason::Loopback);
    }
    // Addresses that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d), NAT64's well-known
    // prefix (64:ff9b::/96) and 6to4 (2002:AABB:CCDD::/48).
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    let reason = match s[0] {
        0xfc00..=0xfdff | 0xfec0..=0xfeff => Reason::Private,
        0xfe80..=0xfebf => Reason::LinkLocal,
        0xff00..=0xffff => Reason::Multicast,
        // Local-use NAT64 (64:ff9b:1::/48) translates to private IPv4 space.
        0x64 if s[1] == 0xff9b && s[2] == 1 => Reason::Private,
        // IETF protocol assignments (Teredo among them), documentation (2001:db8::/32, 3fff::/20),
        // segment routing SIDs (5f00::/16).
        0x2001 if s[1] < 0x0200 || s[1] == 0x0db8 => Reason::Reserved,
        0x3fff if s[1] < 0x1000 => Reason::Reserved,
        0x5f00 => Reason::Reserved,
        // Everything outside global unicast (2000::/3): IPv4-compatible, discard-only, unassigned.
        first if !(0x2000..=0x3fff).contains(&first) => Reason::Reserved,
        _ => return None,
    };
    Some(reason)
}

/// The destinations this hub's postbacks may reach. Cheap to share.
#[derive(Debug, Default)]
pub struct Egress {
    /// Networks the operator allows although they are not public.
    allowed: Vec<IpNet>,
    /// The hub's own listener, when the demo (and so its pixel receiver) is served on loopback or on
    /// every interface; `None` otherwise.
    demo: Option<SocketAddr>,
}

impl Egress {
    /// A policy allowing public addresses and the `allowed` networks, and the demo receiver of the hub
    /// listening on `listener` when `demo` is on.
    pub fn new(allowed: Vec<IpNet>, demo: bool, listener: SocketAddr) -> Self {
        let own = match listener.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => {
                let ip = if ip.is_unspecified() {
                    Ipv4Addr::LOCALHOST
                } else {
                    ip
                };
                Some(SocketAddr::from((ip, listener.port())))
            }
            IpAddr::V6(ip) if ip.is_unspecified() || ip.is_loopback() => {
                Some(SocketAddr::from((Ipv6Addr::LOCALHOST, listener.port())))
            }
            _ => None,
        };
        Egress {
            allowed,
            demo: own.filter(|_| demo),
        }
    }

    /// Whether the hub may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = match ip {
            // Written either way, an IPv4 address is the same destination.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match classify(ip) {
            Some(reason) if !self.allowed.iter().any(|net| net.contains(&ip)) => Err(Refused {
                address: ip,
                reason,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `url` may be requested, as far as its host says before any lookup: a host written as an
    /// address is checked; a name is checked when it is resolved ([`GuardedResolver`]). The demo's
    /// receiver is not exempt here: only a postback's own URL may be it ([`Egress::demo_receiver`]),
    /// never a redirect's next hop, which would be connected to as written.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// When `url` is the demo's pixel receiver on this hub (`http://127.0.0.1:<port>/demo/hit?…`, or
    /// `localhost`, or `[::1]`), the same URL on the hub's own loopback listener, which is where it is
    /// sent; `None` for any other URL.
    pub fn demo_receiver(&self, url: &url::Url) -> Option<url::Url> {
        let own = self.demo?;
        let loopback = match url.host()? {
            url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        let ours = loopback
            && url.scheme() == "http"
            && url.port_or_known_default() == Some(own.port())
            && url.path() == DEMO_RECEIVER_PATH
            && url.username().is_empty()
            && url.password().is_none();
        if !ours {
            return None;
        }
        let mut target = url.clone();
        target.set_ip_host(own.ip()).ok()?;
        Some(target)
    }

    /// The resolver the postback client connects with.
    pub fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            egress: Arc::clone(self),
        })
    }
}

/// A DNS resolver that hands the HTTP client only the addresses [`Egress`] allows, so a host name is
/// checked on the very addresses the connection is made to, at every hop of a redirect.
#[derive(Debug)]
pub struct GuardedResolver {
    egress: Arc<Egress>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = Arc::clone(&self.egress);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match egress.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(refused)) => {
                    Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The [`Refused`] behind an error of the HTTP client, if a refusal is what made it fail.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_non_public_range_is_refused_with_its_reason() {
        use Reason::*;
        for (address, reason) in [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("192.0.2.10", Reserved),
            ("198.18.0.1", Reserved),
            ("198.51.100.1", Reserved),
            ("203.0.113.9", Reserved),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("2001:db8::1", Reserved),
            ("2001::1", Reserved),
            ("100::1", Reserved),
            ("::127.0.0.1", Reserved),
            // IPv4 inside IPv6 is judged as IPv4.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b:1::1", Private),
            ("2002:7f00:1::1", Loopback),
        ] {
            assert_eq!(classify(ip(address)), Some(reason), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.3.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(classify(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn allowed_networks_open_exactly_themselves() {
        let egress = Egress::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            false,
            "127.0.0.1:8080".parse().unwrap(),
        );
        assert!(egress.check_ip(ip("127.0.0.1")).is_ok());
        assert!(egress.check_ip(ip("::ffff:127.0.0.1")).is_ok());
        assert!(egress.check_ip(ip("10.1.2.3")).is_ok());
        let refused = egress.check_ip(ip("10.2.0.1")).unwrap_err();
        assert_eq!(refused.reason, Reason::Private);
        assert!(
            egress.check_ip(ip("::1")).is_err(),
            "not in an allowed network"
        );
    }

    #[test]
    fn any_notation_of_an_address_is_the_address() {
        let egress = Egress::default();
        for url in [
            "http://127.0.0.1:9000/secret",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(egress.check_url(&parsed).is_err(), "{url}");
        }
        for url in [
            "https://aff.example/pb",
            "http://8.8.8.8/",
            "http://localhost/",
        ] {
            // Names are checked when resolved, not here.
            assert!(
                egress.check_url(&url::Url::parse(url).unwrap()).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn the_demo_receiver_is_only_the_hubs_own_hit_path() {
        let egress = Egress::new(Vec::new(), true, "0.0.0.0:8080".parse().unwrap());
        let target = |u: &str| {
            egress
                .demo_receiver(&url::Url::parse(u).unwrap())
                .map(|t| t.to_string())
        };
        assert_eq!(
            target("http://127.0.0.1:8080/demo/hit?kind=s2s&a=1").as_deref(),
            Some("http://127.0.0.1:8080/demo/hit?kind=s2s&a=1")
        );
        assert_eq!(
            target("http://localhost:8080/demo/hit").as_deref(),
            Some("http://127.0.0.1:8080/demo/hit")
        );
        for other in [
            "http://127.0.0.1:8080/api/v1/stats",
            "http://127.0.0.1:8081/demo/hit",
            "https://127.0.0.1:8080/demo/hit",
            "http://10.0.0.1:8080/demo/hit",
            "http://u:p@127.0.0.1:8080/demo/hit",
        ] {
            assert_eq!(target(other), None, "{other}");
            assert!(
                egress.check_url(&url::Url::parse(other).unwrap()).is_err(),
                "{other}"
            );
        }
        let off = Egress::new(Vec::new(), false, "127.0.0.1:8080".parse().unwrap());
        assert!(
            off.demo_receiver(&url::Url::parse("http://127.0.0.1:8080/demo/hit").unwrap())
                .is_none()
        );
        let public = Egress::new(Vec::new(), true, "192.0.2.7:8080".parse().unwrap());
        assert!(
            public
                .demo_receiver(&url::Url::parse("http://127.0.0.1:8080/demo/hit").unwrap())
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_name_is_checked_on_the_addresses_it_resolves_to() {
        let resolver = Arc::new(Egress::default()).resolver();
        let error = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refused = refusal_in(error.as_ref()).expect("a refusal");
        assert_eq!(refused.reason, Reason::Loopback);

        let allowed = Arc::new(Egress::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            false,
            "127.0.0.1:1".parse().unwrap(),
        ));
        let addrs: Vec<SocketAddr> = allowed
            .resolver()
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
