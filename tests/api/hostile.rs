//! Hostile input against the real router: malformed and oversized bodies, wrong content types,
//! injection attempts, odd credentials and request ids. Every refusal must come out in the error
//! envelope with its stable code, and must record nothing. (Bodies of the wrong shape are the
//! table of `mint::request`'s unit tests.)

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{header::HeaderValue, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{
    assert_error, header, request_id, www_authenticate, Backend, TestApp, ACME_KEY,
    ACME_REVOKED_KEY, JSON, MINT_PATH,
};

/// `server.body_limit_bytes` by default.
const BODY_LIMIT: usize = 64 * 1024;

/// A valid mint body padded with an unknown field to exactly `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let prefix = br#"{"session_id":"s-acme-1","padding":""#;
    let suffix = br#""}"#;
    let fill = len - prefix.len() - suffix.len();
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(prefix);
    body.resize(prefix.len() + fill, b'x');
    body.extend_from_slice(suffix);
    assert_eq!(body.len(), len);
    body
}

// ---------------------------------------------------------------------------------------------
// Bodies that are not JSON. (The shape of a JSON body is `mint::request`'s, unit-tested there.)

/// One malformed body from the outside: the route reads its body through `ApiJson`, whose unit
/// tests hold the other malformed and duplicate-key bodies.
async fn a_malformed_body_is_400_invalid_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint_raw(Some(ACME_KEY), Some(JSON), r#"{"session_id": "s-acme-1""#)
        .await;
    app.refused(response, StatusCode::BAD_REQUEST, "invalid_json")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Body size.

async fn body_over_the_limit_is_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint_raw(Some(ACME_KEY), Some(JSON), padded_body(100 * 1024))
        .await;
    app.refused(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        .await;
}

/// reqwest is built without its `stream` feature here, so `Body::wrap_stream` does not exist:
/// this is the fallback of the brief, a body one byte over the limit with an explicit, correct
/// `Content-Length`. (The chunked variant is sent over a raw socket below.)
async fn body_one_byte_over_the_limit_with_content_length_is_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = padded_body(BODY_LIMIT + 1);
    let length = body.len().to_string();
    let response = app
        .client
        .post(app.url(MINT_PATH))
        .bearer_auth(ACME_KEY)
        .header("content-type", JSON)
        .header("content-length", &length)
        .body(body)
        .send()
        .await
        .expect("request");
    app.refused(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        .await;
}

/// The limit is not off by one the other way: a body of exactly the limit is served.
async fn body_of_exactly_the_limit_is_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint_raw(Some(ACME_KEY), Some(JSON), padded_body(BODY_LIMIT))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.mint_count().await, 1);
}

/// A raw HTTP/1.1 exchange, for what reqwest cannot send here (a chunked request body).
struct RawResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn raw_exchange(address: &str, head: String, chunks: Vec<Vec<u8>>) -> RawResponse {
    let address = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream.write_all(head.as_bytes()).expect("write head");
    // The server may answer 413 and close before it has read everything: stop writing then.
    for chunk in chunks {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    if let Err(error) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no response before {error}");
    }

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(length) = headers.get("content-length").and_then(|l| l.parse().ok()) {
        body.truncate(length);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The same 100 KiB body, sent with `Transfer-Encoding: chunked` (no Content-Length for the
/// limit layer to look at up front), over a raw socket since reqwest has no stream bodies here.
async fn chunked_body_over_the_limit_is_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let chunks: Vec<Vec<u8>> = padded_body(100 * 1024)
        .chunks(4096)
        .map(<[u8]>::to_vec)
        .collect();
    let host = app.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST {MINT_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ACME_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let address = app.address.clone();
    let response = tokio::task::spawn_blocking(move || raw_exchange(&address, head, chunks))
        .await
        .expect("raw exchange");

    assert_eq!(response.status, 413);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some(JSON)
    );
    let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|_| {
        panic!(
            "413 body is not JSON: {}",
            String::from_utf8_lossy(&response.body)
        )
    });
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(
        body["meta"]["request_id"].as_str(),
        response.headers.get("x-request-id").map(String::as_str),
        "{body}"
    );
    assert_eq!(app.mint_count().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Content type, and authentication before everything about the body.

async fn content_type_must_be_json_and_is_checked_after_authentication(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = r#"{"session_id": "s-acme-1"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let response = app.mint_raw(Some(ACME_KEY), content_type, body).await;
        app.refused(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;

        let response = app.mint_raw(None, content_type, body).await;
        let challenge = www_authenticate(&response);
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        app.refused(response, StatusCode::UNAUTHORIZED, "missing_credentials")
            .await;
    }
}

async fn authentication_comes_before_parsing_the_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        r#"{"session_id": "s-acme-1""#,
        "[]",
        r#"{"session_id": 5}"#,
        "",
    ] {
        let response = app.mint_raw(None, Some(JSON), body).await;
        app.refused(response, StatusCode::UNAUTHORIZED, "missing_credentials")
            .await;

        let response = app.mint_raw(Some(ACME_REVOKED_KEY), Some(JSON), body).await;
        app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Injection and odd strings.

async fn sql_metacharacters_in_ids_find_nothing_and_break_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for id in [
        "s-acme-1' OR '1'='1",
        "\"; DROP TABLE chat_sessions; --",
        "s-acme-1'; DROP TABLE chat_sessions; --",
        "' UNION SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions --",
        "%",
        "s-acme-%",
        "s-acme-_",
        "\\",
    ] {
        let response = app.mint(ACME_KEY, json!({ "session_id": id })).await;
        app.refused(response, StatusCode::NOT_FOUND, "session_not_found")
            .await;
    }
    // In the other id fields too.
    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_company_id": "contoso' OR '1'='1"}),
        )
        .await;
    app.refused(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_end_company",
    )
    .await;

    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_sessions")
        .fetch_one(&app.db.pool)
        .await
        .expect("chat_sessions is still there");
    assert_eq!(sessions, 7);
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(data["session_id"], "s-acme-1");
    assert_eq!(app.mint_count().await, 1);
}

async fn unknown_fields_are_ignored_and_cannot_widen_the_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "is_admin": true, "scope": "mint", "iss": "evil"}),
        )
        .await;
    let token = data["token"].as_str().expect("token");
    let claims = app.verify(token).await;
    assert_eq!(claims.scope, "chat:session");
    assert_eq!(claims.client_id, "acme");
    assert_eq!(claims.iss, app.config.token.issuer);

    let payload = token.split('.').nth(1).expect("payload");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON payload");
    assert!(payload.get("is_admin").is_none(), "{payload}");
    assert_eq!(payload["scope"], "chat:session", "{payload}");
    assert_eq!(app.mint_count().await, 1);
}

