//! The bearer layer from the outside: API keys, our own tokens, and everything else.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    assert_error, parse_timestamp, www_authenticate, Backend, TestApp, ACME_KEY, ACME_REVOKED_KEY,
    JSON,
};

const TYP: &str = "neo-session+jwt";

/// Claims of a session token for `s-acme-1`, valid now, with `overrides` merged in.
fn session_claims(app: &TestApp, overrides: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": app.config.token.issuer,
        "aud": app.config.token.audience,
        "sub": "s-acme-1",
        "jti": uuid::Uuid::new_v4(),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "session_id": "s-acme-1",
        "client_id": "acme",
        "end_company_id": null,
        "end_user": null,
        "end_user_email": null,
        "allowed_agent_ids": [],
        "scope": "chat:session",
    });
    if let (Some(claims), Value::Object(overrides)) = (claims.as_object_mut(), overrides) {
        claims.extend(overrides);
    }
    claims
}

async fn server_kid(app: &TestApp) -> String {
    let jwks: Value = app.get_json("/.well-known/jwks.json").await;
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// A token signed with the server's own private key: valid unless the claims say otherwise.
async fn sign_with_server_key(app: &TestApp, typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(server_kid(app).await);
    header.typ = typ.map(str::to_owned);
    let key = EncodingKey::from_ec_pem(&app.signing_key_pem()).unwrap();
    encode(&header, claims, &key).unwrap()
}

async fn assert_invalid_token(app: &TestApp, token: &str) {
    let response = app.mint(token, json!({"session_id": "s-acme-1"})).await;
    let www = www_authenticate(&response);
    app.refused(response, StatusCode::UNAUTHORIZED, "invalid_credentials")
        .await;
    assert!(www.starts_with("Bearer realm=\"neo-sessions\""), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
}

async fn no_credentials_get_a_bare_bearer_challenge(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint_with(None, &[], json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(www_authenticate(&response), "Bearer realm=\"neo-sessions\"");
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_credentials").await;
}

async fn authentication_comes_before_the_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint_raw(
            Some("neo_sk_test_unknownunknownunknown1"),
            None,
            "{not json",
        )
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

async fn a_revoked_key_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_invalid_token(&app, ACME_REVOKED_KEY).await;
}

async fn our_own_session_token_may_not_mint(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let token = data["token"].as_str().unwrap();

    // Whatever the body: an end user is refused before it is read.
    let response = app.mint_raw(Some(token), Some(JSON), "{garbage").await;
    let www = www_authenticate(&response);
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");

    let response = app
        .mint(
            token,
            json!({"session_id": "s-acme-1", "client_id": "globex"}),
        )
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(app.mint_count().await, 1, "only the first mint is recorded");
}

async fn a_token_signed_by_another_key_with_our_kid_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(server_kid(&app).await);
    header.typ = Some(TYP.to_owned());
    let forged = encode(
        &header,
        &session_claims(&app, json!({})),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    assert_invalid_token(&app, &forged).await;
}

async fn an_expired_token_of_ours_is_refused(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let now = chrono::Utc::now().timestamp();
    let claims = session_claims(
        &app,
        json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
    );
    let token = sign_with_server_key(&app, Some(TYP), &claims).await;
    assert_invalid_token(&app, &token).await;
}

async fn a_token_of_ours_for_another_audience_or_issuer_is_refused(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    for overrides in [
        json!({"aud": "https://graph.microsoft.com"}),
        json!({"aud": ["https://graph.microsoft.com", app.config.token.audience]}),
        json!({"iss": "https://evil.example"}),
        json!({"nbf": chrono::Utc::now().timestamp() + 3600}),
        json!({"exp": "9999999999"}),
    ] {
        let token = sign_with_server_key(&app, Some(TYP), &session_claims(&app, overrides)).await;
        assert_invalid_token(&app, &token).await;
    }
}

async fn a_token_of_ours_without_our_typ_is_refused(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let claims = session_claims(&app, json!({}));
    for typ in [None, Some("JWT"), Some("at+jwt")] {
        let token = sign_with_server_key(&app, typ, &claims).await;
        assert_invalid_token(&app, &token).await;
    }
}

async fn alg_none_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let header = json!({"alg": "none", "typ": TYP, "kid": server_kid(&app).await});
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let claims = session_claims(&app, json!({}));
    for token in [
        format!("{}.{}.", b64(&header), b64(&claims)),
        format!("{}.{}.AAAA", b64(&header), b64(&claims)),
    ] {
        assert_invalid_token(&app, &token).await;
    }
}

async fn hs256_signed_with_our_public_key_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let jwks = app
        .get("/.well-known/jwks.json")
        .await
        .text()
        .await
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(server_kid(&app).await);
    header.typ = Some(TYP.to_owned());
    let token = encode(
        &header,
        &session_claims(&app, json!({})),
        &EncodingKey::from_secret(jwks.as_bytes()),
    )
    .unwrap();
    assert_invalid_token(&app, &token).await;
}

async fn a_foreign_jwt_is_refused_while_entra_login_is_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("some-entra-key".to_owned());
    let claims = json!({"iss": "https://login.microsoftonline.com/0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a/v2.0",
        "aud": "api://neo", "tid": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a", "oid": "u", "scp": "Sessions.Mint",
        "exp": chrono::Utc::now().timestamp() + 600});
    let token = encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    assert_invalid_token(&app, &token).await;
    assert_invalid_token(&app, "not.a.jwt").await;
}

async fn last_used_at_is_kept_without_a_write_per_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let last_used = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT CAST(last_used_at AS TEXT) FROM api_keys WHERE id = 'k-acme'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
        .map(|t| parse_timestamp(&t))
    };
    assert_eq!(last_used().await, None);

    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    // The write happens off the request path: wait (bounded) for it to land.
    let mut first = None;
    for _ in 0..200 {
        first = last_used().await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let first = first.expect("last_used_at is recorded");
    assert!((chrono::Utc::now() - first).num_seconds() < 60);

    // Within the 60 s resolution further requests do not write again.
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(last_used().await, Some(first));
}

backend_tests!(
    no_credentials_get_a_bare_bearer_challenge,
    authentication_comes_before_the_body,
    a_revoked_key_is_refused,
    our_own_session_token_may_not_mint,
    a_token_signed_by_another_key_with_our_kid_is_refused,
    an_expired_token_of_ours_is_refused,
    a_token_of_ours_for_another_audience_or_issuer_is_refused,
    a_token_of_ours_without_our_typ_is_refused,
    alg_none_is_refused,
    hs256_signed_with_our_public_key_is_refused,
    a_foreign_jwt_is_refused_while_entra_login_is_off,
    last_used_at_is_kept_without_a_write_per_request,
);
