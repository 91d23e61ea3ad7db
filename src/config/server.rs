//! `[server]`: the listener, its connection limits and the proxies it trusts.

use std::{
    net::{IpAddr, SocketAddr},
    num::{NonZeroU64, NonZeroUsize},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

/// The smallest `max_header_bytes` (hyper's HTTP/1 server panics on a read buffer smaller than
/// this, and a head cap below it would refuse ordinary requests).
pub const MIN_MAX_HEADER_BYTES: usize = 8192;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    pub request_timeout_seconds: NonZeroU64,
    pub body_limit_bytes: usize,
    /// A connection's request head must arrive within this many seconds of its first byte (or
    /// of the connection); slower clients are disconnected.
    pub header_timeout_seconds: NonZeroU64,
    /// An idle keep-alive connection is closed after this many seconds.
    pub idle_timeout_seconds: NonZeroU64,
    /// Open connections at most; more are answered 503 `too_many_connections` and closed.
    pub max_connections: NonZeroUsize,
    /// Open connections from one client address (IPv4 address, IPv6 /64) at most; more are
    /// answered 503 `too_many_connections`. 0: no per-address cap (behind a proxy).
    pub max_connections_per_address: usize,
    /// The bytes a request head must fit in; a larger head is answered 431. At least 8192.
    pub max_header_bytes: usize,
    /// On SIGTERM, open connections get this long to finish before they are cut.
    pub shutdown_grace_seconds: u64,
    /// Serve `/metrics` on this address (e.g. an internal interface) instead of `listen`.
    #[serde(default, deserialize_with = "optional_socket_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// Reverse proxies whose `X-Forwarded-For` is believed: comma-separated IPs and CIDRs in
    /// the file and the variable, parsed once, here.
    pub trusted_proxies: TrustedProxies,
    /// The URL clients reach the service at: the base of the discovery document's URLs.
    #[serde(default)]
    pub public_url: Option<PublicUrl>,
    /// Take the discovery document's base URL from each request (`Host`; `X-Forwarded-Host`
    /// and `X-Forwarded-Proto` only from trusted proxies).
    pub public_url_from_request: bool,
}

/// An absolute `http`/`https` URL with a host and nothing after it but an optional `/`, kept
/// without the trailing slash (`https://sessions.example.com`, `http://127.0.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicUrl(String);

impl PublicUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let refuse = || {
            format!(
                "{text:?} is not a base URL: http(s)://host[:port] with no path, query or credentials, e.g. https://sessions.example.com"
            )
        };
        let url = url::Url::parse(text.trim()).map_err(|_| refuse())?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        if !plain {
            return Err(refuse());
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PublicUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<PublicUrl> for String {
    fn from(url: PublicUrl) -> Self {
        url.0
    }
}

/// The networks of trusted reverse proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated IPs and CIDRs, e.g. `10.0.0.0/8, 192.0.2.7`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "{s:?} is not an IP address or CIDR; expected comma-separated IP addresses and CIDRs, e.g. \"10.0.0.0/8, 192.0.2.7\""
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl TryFrom<String> for TrustedProxies {
    type Error = String;

    fn try_from(list: String) -> Result<Self, String> {
        Self::parse(&list)
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        list.join(", ").serialize(serializer)
    }
}

/// `server.listen` and `server.metrics_listen`: an IP address and a port. A host name is not
/// resolved; saying so beats "invalid socket address syntax". A bare port (`8080`, or the number
/// 8080 in a file) is answered with the two addresses it could have meant.
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(i64),
    }
    const VALID: &str = "expected an IP address and a port, e.g. 127.0.0.1:8080 (this host only), 0.0.0.0:8080 (every interface) or [::1]:8080; host names such as localhost are not resolved";
    let text = match Written::deserialize(deserializer)? {
        Written::Text(text) => text,
        Written::Number(port) => port.to_string(),
    };
    if let Ok(port) = text.trim().parse::<u16>() {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is a port without an address; {VALID} (for this port: 127.0.0.1:{port} or 0.0.0.0:{port})"
        )));
    }
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an IP address and port; {VALID}"))
    })
}

fn optional_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_address(deserializer).map(Some)
}