// ---------------------------------------------------------------------------------------------
// Credentials.

async fn duplicate_authorization_headers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bearer = format!("Bearer {ACME_KEY}");
    for (first, second) in [
        (bearer.as_str(), bearer.as_str()),
        (bearer.as_str(), "Bearer garbage"),
        ("Basic eHl6", bearer.as_str()),
    ] {
        let response = app
            .mint_with(
                None,
                &[("authorization", first), ("authorization", second)],
                json!({"session_id": "s-acme-1"}),
            )
            .await;
        let challenge = www_authenticate(&response);
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
            .await;
    }
}

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let response = app
            .mint_with(
                None,
                &[("authorization", &format!("{scheme} {ACME_KEY}"))],
                json!({"session_id": "s-acme-1"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    assert_eq!(app.mint_count().await, 3);
}

async fn other_schemes_are_missing_credentials(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for authorization in [
        "Basic xyz".to_owned(),
        format!("Token {ACME_KEY}"),
        ACME_KEY.to_owned(),
        format!("Basic {ACME_KEY}"),
    ] {
        let response = app
            .mint_with(
                None,
                &[("authorization", &authorization)],
                json!({"session_id": "s-acme-1"}),
            )
            .await;
        let challenge = www_authenticate(&response);
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        app.refused(response, StatusCode::UNAUTHORIZED, "missing_credentials")
            .await;
    }
}

async fn unknown_revoked_and_wrong_env_keys_are_invalid_credentials(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let live = ACME_KEY.replacen("neo_sk_test_", "neo_sk_live_", 1);
    for credential in [
        "neo_sk_test_AAAAbbbbCCCCdddd1234wxyz".to_owned(),
        live,
        ACME_REVOKED_KEY.to_owned(),
        format!("{ACME_KEY}x"),
        ACME_KEY[..ACME_KEY.len() - 1].to_owned(),
        ACME_KEY.to_uppercase(),
        "neo_sk_test_".to_owned(),
        "Bearer".to_owned(),
        "a.b.c".to_owned(),
    ] {
        let response = app
            .mint(&credential, json!({"session_id": "s-acme-1"}))
            .await;
        let challenge = www_authenticate(&response);
        assert!(challenge.starts_with("Bearer"), "{credential}: {challenge}");
        app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
            .await;
    }
}

/// 10 KB is well under hyper's header limits, so this reaches the bearer layer: 401, not 431
/// and not 500.
async fn a_ten_kilobyte_garbage_credential_is_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plain = "A".repeat(10 * 1024);
    let dotted = format!(
        "{}.{}.{}",
        "e".repeat(4000),
        "y".repeat(4000),
        "z".repeat(2000)
    );
    let api_key_like = format!("neo_sk_test_{}", "k".repeat(10 * 1024));
    for credential in [plain, dotted, api_key_like] {
        let response = app
            .mint(&credential, json!({"session_id": "s-acme-1"}))
            .await;
        let challenge = www_authenticate(&response);
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
            .await;
    }

    // Bytes that are not visible ASCII (obs-text) are legal in a header value, not in a credential.
    let response = app
        .client
        .post(app.url(MINT_PATH))
        .header(
            "authorization",
            HeaderValue::from_bytes(b"Bearer neo_sk_test_\xff\xfe\xfd").expect("header value"),
        )
        .json(&json!({"session_id": "s-acme-1"}))
        .send()
        .await
        .expect("request");
    app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Request ids.

async fn an_incoming_uuid_request_id_is_kept_on_success_and_on_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let sent = Uuid::new_v4().to_string();
    let response = app
        .mint_with(
            Some(ACME_KEY),
            &[("x-request-id", &sent)],
            json!({"session_id": "s-acme-1"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(request_id(&response), sent);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["meta"]["request_id"], sent.as_str(), "{body}");

    let sent = Uuid::new_v4().to_string();
    let response = app
        .mint_with(
            None,
            &[("x-request-id", &sent)],
            json!({"session_id": "s-acme-1"}),
        )
        .await;
    assert_eq!(request_id(&response), sent);
    let body = assert_error(response, StatusCode::UNAUTHORIZED, "missing_credentials").await;
    assert_eq!(body["meta"]["request_id"], sent.as_str(), "{body}");

    let sent = Uuid::new_v4().to_string();
    let response = app
        .client
        .get(app.url("/no/such/route"))
        .header("x-request-id", &sent)
        .send()
        .await
        .expect("request");
    assert_eq!(request_id(&response), sent);
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.mint_count().await, 1);
}

async fn a_request_id_that_is_not_a_uuid_is_replaced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for sent in [
        "abc".to_owned(),
        "r".repeat(2048),
        "'; DROP TABLE session_token_mints; --".to_owned(),
        format!("{} extra", Uuid::new_v4()),
    ] {
        // On success...
        let response = app
            .mint_with(
                Some(ACME_KEY),
                &[("x-request-id", &sent)],
                json!({"session_id": "s-acme-1"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let echoed = request_id(&response);
        assert_ne!(echoed, sent);
        Uuid::try_parse(&echoed).expect("a fresh UUID");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["meta"]["request_id"], echoed.as_str(), "{body}");

        // ... and on error.
        let response = app
            .mint_with(
                None,
                &[("x-request-id", &sent)],
                json!({"session_id": "s-acme-1"}),
            )
            .await;
        let echoed = request_id(&response);
        assert_ne!(echoed, sent);
        Uuid::try_parse(&echoed).expect("a fresh UUID");
        assert_error(response, StatusCode::UNAUTHORIZED, "missing_credentials").await;
    }
    assert_eq!(app.mint_count().await, 4);
}

// ---------------------------------------------------------------------------------------------
// Routing.

async fn unknown_routes_and_wrong_methods_get_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // (`/public-api/sessions/{jti}` is a route of its own: a token record.)
    for path in [
        "/nope",
        "/public-api/session",
        "/public-api/sessionsx",
        "/public-api/sessions/s-acme-1/extra",
        "/public-api/sessions/../sessions/x/y",
    ] {
        let response = app.get(path).await;
        app.refused(response, StatusCode::NOT_FOUND, "not_found")
            .await;
    }
    let response = app
        .client
        .post(app.url("/public-api/sessions/s-acme-1/extra"))
        .bearer_auth(ACME_KEY)
        .json(&json!({"session_id": "s-acme-1"}))
        .send()
        .await
        .expect("request");
    app.refused(response, StatusCode::NOT_FOUND, "not_found")
        .await;

    for (method, credential) in [
        (reqwest::Method::PUT, None),
        (reqwest::Method::PUT, Some(ACME_KEY)),
        (reqwest::Method::PATCH, Some(ACME_KEY)),
        (reqwest::Method::DELETE, None),
    ] {
        let response = app.request(method.clone(), MINT_PATH, credential).await;
        let allow = header(&response, "allow").unwrap_or_default();
        assert!(
            allow.contains("POST") && allow.contains("GET"),
            "{method}: Allow = {allow:?}"
        );
        app.refused(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
}

backend_tests!(
    a_malformed_body_is_400_invalid_json,
    body_over_the_limit_is_413,
    body_one_byte_over_the_limit_with_content_length_is_413,
    body_of_exactly_the_limit_is_accepted,
    chunked_body_over_the_limit_is_413,
    content_type_must_be_json_and_is_checked_after_authentication,
    authentication_comes_before_parsing_the_body,
    sql_metacharacters_in_ids_find_nothing_and_break_nothing,
    unknown_fields_are_ignored_and_cannot_widen_the_token,
    duplicate_authorization_headers_are_refused,
    the_bearer_scheme_is_case_insensitive,
    other_schemes_are_missing_credentials,
    unknown_revoked_and_wrong_env_keys_are_invalid_credentials,
    a_ten_kilobyte_garbage_credential_is_401,
    an_incoming_uuid_request_id_is_kept_on_success_and_on_error,
    a_request_id_that_is_not_a_uuid_is_replaced,
    unknown_routes_and_wrong_methods_get_the_envelope,
);
