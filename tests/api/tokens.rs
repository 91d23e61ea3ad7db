//! The life cycle of minted tokens from the outside: read a record, revoke a token (idempotent),
//! introspect (RFC 7662) — tenant-isolated, with the platform's Neo Support tokens visible to
//! both the tenant and the platform, and end users refused.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_error, header, Backend, TestApp, ACME_KEY, GLOBEX_KEY, NEO_KEY};

async fn minted(app: &TestApp, credential: &str, body: Value) -> (String, String) {
    let (data, _) = app.mint_ok(credential, body).await;
    (
        data["jti"].as_str().expect("jti").to_owned(),
        data["token"].as_str().expect("token").to_owned(),
    )
}

async fn record(app: &TestApp, credential: &str, jti: &str) -> reqwest::Response {
    app.request(
        Method::GET,
        &format!("/public-api/sessions/{jti}"),
        Some(credential),
    )
    .await
}

async fn revoke(app: &TestApp, credential: &str, jti: &str) -> reqwest::Response {
    app.revoke(credential, jti).await
}

async fn introspect(app: &TestApp, credential: &str, token: &str) -> Value {
    app.introspect(credential, token).await
}

async fn a_record_is_read_and_revoked_by_its_tenant_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (jti, token) = minted(
        &app,
        ACME_KEY,
        json!({"session_id": "s-acme-wl", "end_user": "pat"}),
    )
    .await;

    let response = record(&app, ACME_KEY, &jti).await;
    assert_eq!(response.status(), StatusCode::OK);
    let data = response.json::<Value>().await.expect("json")["data"].clone();
    assert_eq!(data["jti"], jti.as_str());
    assert_eq!(data["session_id"], "s-acme-wl");
    assert_eq!(data["client_id"], "acme");
    assert_eq!(data["end_user"], "pat");
    assert_eq!(data["end_company_id"], "contoso");
    assert_eq!(data["minted_by"], "k-acme");
    assert_eq!(data["minted_by_kind"], "api_key");
    assert_eq!(data["minted_by_platform"], false);
    assert_eq!(data["active"], true);
    assert!(data["revoked_at"].is_null());
    assert!(
        data.get("token").is_none(),
        "the token itself is never shown"
    );

    // Another tenant, a malformed or unknown jti: the same 404.
    for (credential, id) in [
        (GLOBEX_KEY, jti.as_str()),
        (ACME_KEY, "not-a-uuid"),
        (ACME_KEY, "0f8c6a2e-7d1b-4c3a-9e5f-2b4d6c8a1e3f"),
    ] {
        assert_error(
            record(&app, credential, id).await,
            StatusCode::NOT_FOUND,
            "token_not_found",
        )
        .await;
    }
    assert_error(
        revoke(&app, GLOBEX_KEY, &jti).await,
        StatusCode::NOT_FOUND,
        "token_not_found",
    )
    .await;
    // An end user may neither read nor revoke, not even its own token.
    assert_error(
        record(&app, &token, &jti).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    )
    .await;
    assert_error(
        revoke(&app, &token, &jti).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    )
    .await;

    // Revoke: the record says who and when; again: the same answer.
    let first = revoke(&app, ACME_KEY, &jti).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.json::<Value>().await.expect("json")["data"].clone();
    assert_eq!(first["active"], false);
    assert_eq!(first["revoked_by"], "k-acme");
    assert!(first["revoked_at"].is_string());
    let again = revoke(&app, ACME_KEY, &jti).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = again.json::<Value>().await.expect("json")["data"].clone();
    assert_eq!(again["revoked_at"], first["revoked_at"]);
    assert_eq!(app.mint_count().await, 1, "revoking records nothing new");
}

async fn introspection_says_active_only_for_live_tokens_of_the_callers_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (jti, token) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;

    let live = introspect(&app, ACME_KEY, &token).await;
    assert_eq!(live["active"], true);
    assert_eq!(live["token_type"], "neo-session+jwt");
    assert_eq!(live["jti"], jti.as_str());
    assert_eq!(live["session_id"], "s-acme-1");
    assert_eq!(live["client_id"], "acme");

    // Foreign (another tenant asks), forged, malformed: inactive, and nothing else said.
    let foreign = introspect(&app, GLOBEX_KEY, &token).await;
    assert_eq!(foreign, json!({"active": false}));
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        introspect(&app, ACME_KEY, &forged).await,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&app, ACME_KEY, "not.a.jwt").await,
        json!({"active": false})
    );

    // Revoked: inactive from then on.
    assert_eq!(revoke(&app, ACME_KEY, &jti).await.status(), StatusCode::OK);
    assert_eq!(
        introspect(&app, ACME_KEY, &token).await,
        json!({"active": false})
    );

    // End users may not introspect; a body without a token is a 422.
    let response = app
        .client
        .post(app.url("/public-api/sessions/introspect"))
        .bearer_auth(&token)
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("request");
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let response = app
        .client
        .post(app.url("/public-api/sessions/introspect"))
        .bearer_auth(ACME_KEY)
        .json(&json!({ "jwt": token }))
        .send()
        .await
        .expect("request");
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

