//! Who may ask: the client-network allowlist, the trusted reverse proxies whose
//! `X-Forwarded-For` is believed, and whether a client token is required. Checked before a
//! request reaches the caches; replaced as a whole when the configuration is reloaded.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Access {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    /// Who may read the status page (besides being let in at all).
    status_allow: Vec<IpNet>,
    pub require_tokens: bool,
}

/// `X-Forwarded-For` from a trusted proxy that names no usable address. The proxy that sent it
/// is trusted, so this is a misconfiguration to report, not a client to guess at.
#[derive(Debug, PartialEq, Eq)]
pub struct BadForwardedFor;

/// IPv4 clients reaching a dual-stack socket appear as `::ffff:a.b.c.d`; they are matched as
/// the IPv4 address they are, so `10.0.0.0/8` admits them.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` element: an address, optionally with a port (`1.2.3.4:5678`,
/// `[::1]:5678`) as some balancers write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

impl Access {
    pub fn new(allow: Vec<IpNet>, trusted_proxies: Vec<IpNet>, require_tokens: bool) -> Self {
        Self {
            allow,
            trusted_proxies,
            status_allow: Vec::new(),
            require_tokens,
        }
    }

    /// Lets the clients in `nets` read the status page.
    pub fn with_status_allow(mut self, nets: Vec<IpNet>) -> Self {
        self.status_allow = nets;
        self
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(
            config.allow.clone(),
            config.trusted_proxies.clone(),
            config.require_tokens,
        )
        .with_status_allow(config.status_allow.clone())
    }

    /// Whether `client` may read the status page: it shows who downloaded what, so it is for
    /// the ops network only.
    pub fn allows_status(&self, client: IpAddr) -> bool {
        contains(&self.status_allow, client)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        contains(&self.allow, ip)
    }

    /// Whether a connection from `peer` can lead to a served request at all: the peer is a
    /// client let in, or a trusted proxy speaking for clients.
    pub fn admits_peer(&self, peer: IpAddr) -> bool {
        self.allows(peer) || contains(&self.trusted_proxies, peer)
    }

    /// The client a request is from. Only a trusted peer's `X-Forwarded-For` is read, right to
    /// left: each trusted proxy appends the address it received from, so the first address
    /// that is not itself a trusted proxy is the client. Anything to its left was written by
    /// the client and could be forged.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, BadForwardedFor> {
        if !contains(&self.trusted_proxies, peer) {
            return Ok(canonical(peer));
        }
        let mut client = canonical(peer);
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().map_err(|_| BadForwardedFor))
            .collect::<Result<_, _>>()?;
        // Repeated headers are one list, in order.
        for hop in values.iter().flat_map(|v| v.split(',')).rev() {
            if hop.trim().is_empty() {
                continue;
            }
            let ip = canonical(parse_hop(hop).ok_or(BadForwardedFor)?);
            client = ip;
            if !contains(&self.trusted_proxies, ip) {
                break;
            }
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn allowlist_matches_v4_v6_and_mapped_addresses() {
        let a = Access::new(nets(&["10.0.0.0/8", "::1/128"]), vec![], false);
        assert!(a.allows(ip("10.1.2.3")));
        assert!(a.allows(ip("::ffff:10.1.2.3")));
        assert!(a.allows(ip("::1")));
        assert!(!a.allows(ip("192.168.1.1")));
        assert!(!Access::new(vec![], vec![], false).allows(ip("127.0.0.1")));
        let behind = Access::new(nets(&["10.0.0.0/8"]), nets(&["192.0.2.1/32"]), false);
        assert!(behind.admits_peer(ip("10.9.9.9")));
        assert!(behind.admits_peer(ip("::ffff:192.0.2.1")));
        assert!(!behind.admits_peer(ip("192.0.2.2")));
        let status = Access::new(nets(&["0.0.0.0/0"]), vec![], false)
            .with_status_allow(nets(&["127.0.0.0/8"]));
        assert!(status.allows_status(ip("::ffff:127.0.0.1")));
        assert!(!status.allows_status(ip("10.1.2.3")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let a = Access::new(vec![], nets(&["10.0.0.1/32", "10.0.0.2/32"]), false);
        // An untrusted peer's header is ignored.
        assert_eq!(
            a.client(ip("192.0.2.7"), &xff(&["10.9.9.9"])),
            Ok(ip("192.0.2.7"))
        );
        // A trusted peer without the header is the client itself (a balancer's health check).
        assert_eq!(
            a.client(ip("10.0.0.1"), &HeaderMap::new()),
            Ok(ip("10.0.0.1"))
        );
        // Right to left, skipping trusted proxies; what the client forged on the left is ignored.
        assert_eq!(
            a.client(ip("10.0.0.1"), &xff(&["6.6.6.6, 203.0.113.5, 10.0.0.2"])),
            Ok(ip("203.0.113.5"))
        );
        assert_eq!(
            a.client(
                ip("::ffff:10.0.0.1"),
                &xff(&["6.6.6.6", "203.0.113.5:4711"])
            ),
            Ok(ip("203.0.113.5"))
        );
        assert_eq!(
            a.client(ip("10.0.0.1"), &xff(&["[2001:db8::1]:443"])),
            Ok(ip("2001:db8::1"))
        );
        // Only trusted hops: the leftmost of them.
        assert_eq!(
            a.client(ip("10.0.0.1"), &xff(&["10.0.0.2"])),
            Ok(ip("10.0.0.2"))
        );
        assert_eq!(
            a.client(ip("10.0.0.1"), &xff(&["6.6.6.6, unknown"])),
            Err(BadForwardedFor)
        );
    }
}
