//! `GET /docs`: the OpenAPI document rendered for people by Redoc, whose standalone bundle is
//! vendored in `assets/redoc/` (version, licence, how to refresh it) and built into the binary:
//! the page loads its script from this server and nothing from any other host.

use std::sync::OnceLock;

use axum::{
    body::Bytes,
    http::{
        header::{
            ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY,
            CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
        },
        HeaderMap, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
};

/// The page: a `<redoc>` element (its attributes are Redoc's options) and the bundle's script.
const PAGE: &str = include_str!("docs.html");
/// Redoc's standalone bundle, stored gzip-compressed: 327 KB in the binary instead of 1.1 MB.
const REDOC_GZIP: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js.gz");
/// The vendored Redoc version (`assets/redoc/VERSION`), which names the bundle's `ETag`.
const REDOC_VERSION: &str = include_str!("../../assets/redoc/VERSION");

/// Only this server's own script; inline styles because Redoc's styled-components inject them.
/// No workers (Redoc's search would start one from a `blob:` URL, so the page turns it off) and
/// no images from elsewhere (Redoc's footer logo, from its CDN, is refused and hides itself).
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// A day: the bundle changes only with the binary, and the `ETag` makes a refetch cheap.
const BUNDLE_CACHE_CONTROL: &str = "public, max-age=86400";

#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs_get",
    tag = "Meta",
    summary = "This API, rendered for people",
    description = "An HTML page that renders `/public-api/openapi.json` with Redoc, built into the binary (`/docs/redoc.standalone.js`): nothing is loaded from a CDN.",
    responses((status = 200, description = "The HTML page.", content_type = "text/html", body = String,
        headers(("Content-Security-Policy" = String, description = "Scripts from this server only."))))
)]
pub async fn docs() -> impl IntoResponse {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP)),
        ],
        PAGE,
    )
}

#[utoipa::path(
    get,
    path = "/docs/redoc.standalone.js",
    operation_id = "docs_redoc_get",
    tag = "Meta",
    summary = "The Redoc bundle `/docs` runs",
    description = "Redoc's standalone bundle (MIT), vendored in the binary. Sent gzip-compressed to clients that accept gzip, else inflated.",
    responses(
        (status = 200, description = "The script.", content_type = "text/javascript", body = String,
            headers(
                ("Cache-Control" = String, description = "`public, max-age=86400`"),
                ("ETag" = String, description = "Names the Redoc version."),
                ("Content-Encoding" = String, description = "`gzip` when the request's `Accept-Encoding` allows it."),
                ("Vary" = String, description = "`Accept-Encoding`"),
            )),
        (status = 304, description = "`If-None-Match` names the current `ETag`."),
    )
)]
pub async fn redoc_bundle(headers: HeaderMap) -> Response {
    let etag = format!("\"redoc-{}\"", REDOC_VERSION.trim());
    let not_modified = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(&headers) {
        (
            [(CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
            Bytes::from_static(REDOC_GZIP),
        )
            .into_response()
    } else {
        match inflated_bundle() {
            Some(bundle) => bundle.clone().into_response(),
            // Cannot happen with the bundle the build embedded (a test inflates it); a 500
            // beats a script that is not one.
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(BUNDLE_CACHE_CONTROL),
    );
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    response
}

/// The bundle inflated, once, for the rare client that does not accept gzip (so that many such
/// requests cost one inflation, not one each).
fn inflated_bundle() -> Option<&'static Bytes> {
    static INFLATED: OnceLock<Option<Bytes>> = OnceLock::new();
    INFLATED
        .get_or_init(|| {
            let mut bundle = Vec::with_capacity(REDOC_GZIP.len() * 4);
            let mut decoder = flate2::read::GzDecoder::new(REDOC_GZIP);
            std::io::Read::read_to_end(&mut decoder, &mut bundle).ok()?;
            Some(Bytes::from(bundle))
        })
        .as_ref()
}

/// Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3): `gzip` or `*` with a weight other
/// than zero, and no `gzip;q=0` that takes it back.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let weight_is_zero = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(!weight_is_zero);
            } else if coding == "*" {
                any = Some(!weight_is_zero);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn gzip_is_sent_only_where_accept_encoding_allows_it() {
        for (value, gzip) in [
            ("gzip, deflate, br, zstd", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("*", true),
            ("x-gzip", true),
            ("identity", false),
            ("gzip;q=0", false),
            ("gzip;q=0.000, *", false),
            ("*;q=0", false),
            ("br, *;q=0.1", true),
            ("deflate", false),
        ] {
            assert_eq!(accepts_gzip(&accept(value)), gzip, "{value}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_embedded_bundle_inflates_to_redoc_of_the_vendored_version() {
        let bundle = inflated_bundle().expect("the embedded bundle is valid gzip");
        let text = std::str::from_utf8(bundle).expect("the bundle is UTF-8");
        assert!(
            text.contains(&format!("ReDoc Version: \",\"{}\"", REDOC_VERSION.trim())),
            "assets/redoc/VERSION does not name the bundle's version"
        );
    }
}
