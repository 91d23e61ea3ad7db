//! The client's IP: the socket peer, or, only when that peer is a configured trusted proxy, the
//! nearest address in `X-Forwarded-For` that is not itself a trusted proxy. A spoofed header
//! from anyone else changes nothing.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::config::TrustedProxies;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ClientIp {
    /// The failed-authentication bucket of this address: the address itself for IPv4, its /64
    /// for IPv6 (one subscriber holds a whole /64, so a per-/128 bucket would give it 2^64 of
    /// them).
    pub fn bucket_key(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => format!("ip:{v4}"),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`), or `None` when it is not an address.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = hop.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

/// The client of a request that reached us from `peer`. Behind trusted proxies, the chain is
/// walked from the nearest hop: trusted hops are skipped, the first untrusted address is the
/// client, and an entry that is not an address ends the walk (whatever stands left of it was
/// written by someone we cannot vouch for), leaving the last trusted hop as the client.
pub fn client_ip(proxies: &TrustedProxies, peer: SocketAddr, headers: &HeaderMap) -> ClientIp {
    let peer = peer.ip().to_canonical();
    if !proxies.contains(peer) {
        return ClientIp(peer);
    }
    let mut client = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().ok());
    // Header lines in order, entries left to right; walked from the right.
    let mut hops: Vec<Option<&str>> = Vec::new();
    for value in entries {
        match value {
            Some(value) => hops.extend(value.split(',').map(Some)),
            None => hops.push(None),
        }
    }
    for hop in hops.into_iter().rev() {
        let Some(ip) = hop.and_then(parse_hop).map(|ip| ip.to_canonical()) else {
            break;
        };
        client = ip;
        if !proxies.contains(ip) {
            break;
        }
    }
    ClientIp(client)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a = ClientIp("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientIp("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = ClientIp("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a.bucket_key(), b.bucket_key());
        assert_ne!(a.bucket_key(), c.bucket_key());
        assert_eq!(
            ClientIp("192.0.2.1".parse().unwrap()).bucket_key(),
            "ip:192.0.2.1"
        );
    }

    use super::*;
    use axum::http::HeaderValue;

    fn xff(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        let from = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 443);
        let ip = |s: &str| ClientIp(s.parse().unwrap());
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(&proxies, from("203.0.113.9"), &xff("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Trusted peer: the nearest untrusted hop; spoofed hops further left are ignored.
        assert_eq!(
            client_ip(&proxies, from("10.1.2.3"), &xff("6.6.6.6, 198.51.100.4")),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(&proxies, from("192.0.2.7"), &xff("198.51.100.4, 10.9.9.9")),
            ip("198.51.100.4")
        );
        // Trusted peer without a usable header: the peer.
        assert_eq!(
            client_ip(&proxies, from("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(&proxies, from("10.1.2.3"), &xff("garbage")),
            ip("10.1.2.3")
        );
        // Gateways that append ip:port or [v6]:port: the port is not a reason to walk on into
        // what the client wrote.
        assert_eq!(
            client_ip(
                &proxies,
                from("10.1.2.3"),
                &xff("6.6.6.6, 198.51.100.4:51234")
            ),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(
                &proxies,
                from("10.1.2.3"),
                &xff("6.6.6.6, [2001:db8::7]:443, 10.0.0.2")
            ),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(&proxies, from("10.1.2.3"), &xff("[2001:db8::7]")),
            ip("2001:db8::7")
        );
        // An entry that is not an address stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(
                &proxies,
                from("10.1.2.3"),
                &xff("6.6.6.6, unknown, 10.0.0.2")
            ),
            ip("10.0.0.2")
        );
    }
}
