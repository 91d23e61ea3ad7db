//! `GET /.well-known/jwks.json`: the public keys that verify our session tokens (every `next`,
//! `active` and `retired` key), so the chat service verifies them without calling us; served
//! from memory with an `ETag`. `GET /.well-known/openid-configuration`: where to find them, and
//! the introspection endpoint, under the configured public URL (or the request's, if allowed).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, State},
    http::{
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, VARY},
        HeaderMap, HeaderName, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{envelope::ErrorEnvelope, error::ApiError, AppState};
use crate::{
    config::{PublicUrl, TrustedProxies},
    store::StoreError,
    tokens::PublicJwk,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks_get",
    tag = "Meta",
    summary = "Public keys of minted session tokens (RFC 7517 JWK Set)",
    description = "Every key that signs now, will sign soon (`next`: published before it signs, for longer than `max-age`), or signed tokens that may still be live (`retired`). Cache it as `Cache-Control` says; refetch on an unknown `kid`.",
    responses(
        (status = 200, description = "The JWK Set.", body = JwkSet,
            headers(
                ("Cache-Control" = String, description = "`public, max-age=<NEO_JWKS_MAX_AGE_SECONDS>`"),
                ("ETag" = String, description = "Changes whenever the published keys do."),
            )),
        (status = 304, description = "`If-None-Match` names the current `ETag`."),
        (status = 503, description = "`database_unavailable`: no signing key is loaded yet (the database has not answered since start). Sent with `Retry-After` and `Cache-Control: no-store`, never as an empty, cacheable key set.", body = ErrorEnvelope,
            headers(
                ("Retry-After" = u64, description = "Seconds to wait before retrying."),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
    )
)]
pub async fn jwks(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let published = state.issuer.published_jwks();
    if published.is_empty() {
        // The keys live in the database, which has not answered since start. An empty set
        // must not be cached: verifiers would refuse every token for `max-age`.
        let mut response = ApiError::DatabaseUnavailable(StoreError::Unavailable).into_response();
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let cache_control = HeaderValue::from_str(&format!(
        "public, max-age={}",
        state.config.signing.jwks_max_age_seconds
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=300"));
    let etag = HeaderValue::from_str(&published.etag).ok();
    let not_modified = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == published.etag || tag.trim() == "*");
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            published.body,
        )
            .into_response()
    };
    response.headers_mut().insert(CACHE_CONTROL, cache_control);
    if let Some(etag) = etag {
        response.headers_mut().insert(ETAG, etag);
    }
    response
}

/// OpenID-style discovery metadata: enough for standard JWT libraries to find our keys, and for
/// standard OAuth 2.0 clients our introspection endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryDocument {
    /// The `iss` of our tokens.
    pub issuer: String,
    pub jwks_uri: String,
    /// RFC 7662 introspection (`POST`, a form, the bare answer).
    pub introspection_endpoint: String,
    /// How a client authenticates there: an API key as HTTP Basic client credentials (a bearer
    /// API key works too).
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The algorithms our keys may sign with.
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
}

#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    operation_id = "openid_configuration_get",
    tag = "Meta",
    summary = "Discovery metadata: issuer, JWKS and introspection locations",
    description = "The URLs start with `server.public_url` (unset: the token issuer; `serve --demo`: its listen address), or, with `server.public_url_from_request`, with the request's own `Host` (`X-Forwarded-Host`/`X-Forwarded-Proto` from trusted proxies only).",
    responses((status = 200, description = "The metadata.", body = DiscoveryDocument))
)]
pub async fn openid_configuration(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let server = &state.config.server;
    let from_request = server
        .public_url_from_request
        .then(|| {
            let peer = peer.map(|Extension(ConnectInfo(peer))| peer);
            base_url_of_request(&server.trusted_proxies, peer, &headers)
        })
        .flatten();
    let base = from_request.as_deref().unwrap_or(&state.public_url);
    let document = DiscoveryDocument {
        issuer: state.config.token.issuer.clone(),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        introspection_endpoint: format!("{base}{}", super::INTROSPECTION_PATH),
        introspection_endpoint_auth_methods_supported: vec!["client_secret_basic"],
        id_token_signing_alg_values_supported: vec!["ES256", "EdDSA", "RS256"],
    };
    let mut response = (
        [(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        )],
        Json(document),
    )
        .into_response();
    if server.public_url_from_request {
        // A cache must not hand one host's answer to another.
        response.headers_mut().insert(
            VARY,
            HeaderValue::from_static("Host, X-Forwarded-Host, X-Forwarded-Proto"),
        );
    }
    response
}

/// `<scheme>://<host>` of the request: its `Host` over plain HTTP (this server speaks nothing
/// else), or, when `peer` is a trusted proxy, the one `X-Forwarded-Host` and
/// `X-Forwarded-Proto` it sent (`Host` and `http` for one it did not send). `None` when the host
/// is not a plain host name or address with an optional port.
fn base_url_of_request(
    proxies: &TrustedProxies,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<String> {
    // One value, or nothing: a list (several proxies appending) cannot be vouched for.
    let single = |name: HeaderName| -> Option<&str> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok().filter(|v| !v.contains(',')),
            _ => None,
        }
    };
    let from_proxy = peer.is_some_and(|peer| proxies.contains(peer.ip().to_canonical()));
    let forwarded_host = from_proxy
        .then(|| single(HeaderName::from_static("x-forwarded-host")))
        .flatten();
    let host = forwarded_host.or_else(|| single(HOST))?.trim();
    let scheme = match from_proxy
        .then(|| single(HeaderName::from_static("x-forwarded-proto")))
        .flatten()
        .map(str::trim)
    {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
        Some(_) => return None,
        None => "http",
    };
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !plain {
        return None;
    }
    PublicUrl::parse(&format!("{scheme}://{host}"))
        .ok()
        .map(|url| url.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_comes_from_host_and_from_a_trusted_proxys_forwarded_headers_only() {
        let proxies = TrustedProxies::parse("10.0.0.1").unwrap_or_default();
        let proxy = Some(SocketAddr::from(([10, 0, 0, 1], 4000)));
        let stranger = Some(SocketAddr::from(([192, 0, 2, 9], 4000)));
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let forwarded = headers(&[
            ("host", "10.0.0.2:8080"),
            ("x-forwarded-host", "sessions.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let base = |peer, map: &HeaderMap| base_url_of_request(&proxies, peer, map);
        assert_eq!(
            base(proxy, &forwarded).as_deref(),
            Some("https://sessions.example.com")
        );
        assert_eq!(
            base(stranger, &forwarded).as_deref(),
            Some("http://10.0.0.2:8080")
        );
        assert_eq!(
            base(None, &headers(&[("host", "[::1]:8080")])).as_deref(),
            Some("http://[::1]:8080")
        );
        for hostile in [
            headers(&[("host", "evil.example/path")]),
            headers(&[("host", "user@evil.example")]),
            headers(&[("host", "a b")]),
            headers(&[]),
            headers(&[("host", "a"), ("host", "b")]),
        ] {
            assert_eq!(base(stranger, &hostile), None, "{hostile:?}");
        }
        let odd_proto = headers(&[("host", "h"), ("x-forwarded-proto", "gopher")]);
        assert_eq!(base(proxy, &odd_proto), None);
        let listed = headers(&[("host", "h"), ("x-forwarded-host", "a.example, b.example")]);
        assert_eq!(base(proxy, &listed).as_deref(), Some("http://h"));
    }
}