/// A token the platform minted into Acme's Neo Support session: Acme sees it (marked), the
/// platform sees it; the platform does not see Acme's own tokens.
async fn an_expired_token_is_not_active(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let (jti, _) = minted(
        &app,
        ACME_KEY,
        json!({"session_id": "s-acme-1", "end_user": "pat"}),
    )
    .await;
    // The minted jti, signed with the server's own key: first live (the control), then expired.
    let live = crate::verify::signed(&app, json!({ "jti": jti })).await;
    assert_eq!(introspect(&app, ACME_KEY, &live).await["active"], true);
    let now = chrono::Utc::now().timestamp();
    let expired = crate::verify::signed(
        &app,
        json!({"jti": jti, "exp": now - 3600, "iat": now - 4000, "nbf": now - 4000}),
    )
    .await;
    assert_eq!(
        introspect(&app, ACME_KEY, &expired).await,
        json!({"active": false})
    );
    // Expired a few seconds ago, well within the verification leeway (30 s): introspection
    // tolerates no clock skew, it says what the record says.
    let just_expired = crate::verify::signed(
        &app,
        json!({"jti": jti, "exp": now - 5, "iat": now - 65, "nbf": now - 65}),
    )
    .await;
    assert_eq!(
        introspect(&app, ACME_KEY, &just_expired).await,
        json!({"active": false})
    );
}

async fn the_platforms_support_tokens_are_visible_to_both_sides(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (support_jti, _) = minted(
        &app,
        NEO_KEY,
        json!({"session_id": "s-acme-support", "client_id": "acme"}),
    )
    .await;
    let (own_jti, _) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;

    let seen_by_acme = record(&app, ACME_KEY, &support_jti).await;
    assert_eq!(seen_by_acme.status(), StatusCode::OK);
    let seen_by_acme = seen_by_acme.json::<Value>().await.expect("json")["data"].clone();
    assert_eq!(seen_by_acme["minted_by_platform"], true);
    assert_eq!(seen_by_acme["client_id"], "acme");
    assert_eq!(
        record(&app, NEO_KEY, &support_jti).await.status(),
        StatusCode::OK
    );
    assert_error(
        record(&app, NEO_KEY, &own_jti).await,
        StatusCode::NOT_FOUND,
        "token_not_found",
    )
    .await;
    assert_eq!(
        revoke(&app, NEO_KEY, &support_jti).await.status(),
        StatusCode::OK
    );
}

async fn post_json(app: &TestApp, credential: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(credential)
        .json(&body)
        .send()
        .await
        .expect("request")
}

/// `GET /public-api/sessions/revocations` with these query parameters.
async fn feed_response(
    app: &TestApp,
    credential: &str,
    query: &[(&str, &str)],
) -> reqwest::Response {
    app.client
        .get(app.url("/public-api/sessions/revocations"))
        .query(query)
        .bearer_auth(credential)
        .send()
        .await
        .expect("request")
}

