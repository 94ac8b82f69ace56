//! Who may ask: the client-network allowlist, checked before a request is even routed.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct Access {
    allow: Vec<IpNet>,
}

impl Access {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// IPv4 clients reaching a dual-stack socket appear as `::ffff:a.b.c.d`; they are matched
    /// as the IPv4 address they are, so `10.0.0.0/8` admits them.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(nets: &[&str]) -> Access {
        Access::new(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn allowlist_matches_v4_v6_and_mapped_addresses() {
        let a = access(&["10.0.0.0/8", "::1/128"]);
        assert!(a.allows("10.1.2.3".parse().expect("ip")));
        assert!(a.allows("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(a.allows("::1".parse().expect("ip")));
        assert!(!a.allows("192.168.1.1".parse().expect("ip")));
        assert!(!access(&[]).allows("127.0.0.1".parse().expect("ip")));
    }
}
