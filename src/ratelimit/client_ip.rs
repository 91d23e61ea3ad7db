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

/// The client of a request that reached us from `peer`.
pub fn client_ip(proxies: &TrustedProxies, peer: SocketAddr, headers: &HeaderMap) -> ClientIp {
    let peer = peer.ip().to_canonical();
    if !proxies.contains(peer) {
        return ClientIp(peer);
    }
    // Walk the chain from the nearest hop; the first untrusted address is the client.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    ClientIp(
        hops.into_iter()
            .rev()
            .find(|ip| !proxies.contains(*ip))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
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
    }
}
