//! The OAuth 2.0 face from the outside: RFC 7662 introspection at `/oauth2/introspect` (a form
//! in, the bare answer out, an API key as HTTP Basic client credentials or as a bearer), the
//! discovery document that advertises it, and a standard client (the `oauth2` crate) that uses
//! it unchanged.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use oauth2::{
    basic::{BasicClient, BasicTokenType},
    AccessToken, ClientId, ClientSecret, IntrospectionUrl, TokenIntrospectionResponse,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    header, www_authenticate, Backend, TestApp, ACME_KEY, ACME_REVOKED_KEY, GLOBEX_KEY, JSON,
};

const INTROSPECT: &str = "/oauth2/introspect";

/// `POST /oauth2/introspect` with `form` as Basic `client_id`/`key`.
async fn introspect_basic(
    app: &TestApp,
    client_id: &str,
    key: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    app.client
        .post(app.url(INTROSPECT))
        .basic_auth(client_id, Some(key))
        .form(form)
        .send()
        .await
        .expect("introspect")
}

/// The 200 answer as JSON.
async fn answer(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("no-store")
    );
    response.json().await.expect("json")
}

/// An OAuth error (RFC 6749 §5.2): `status`, `{"error": error, "error_description": …}` and
/// nothing of our envelope.
async fn assert_oauth_error(response: reqwest::Response, status: StatusCode, error: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"], error, "{body}");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
        "{description}"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
}

async fn mint(app: &TestApp) -> (String, String) {
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_user": "pat", "allowed_agent_ids": [101]}),
        )
        .await;
    (
        data["jti"].as_str().expect("jti").to_owned(),
        data["token"].as_str().expect("token").to_owned(),
    )
}

/// The token's header with `alg: none` and no signature, claims kept.
fn unsigned(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("header");
    header["alg"] = "none".into();
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    format!("{header}.{}.", parts[1])
}

async fn introspection_answers_as_rfc_7662_says(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let (jti, token) = mint(&app).await;

    let active =
        answer(introspect_basic(&app, "k-acme", ACME_KEY, &[("token", &token)]).await).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(active["jti"], jti.as_str());
    assert_eq!(active["sub"], "pat");
    assert_eq!(active["client_id"], "acme");
    assert_eq!(active["scope"], "chat:session");
    assert_eq!(active["iss"], app.config.token.issuer.as_str());
    assert_eq!(active["aud"], app.config.token.audience.as_str());
    assert_eq!(active["session_id"], "s-acme-1");
    assert_eq!(active["allowed_agent_ids"], json!([101]));
    let (iat, exp) = (active["iat"].as_i64(), active["exp"].as_i64());
    assert!(
        iat.zip(exp).is_some_and(|(iat, exp)| exp - iat == 900),
        "{active}"
    );

    // The same rule and claims as the envelope route: only `token_type` differs.
    let mut envelope = app.introspect(ACME_KEY, &token).await;
    envelope["token_type"] = "Bearer".into();
    assert_eq!(envelope, active);

    // The bearer form, and any `token_type_hint` (ignored, RFC 7662 §2.1).
    let bearer = app
        .client
        .post(app.url(INTROSPECT))
        .bearer_auth(ACME_KEY)
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(answer(bearer).await, active);

    // Anything but a live token of the caller's tenant: exactly `{"active": false}`.
    let inactive = json!({"active": false});
    let foreign = introspect_basic(&app, "k-globex", GLOBEX_KEY, &[("token", &token)]).await;
    assert_eq!(answer(foreign).await, inactive, "another tenant's token");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let now = chrono::Utc::now().timestamp();
    let expired = crate::verify::signed(
        &app,
        json!({"jti": jti, "exp": now - 5, "iat": now - 65, "nbf": now - 65}),
    )
    .await;
    for (what, hostile) in [
        ("forged", forged),
        ("alg none", unsigned(&token)),
        ("expired", expired),
        ("not a JWT", "not.a.jwt".to_owned()),
        ("an API key", ACME_KEY.to_owned()),
    ] {
        let response = introspect_basic(&app, "k-acme", ACME_KEY, &[("token", &hostile)]).await;
        assert_eq!(answer(response).await, inactive, "{what}");
    }

    // Revoked: inactive from then on.
    assert_eq!(app.revoke(ACME_KEY, &jti).await.status(), StatusCode::OK);
    let response = introspect_basic(&app, "k-acme", ACME_KEY, &[("token", &token)]).await;
    assert_eq!(answer(response).await, inactive);
}