/// The feed's answer once it holds at least `expected` revocations (within 10 s): a revocation
/// is handed out once no transaction older than its own is in flight, on the whole PostgreSQL
/// server (other tests' included).
async fn feed_holding(
    app: &TestApp,
    credential: &str,
    query: &[(&str, &str)],
    expected: usize,
) -> Value {
    let started = std::time::Instant::now();
    loop {
        let response = feed_response(app, credential, query).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page = response.json::<Value>().await.expect("json")["data"].clone();
        if jtis(&page).len() >= expected || started.elapsed() > std::time::Duration::from_secs(10) {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn feed(app: &TestApp, credential: &str, since: Option<&str>, expected: usize) -> Value {
    let query: Vec<(&str, &str)> = since.map(|since| ("since", since)).into_iter().collect();
    feed_holding(app, credential, &query, expected).await
}

fn jtis(feed: &Value) -> Vec<String> {
    feed["revocations"]
        .as_array()
        .expect("revocations")
        .iter()
        .filter_map(|r| r["jti"].as_str().map(str::to_owned))
        .collect()
}

/// Follows Acme's feed from its start, by `next_cursor` (or by `next_since`/`next_after`), until
/// it has `expected` revocations or 10 s have passed; every jti handed out, in order.
async fn follow(app: &TestApp, by_time: bool, expected: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut time: Option<(String, String)> = None;
    let started = std::time::Instant::now();
    while seen.len() < expected && started.elapsed() < std::time::Duration::from_secs(10) {
        let query = match (&cursor, &time) {
            (Some(cursor), _) => vec![("cursor", cursor.as_str())],
            (None, Some((since, after))) => {
                vec![("since", since.as_str()), ("after", after.as_str())]
            }
            (None, None) => Vec::new(),
        };
        let response = feed_response(app, ACME_KEY, &query).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page = response.json::<Value>().await.expect("json")["data"].clone();
        seen.extend(jtis(&page));
        if by_time {
            if let (Some(since), Some(after)) =
                (page["next_since"].as_str(), page["next_after"].as_str())
            {
                time = Some((since.to_owned(), after.to_owned()));
            }
        } else {
            cursor = Some(
                page["next_cursor"]
                    .as_str()
                    .expect("next_cursor")
                    .to_owned(),
            );
        }
        if page["has_more"] != true {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    seen
}

/// Revoking a chat session's tokens leaves other sessions' tokens active, says when nothing was
/// revoked, and the revocation feed lists what was revoked, per tenant (all tenants for the
/// platform key), continuing from `next_since`.
/// One bulk revoke gives every token the same `revoked_at`; the feed's pages (1000 each) must
/// still carry each one once, resuming inside that timestamp with `after`.
async fn a_bulk_revoke_larger_than_a_feed_page_is_fed_whole(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let app = std::sync::Arc::clone(&app);
        tasks.spawn(async move {
            let mut jtis = Vec::new();
            for _ in 0..201 {
                jtis.push(
                    minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"}))
                        .await
                        .0,
                );
            }
            jtis
        });
    }
    let minted_jtis: std::collections::HashSet<String> =
        tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(minted_jtis.len(), 1005);
    let response = post_json(
        &app,
        ACME_KEY,
        "/public-api/sessions/revoke",
        json!({"session_id": "s-acme-1"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Followed by its cursor, and by time as verifiers before the cursor did: each once.
    for by_time in [false, true] {
        let seen = follow(&app, by_time, minted_jtis.len()).await;
        let unique: std::collections::HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "a revocation fed twice (by time: {by_time})"
        );
        assert_eq!(
            unique, minted_jtis,
            "the feed lost or invented revocations (by time: {by_time})"
        );
    }

    // A malformed `after` is refused.
    let response = feed_response(&app, ACME_KEY, &[("after", "nope")]).await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

async fn a_sessions_tokens_are_revoked_together_and_fed_to_verifiers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, _) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    let (b, _) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    let (other, other_token) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-wl"})).await;

    // Nothing issued before a time long past: nothing revoked, and the answer says so.
    let response = post_json(
        &app,
        ACME_KEY,
        "/public-api/sessions/revoke",
        json!({"session_id": "s-acme-1", "issued_before": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked"], 0);
    assert!(body["meta"]["warnings"][0]
        .as_str()
        .is_some_and(|w| w.contains("no token was revoked")));

    let response = post_json(
        &app,
        ACME_KEY,
        "/public-api/sessions/revoke",
        json!({"session_id": "s-acme-1"}),
    )
    .await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked"], 2, "{body}");
    assert_eq!(
        introspect(&app, ACME_KEY, &other_token).await["active"],
        true,
        "another session's token stays active"
    );

    // Another tenant's session, a bad time, an end user: refused.
    assert_error(
        post_json(
            &app,
            GLOBEX_KEY,
            "/public-api/sessions/revoke",
            json!({"session_id": "s-acme-wl"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    assert_error(
        post_json(
            &app,
            ACME_KEY,
            "/public-api/sessions/revoke",
            json!({"session_id": "s-acme-wl", "issued_before": "yesterday"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_error(
        post_json(
            &app,
            &other_token,
            "/public-api/sessions/revoke",
            json!({"session_id": "s-acme-wl"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    )
    .await;

    // The feed: Acme's two revocations, with their expiry; none for Globex; all for the platform.
    let acme = feed(&app, ACME_KEY, None, 2).await;
    let mut revoked = jtis(&acme);
    revoked.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(acme["revocations"][0]["expires_at"].is_string());
    assert_eq!(acme["has_more"], false);
    assert!(jtis(&feed(&app, GLOBEX_KEY, None, 0).await).is_empty());
    assert_eq!(jtis(&feed(&app, NEO_KEY, None, 2).await).len(), 2);

    // Polling from next_cursor (or, as before it, next_since) returns only what came after.
    let cursor = acme["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .to_owned();
    let next = acme["next_since"].as_str().expect("next_since").to_owned();
    let query = [("cursor", cursor.as_str())];
    assert!(jtis(&feed_holding(&app, ACME_KEY, &query, 0).await).is_empty());
    assert!(jtis(&feed(&app, ACME_KEY, Some(&next), 0).await).is_empty());
    assert_eq!(
        revoke(&app, ACME_KEY, &other).await.status(),
        StatusCode::OK
    );
    let after = feed_holding(&app, ACME_KEY, &query, 1).await;
    assert_eq!(jtis(&after), std::slice::from_ref(&other));
    assert_eq!(jtis(&feed(&app, ACME_KEY, Some(&next), 1).await), [other]);
    let query = [(
        "cursor",
        after["next_cursor"].as_str().expect("next_cursor"),
    )];
    assert!(jtis(&feed_holding(&app, ACME_KEY, &query, 0).await).is_empty());

    for query in [
        [("since", "not a time")].as_slice(),
        &[("cursor", "not a cursor")],
        &[("cursor", cursor.as_str()), ("since", next.as_str())],
    ] {
        let response = feed_response(&app, ACME_KEY, query).await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
}

async fn list(app: &TestApp, credential: &str, query: &[(&str, &str)]) -> (Vec<Value>, Value) {
    let response = app
        .client
        .get(app.url("/public-api/sessions"))
        .query(query)
        .bearer_auth(credential)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    (
        body["data"].as_array().expect("data").clone(),
        body["meta"]["pagination"].clone(),
    )
}

/// 250 tokens paged through 100 at a time while 20 more are minted: each of the 250 exactly
/// once, newest first; filters by session and by activity; other tenants see none of them.
async fn listing_pages_through_every_token_once(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let mut minted_jtis = std::collections::HashSet::new();
    for i in 0..250 {
        let session = if i % 5 == 0 { "s-acme-wl" } else { "s-acme-1" };
        let (jti, _) = minted(&app, ACME_KEY, json!({ "session_id": session })).await;
        minted_jtis.insert(jti);
    }
    let concurrent = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            for _ in 0..20 {
                minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;
            }
        })
    };
    let (first, pagination) = list(&app, ACME_KEY, &[("limit", "100")]).await;
    let mut seen: Vec<String> = Vec::new();
    let mut page = first;
    let mut pagination = pagination;
    loop {
        seen.extend(
            page.iter()
                .filter_map(|r| r["jti"].as_str().map(str::to_owned)),
        );
        if pagination["has_more"] != true {
            break;
        }
        let cursor = pagination["next_cursor"]
            .as_str()
            .expect("cursor")
            .to_owned();
        (page, pagination) = list(&app, ACME_KEY, &[("limit", "100"), ("cursor", &cursor)]).await;
    }
    concurrent.await.expect("concurrent mints");
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a token listed twice");
    for jti in &minted_jtis {
        assert!(seen.contains(jti), "{jti} missing from the pages");
    }

    let (scoped, _) = list(
        &app,
        ACME_KEY,
        &[("session_id", "s-acme-wl"), ("limit", "200")],
    )
    .await;
    assert_eq!(scoped.len(), 50);
    assert!(scoped.iter().all(|r| r["session_id"] == "s-acme-wl"));
    let times: Vec<&str> = scoped
        .iter()
        .filter_map(|r| r["issued_at"].as_str())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");

    let one = scoped[0]["jti"].as_str().expect("jti").to_owned();
    assert_eq!(revoke(&app, ACME_KEY, &one).await.status(), StatusCode::OK);
    let (inactive, _) = list(&app, ACME_KEY, &[("active", "false")]).await;
    assert_eq!(inactive.len(), 1);
    assert_eq!(inactive[0]["jti"], one.as_str());

    let (foreign, pagination) = list(&app, GLOBEX_KEY, &[]).await;
    assert!(foreign.is_empty());
    assert_eq!(pagination["has_more"], false);
    for (field, value) in [
        ("limit", "0"),
        ("limit", "201"),
        ("active", "yes"),
        ("cursor", "nope"),
    ] {
        let response = app
            .client
            .get(app.url("/public-api/sessions"))
            .query(&[(field, value)])
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .expect("request");
        let body = assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(body["error"]["details"].get(field).is_some(), "{body}");
    }
}

/// Every answer that carries a token or claims (the mint, introspection, records, the list,
/// the feed, a revoke) is `Cache-Control: no-store`, and so is any answer without a caching
/// policy of its own (errors, health); the key set keeps its `max-age`. Every answer, cacheable
/// or not, is `X-Content-Type-Options: nosniff`.
async fn no_token_or_claims_is_stored_and_no_answer_is_sniffed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mint = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_user": "pat"}),
        )
        .await;
    let mut answers = vec![("mint".to_owned(), mint)];
    let (jti, token) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    answers.push((
        "introspect".into(),
        post_json(
            &app,
            ACME_KEY,
            "/public-api/sessions/introspect",
            json!({ "token": token }),
        )
        .await,
    ));
    answers.push(("record".into(), record(&app, ACME_KEY, &jti).await));
    answers.push((
        "list".into(),
        app.request(Method::GET, "/public-api/sessions", Some(ACME_KEY))
            .await,
    ));
    answers.push(("revoke".into(), revoke(&app, ACME_KEY, &jti).await));
    answers.push((
        "feed".into(),
        app.request(
            Method::GET,
            "/public-api/sessions/revocations?since=2020-01-01T00:00:00Z",
            Some(ACME_KEY),
        )
        .await,
    ));
    answers.push((
        "error".into(),
        app.request(Method::GET, "/public-api/sessions", None).await,
    ));
    answers.push(("health".into(), app.get("/public-api/health").await));
    for (what, response) in &answers {
        assert!(
            response.status().is_success() || what == "error",
            "{what}: {}",
            response.status()
        );
        assert_eq!(
            header(response, "cache-control").as_deref(),
            Some("no-store"),
            "{what}"
        );
        assert_eq!(
            header(response, "x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}"
        );
    }
    let jwks = app.get("/.well-known/jwks.json").await;
    assert!(
        header(&jwks, "cache-control").is_some_and(|v| v.starts_with("public, max-age=")),
        "the key set stays cacheable"
    );
    assert_eq!(
        header(&jwks, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

/// One authorization rule for one token and for a session's tokens: the platform key may
/// bulk-revoke, in a tenant's Neo Support session, only the tokens it minted there (the ones it
/// may revoke one by one), never the tenant's own.
async fn the_platform_bulk_revokes_only_the_support_tokens_it_minted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (platform_jti, _) = minted(
        &app,
        NEO_KEY,
        json!({"session_id": "s-acme-support", "client_id": "acme"}),
    )
    .await;
    let (acme_jti, _) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-support"})).await;
    assert_error(
        revoke(&app, NEO_KEY, &acme_jti).await,
        StatusCode::NOT_FOUND,
        "token_not_found",
    )
    .await;

    let response = post_json(
        &app,
        NEO_KEY,
        "/public-api/sessions/revoke",
        json!({"session_id": "s-acme-support"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked"], 1, "{body}");

    let platforms = record(&app, ACME_KEY, &platform_jti).await;
    let platforms: Value = platforms.json().await.expect("json");
    assert!(platforms["data"]["revoked_at"].is_string(), "{platforms}");
    let acmes = record(&app, ACME_KEY, &acme_jti).await;
    let acmes: Value = acmes.json().await.expect("json");
    assert!(acmes["data"]["revoked_at"].is_null(), "{acmes}");
}

/// Every revoke filters by tenant: after a session moved to another tenant, that tenant's bulk
/// revoke neither touches nor counts the tokens the first tenant minted into it.
async fn a_bulk_revoke_never_reaches_another_tenants_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (acme_jti, _) = minted(&app, ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    sqlx::query("UPDATE chat_sessions SET tenant_id = 'globex' WHERE id = 's-acme-1'")
        .execute(&app.db.pool)
        .await
        .expect("move the session");

    let response = post_json(
        &app,
        GLOBEX_KEY,
        "/public-api/sessions/revoke",
        json!({"session_id": "s-acme-1"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked"], 0, "{body}");
    let acmes = record(&app, ACME_KEY, &acme_jti).await;
    let acmes: Value = acmes.json().await.expect("json");
    assert!(acmes["data"]["revoked_at"].is_null(), "{acmes}");
}

backend_tests!(
    the_platform_bulk_revokes_only_the_support_tokens_it_minted,
    a_bulk_revoke_never_reaches_another_tenants_tokens,
    listing_pages_through_every_token_once,
    no_token_or_claims_is_stored_and_no_answer_is_sniffed,
    a_sessions_tokens_are_revoked_together_and_fed_to_verifiers,
    a_record_is_read_and_revoked_by_its_tenant_only,
    introspection_says_active_only_for_live_tokens_of_the_callers_tenant,
    the_platforms_support_tokens_are_visible_to_both_sides,
    an_expired_token_is_not_active,
    a_bulk_revoke_larger_than_a_feed_page_is_fed_whole,
);
