//! Extractors whose rejections come out in our envelope: `ApiJson` (axum's `Json` with 400, 413
//! and 415 of ours) and `Authorized<S>` (the caller, when it holds the scope `S` names).

use std::marker::PhantomData;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header::CONTENT_TYPE, request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::{principal::Scope, Principal};

/// A scope a route needs, named as a type so a handler's signature says it.
pub trait Needs: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// `POST /public-api/sessions`.
pub struct Mint;
/// The minted tokens' records: read, list, revoke, introspect.
pub struct ManageTokens;
/// The revocation feed.
pub struct ReadRevocations;
/// Reading the directory.
pub struct ReadDirectory;
/// Writing the directory of tenants, end companies, agents and sessions.
pub struct WriteDirectory;

impl Needs for Mint {
    const SCOPE: Scope = Scope::Mint;
}
impl Needs for ManageTokens {
    const SCOPE: Scope = Scope::ManageTokens;
}
impl Needs for ReadRevocations {
    const SCOPE: Scope = Scope::ReadRevocations;
}
impl Needs for ReadDirectory {
    const SCOPE: Scope = Scope::ReadDirectory;
}
impl Needs for WriteDirectory {
    const SCOPE: Scope = Scope::WriteDirectory;
}

/// The authenticated caller, when it holds the scope `S` names; 403 `insufficient_scope`
/// (naming the scope) when it does not.
#[derive(Debug)]
pub struct Authorized<S> {
    pub principal: Principal,
    needs: PhantomData<fn() -> S>,
}

impl<S: Needs, St: Send + Sync> FromRequestParts<St> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Principal>() {
            // Only reachable if a route forgot the bearer layer: refuse rather than serve anonymously.
            None => Err(ApiError::MissingCredentials),
            Some(principal) if !principal.may(S::SCOPE) => Err(ApiError::InsufficientScope {
                needed: Some(S::SCOPE),
            }),
            Some(principal) => Ok(Self {
                principal: principal.clone(),
                needs: PhantomData,
            }),
        }
    }
}

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(request.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                    _ => ApiError::InvalidJson("the body could not be read".to_owned()),
                })?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if let Some(key) = duplicate_top_level_key(&bytes) {
            // Two readers of one body must not see two different requests (RFC 8259 §4: names
            // SHOULD be unique; which one wins differs between parsers).
            return Err(ApiError::InvalidJson(format!("duplicate key `{key}`")));
        }
        Ok(ApiJson(value))
    }
}

/// The first key that appears twice in a top-level JSON object (the body parsed already).
fn duplicate_top_level_key(bytes: &[u8]) -> Option<String> {
    struct FirstDuplicate(Option<String>);
    struct Visitor;

    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = FirstDuplicate;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(FirstDuplicate(Some(key)));
                }
            }
            Ok(FirstDuplicate(None))
        }
    }

    impl<'de> serde::Deserialize<'de> for FirstDuplicate {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(Visitor)
        }
    }

    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<FirstDuplicate>(bytes)
        .ok()
        .and_then(|d| d.0)
}

/// `application/json` or `application/<anything>+json`, parameters allowed.
fn is_json_content_type(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn duplicate_keys_are_found_at_the_top_level() {
        assert_eq!(
            duplicate_top_level_key(br#"{"session_id":"a","x":{"y":1},"session_id":"b"}"#)
                .as_deref(),
            Some("session_id")
        );
        assert_eq!(duplicate_top_level_key(br#"{"a":1,"b":{"a":2}}"#), None);
        assert_eq!(duplicate_top_level_key(br#"[1,1]"#), None);
        // Escapes are compared decoded: "\u0061" is "a".
        assert_eq!(
            duplicate_top_level_key(br#"{"a":1,"\u0061":2}"#).as_deref(),
            Some("a")
        );
    }

    async fn read(body: &[u8]) -> Result<serde_json::Value, ApiError> {
        let request = axum::http::Request::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_vec()))
            .expect("request");
        ApiJson::<serde_json::Value>::from_request(request, &())
            .await
            .map(|ApiJson(value)| value)
    }

    /// Bodies that are not JSON: 400 `invalid_json`, whatever is wrong with them.
    #[tokio::test]
    async fn malformed_json_is_invalid_json() {
        let bodies: Vec<(&str, &[u8])> = vec![
            ("truncated", br#"{"session_id": "s-acme-1""#),
            ("non-UTF-8 string", b"{\"session_id\": \"\xff\xfe\"}"),
            ("non-UTF-8 bytes only", b"\xff\xfe\xfd"),
            ("empty", b""),
            ("whitespace only", b"  \n "),
            ("trailing comma", br#"{"session_id": "s-acme-1",}"#),
            (
                "trailing garbage",
                br#"{"session_id": "s-acme-1"} trailing"#,
            ),
            ("single quotes", br#"{'session_id': 's-acme-1'}"#),
            ("NaN", br#"{"session_id": "s-acme-1", "ttl_seconds": NaN}"#),
            ("lone surrogate", br#"{"session_id": "\ud800"}"#),
        ];
        for (what, body) in bodies {
            let error = read(body).await.expect_err(what);
            assert!(
                matches!(error, ApiError::InvalidJson(_)),
                "{what}: {error:?}"
            );
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{what}");
        }
        assert!(read(br#"{"session_id": "s-acme-1"}"#).await.is_ok());
    }

    /// Two readers of one body must not see two different requests.
    #[tokio::test]
    async fn duplicate_keys_are_invalid_json() {
        for body in [
            r#"{"session_id": "s-acme-1", "session_id": "s-globex-1"}"#,
            r#"{"session_id": "s-acme-1", "client_id": null, "client_id": "globex"}"#,
            r#"{"session_id": "s-acme-1", "s\u0065ssion_id": "s-acme-wl"}"#,
        ] {
            match read(body.as_bytes()).await {
                Err(ApiError::InvalidJson(why)) => assert!(why.contains("duplicate key"), "{why}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_content_types() {
        let ok = |s: &'static str| is_json_content_type(Some(&HeaderValue::from_static(s)));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("application/jsonx"));
        assert!(!is_json_content_type(None));
    }
}