async fn bad_clients_and_bad_requests_get_oauth_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = mint(&app).await;
    let form = [("token", token.as_str())];

    // No credentials: 401 `invalid_client`, challenged with both schemes.
    let response = app
        .client
        .post(app.url(INTROSPECT))
        .form(&form)
        .send()
        .await
        .expect("request");
    let challenges: Vec<String> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer realm=")),
        "{challenges:?}"
    );
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;

    // Basic credentials that are wrong, each way: a Basic challenge.
    for (what, client_id, key) in [
        ("the id of another key", "k-globex", ACME_KEY),
        ("no id", "", ACME_KEY),
        (
            "an unknown key",
            "k-acme",
            "neo_sk_test_AAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("a revoked key", "k-old", ACME_REVOKED_KEY),
        ("a session token", "k-acme", token.as_str()),
    ] {
        let response = introspect_basic(&app, client_id, key, &form).await;
        assert!(
            www_authenticate(&response).starts_with("Basic realm=\"neo-sessions\""),
            "{what}"
        );
        assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }
    let garbage = app
        .client
        .post(app.url(INTROSPECT))
        .header("authorization", "Basic !!!")
        .form(&form)
        .send()
        .await
        .expect("request");
    assert_oauth_error(garbage, StatusCode::UNAUTHORIZED, "invalid_client").await;
    // A bad bearer: the RFC 6750 challenge.
    let response = app
        .client
        .post(app.url(INTROSPECT))
        .bearer_auth("neo_sk_test_AAAAAAAAAAAAAAAAAAAAAAAA")
        .form(&form)
        .send()
        .await
        .expect("request");
    assert!(www_authenticate(&response).contains("invalid_token"));
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;

    // An end user's token is no client: it holds no scope.
    let response = app
        .client
        .post(app.url(INTROSPECT))
        .bearer_auth(&token)
        .form(&form)
        .send()
        .await
        .expect("request");
    assert_oauth_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // Malformed requests: 400 `invalid_request`.
    let json_body = app
        .client
        .post(app.url(INTROSPECT))
        .basic_auth("k-acme", Some(ACME_KEY))
        .header("content-type", JSON)
        .body(json!({ "token": token }).to_string())
        .send()
        .await
        .expect("request");
    assert_oauth_error(json_body, StatusCode::BAD_REQUEST, "invalid_request").await;
    for (what, form) in [
        ("no token", vec![("token_type_hint", "access_token")]),
        ("an empty token", vec![("token", "")]),
        (
            "token twice",
            vec![("token", token.as_str()), ("token", "x")],
        ),
        ("no parameters", vec![]),
    ] {
        let response = introspect_basic(&app, "k-acme", ACME_KEY, &form).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // A body over the limit (64 KiB): 413, before anything is looked up.
    let huge = "x".repeat(70 * 1024);
    let response = introspect_basic(&app, "k-acme", ACME_KEY, &[("token", &huge)]).await;
    assert_oauth_error(response, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request").await;
}

/// A key without `tokens:manage` is refused as RFC 6750 says: 403 `insufficient_scope`.
async fn a_key_without_tokens_manage_may_not_introspect(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let run = crate::support::cli::Cli::new(&app.db)
        .run(&[
            "api-key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "feed",
            "--scope",
            "revocations:read",
        ])
        .await;
    run.assert_success();
    let key = run.key_lines()[0].trim().to_owned();
    let id = run
        .stderr
        .split_whitespace()
        .find(|word| word.starts_with("key_"))
        .expect("the key's id")
        .to_owned();
    let (_, token) = mint(&app).await;
    let response = introspect_basic(&app, &id, &key, &[("token", &token)]).await;
    assert_oauth_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
}

/// The standard client of the `oauth2` crate, configured from the discovery document, with
/// Basic client credentials as RFC 6749 §2.3.1 writes them: active with the right claims, then
/// inactive once revoked.
async fn a_standard_oauth2_client_introspects_unchanged(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|config| config.server.public_url_from_request = true)
        .spawn()
        .await;
    let discovery = app.get_json("/.well-known/openid-configuration").await;
    let endpoint = discovery["introspection_endpoint"]
        .as_str()
        .expect("advertised");
    assert_eq!(endpoint, app.url(INTROSPECT));
    assert_eq!(
        discovery["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic"])
    );
    let client = BasicClient::new(ClientId::new("k-acme".to_owned()))
        .set_client_secret(ClientSecret::new(ACME_KEY.to_owned()))
        .set_introspection_url(IntrospectionUrl::new(endpoint.to_owned()).expect("url"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (jti, token) = mint(&app).await;
    let access_token = AccessToken::new(token.clone());

    let answer = client
        .introspect(&access_token)
        .set_token_type_hint("access_token")
        .request_async(&http)
        .await
        .expect("introspection");
    assert!(answer.active());
    assert_eq!(answer.sub(), Some("pat"));
    assert_eq!(answer.jti(), Some(jti.as_str()));
    assert_eq!(answer.aud(), Some(&vec![app.config.token.audience.clone()]));
    assert_eq!(answer.iss(), Some(app.config.token.issuer.as_str()));
    assert_eq!(answer.client_id().map(|id| id.as_str()), Some("acme"));
    assert_eq!(answer.token_type(), Some(&BasicTokenType::Bearer));
    let scopes: Vec<String> = answer
        .scopes()
        .map(|scopes| scopes.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(scopes, ["chat:session"]);
    let (iat, exp) = (answer.iat().expect("iat"), answer.exp().expect("exp"));
    assert_eq!((exp - iat).num_seconds(), 900);
    assert!(exp > chrono::Utc::now());

    assert_eq!(app.revoke(ACME_KEY, &jti).await.status(), StatusCode::OK);
    let answer = client
        .introspect(&access_token)
        .request_async(&http)
        .await
        .expect("introspection");
    assert!(!answer.active());
    assert_eq!(answer.sub(), None);

    // Wrong credentials: the client reports the server's `invalid_client`.
    let wrong = BasicClient::new(ClientId::new("k-globex".to_owned()))
        .set_client_secret(ClientSecret::new(ACME_KEY.to_owned()))
        .set_introspection_url(IntrospectionUrl::new(endpoint.to_owned()).expect("url"));
    let refused = wrong
        .introspect(&access_token)
        .request_async(&http)
        .await
        .expect_err("refused");
    match refused {
        oauth2::RequestTokenError::ServerResponse(error) => {
            assert_eq!(
                *error.error(),
                oauth2::basic::BasicErrorResponseType::InvalidClient
            );
        }
        other => panic!("{other:?}"),
    }
}

/// `jwks_uri` and `introspection_endpoint` start with the configured public URL (by default the
/// issuer), and with the request's host only where the operator allows it: `X-Forwarded-*`
/// only from a trusted proxy.
async fn discovery_urls_follow_the_configured_public_url(backend: Backend) {
    let paths = |document: &Value| {
        (
            document["jwks_uri"].as_str().unwrap_or_default().to_owned(),
            document["introspection_endpoint"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let both = |base: &str| {
        (
            format!("{base}/.well-known/jwks.json"),
            format!("{base}/oauth2/introspect"),
        )
    };
    let app = TestApp::spawn(backend).await;
    let issuer = app.config.token.issuer.trim_end_matches('/').to_owned();
    let spoofed = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .expect("request");
    assert!(header(&spoofed, "vary").is_none());
    let document: Value = spoofed.json().await.expect("json");
    assert_eq!(paths(&document), both(&issuer), "unset: the issuer");
    drop(app);

    let app = TestApp::builder(backend)
        .config(|config| {
            config.server.public_url = Some(
                neo_sessions::config::PublicUrl::parse("https://sessions.example.com/")
                    .expect("url"),
            );
        })
        .spawn()
        .await;
    let document = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(paths(&document), both("https://sessions.example.com"));
    drop(app);

    // From the request: its Host; forwarded headers from an untrusted peer are ignored.
    let app = TestApp::builder(backend)
        .config(|config| config.server.public_url_from_request = true)
        .spawn()
        .await;
    let own = app.url("").trim_end_matches('/').to_owned();
    let response = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("request");
    assert!(header(&response, "vary").is_some_and(|v| v.contains("Host")));
    let document: Value = response.json().await.expect("json");
    assert_eq!(paths(&document), both(&own));
    drop(app);

    // Behind a trusted proxy (the tests connect from 127.0.0.1): what the proxy says.
    let app = TestApp::builder(backend)
        .config(|config| {
            config.server.public_url_from_request = true;
            config.server.trusted_proxies =
                neo_sessions::config::TrustedProxies::parse("127.0.0.1").expect("proxies");
        })
        .spawn()
        .await;
    let response = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .header("x-forwarded-host", "sessions.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("request");
    let document: Value = response.json().await.expect("json");
    assert_eq!(paths(&document), both("https://sessions.example.com"));
}

backend_tests!(
    introspection_answers_as_rfc_7662_says,
    bad_clients_and_bad_requests_get_oauth_errors,
    a_key_without_tokens_manage_may_not_introspect,
    a_standard_oauth2_client_introspects_unchanged,
    discovery_urls_follow_the_configured_public_url,
);
