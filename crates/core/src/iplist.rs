//! IP allow/block lists (CIDR, IPv4 and IPv6). Networks are turned into merged, sorted address
//! ranges on the 128-bit line (IPv4 as IPv4-mapped IPv6), so a lookup is one binary search:
//! O(log n), fast with thousands of entries.
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A set of networks, ready for lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSet {
    ranges: Vec<(u128, u128)>,
}

impl IpSet {
    pub fn new(nets: &[IpNet]) -> Self {
        let mut ranges: Vec<(u128, u128)> =
            nets.iter().map(|n| (to_u128(n.network()), to_u128(n.broadcast()))).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let x = to_u128(ip);
        // The last range starting at or before x is the only one that can hold it.
        let i = self.ranges.partition_point(|(lo, _)| *lo <= x);
        i > 0 && self.ranges.get(i - 1).is_some_and(|(_, hi)| x <= *hi)
    }
}

/// Allow and block lists as configured or stored (CIDR text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub block: Vec<String>,
}

pub const MAX_RULES: usize = 10_000;

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{}` is not an IP address or CIDR network", t.chars().take(64).collect::<String>()))
}

/// Compiled rules: blocked if in `block`; otherwise allowed if `allow` is empty or holds the address.
#[derive(Clone, Debug, Default)]
pub struct IpPolicy {
    allow: IpSet,
    block: IpSet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVerdict {
    Allowed,
    Blocked,
    NotAllowed,
}

impl IpPolicy {
    pub fn compile(rules: &IpRules) -> Result<Self, String> {
        if rules.allow.len() + rules.block.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} IP rules"));
        }
        let allow: Vec<IpNet> = rules.allow.iter().map(|s| parse_net(s)).collect::<Result<_, _>>()?;
        let block: Vec<IpNet> = rules.block.iter().map(|s| parse_net(s)).collect::<Result<_, _>>()?;
        Ok(Self { allow: IpSet::new(&allow), block: IpSet::new(&block) })
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty()
    }

    pub fn check(&self, ip: IpAddr) -> IpVerdict {
        if self.block.contains(ip) {
            IpVerdict::Blocked
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            IpVerdict::NotAllowed
        } else {
            IpVerdict::Allowed
        }
    }
}

/// The client address: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy (addresses further
/// left were written by the client and prove nothing).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &IpSet) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else { return peer };
    let mut last = peer;
    for hop in xff.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { return last };
        if !trusted.contains(ip) {
            return ip;
        }
        last = ip;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn block_wins_and_allow_restricts() {
        let rules = IpRules {
            allow: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            block: vec!["10.1.2.3".into(), "10.9.0.0/16".into()],
        };
        let p = IpPolicy::compile(&rules).unwrap_or_default();
        assert_eq!(p.check(ip("10.0.0.1")), IpVerdict::Allowed);
        assert_eq!(p.check(ip("10.1.2.3")), IpVerdict::Blocked);
        assert_eq!(p.check(ip("10.9.255.255")), IpVerdict::Blocked);
        assert_eq!(p.check(ip("11.0.0.1")), IpVerdict::NotAllowed);
        assert_eq!(p.check(ip("2001:db8::1")), IpVerdict::Allowed);
        assert_eq!(p.check(ip("2001:db9::1")), IpVerdict::NotAllowed);
        assert!(IpPolicy::compile(&IpRules { allow: vec!["not-an-ip".into()], block: vec![] }).is_err());
    }

    #[test]
    fn thousands_of_networks_match_exactly() {
        let nets: Vec<IpNet> =
            (0..4096u32).map(|i| IpNet::from(IpAddr::from((0x0a00_0000 + i * 256).to_be_bytes()))).collect();
        let set = IpSet::new(&nets);
        assert!(set.contains(ip("10.0.0.0")));
        assert!(set.contains(ip("10.0.15.0")));
        assert!(!set.contains(ip("10.0.15.1")));
        assert!(!set.contains(ip("9.255.255.255")));
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let trusted = IpSet::new(&[parse_net("127.0.0.1").unwrap_or_else(|_| IpNet::from(ip("127.0.0.1")))]);
        assert_eq!(client_ip(ip("192.0.2.1"), Some("203.0.113.9"), &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("203.0.113.9"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("6.6.6.6, 203.0.113.9, 127.0.0.1"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("garbage"), &trusted), ip("127.0.0.1"));
    }
}
