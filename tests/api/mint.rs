//! The mint rules and the token (docs/api.md, "The endpoint" and "The token"), from the outside.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::num::NonZero;

use crate::support::{
    assert_error, parse_timestamp, Backend, TestApp, ACME_KEY, GLOBEX_KEY, NEO_KEY,
};

async fn a_minimal_mint_returns_a_verifiable_token_with_every_claim(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let (data, meta) = (&body["data"], &body["meta"]);

    assert_eq!(meta["request_id"], request_id);
    assert!(meta["timings_ms"]["total"].is_number(), "{meta}");
    assert!(meta["timings_ms"]["db"].is_number(), "{meta}");
    assert!(meta.get("warnings").is_none(), "{meta}");

    let token = data["token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("neo-session+jwt"));
    let jwks: Value = app.get_json("/.well-known/jwks.json").await;
    assert_eq!(header.kid.as_deref(), jwks["keys"][0]["kid"].as_str());

    let claims = app.verify(token).await;
    assert_eq!(claims.iss, "https://api.neoagent.io");
    assert_eq!(claims.aud, "https://api.neoagent.io/chat");
    assert_eq!(claims.sub, "s-acme-1", "sub falls back to the session id");
    assert_eq!(claims.jti.to_string(), data["jti"].as_str().unwrap());
    assert_eq!(claims.exp - claims.iat, 900, "default TTL");
    assert_eq!(claims.nbf, claims.iat);
    assert!((Utc::now().timestamp() - claims.iat).abs() < 60);
    assert_eq!(claims.session_id, "s-acme-1");
    assert_eq!(claims.client_id, "acme");
    assert_eq!(claims.end_company_id, None);
    assert_eq!(claims.end_user, None);
    assert_eq!(claims.end_user_email, None);
    assert!(claims.allowed_agent_ids.is_empty());
    assert_eq!(claims.scope, "chat:session");

    assert_eq!(data["session_id"], "s-acme-1");
    assert_eq!(data["expires_in"], 900);
    let expires_at: DateTime<Utc> = data["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at.timestamp(), claims.exp);

    // The raw payload carries the nullable claims explicitly.
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let raw: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    for claim in ["end_company_id", "end_user", "end_user_email"] {
        assert!(
            raw.get(claim).is_some_and(Value::is_null),
            "{claim} in {raw}"
        );
    }
}

/// jti, session, tenant, minted_by_kind, minted_by, end_user, issued_at, expires_at (as text).
type MintRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
);

async fn each_mint_is_recorded_with_who_minted_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_user": "29:1a-teams-user", "end_user_email": "pat@contoso.com", "ttl_seconds": 300}),
        )
        .await;
    let claims = app.verify(data["token"].as_str().unwrap()).await;
    assert_eq!(claims.sub, "29:1a-teams-user");
    assert_eq!(claims.end_user.as_deref(), Some("29:1a-teams-user"));
    assert_eq!(claims.end_user_email.as_deref(), Some("pat@contoso.com"));

    let row: MintRow = sqlx::query_as(
        "SELECT CAST(jti AS TEXT), session_id, tenant_id, minted_by_kind, minted_by, end_user,
                    CAST(issued_at AS TEXT), CAST(expires_at AS TEXT)
             FROM session_token_mints",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(row.0, claims.jti.to_string());
    assert_eq!((row.1.as_str(), row.2.as_str()), ("s-acme-1", "acme"));
    assert_eq!((row.3.as_str(), row.4.as_str()), ("api_key", "k-acme"));
    assert_eq!(row.5.as_deref(), Some("29:1a-teams-user"));
    assert_eq!(parse_timestamp(&row.6).timestamp(), claims.iat);
    assert_eq!(parse_timestamp(&row.7).timestamp(), claims.exp);

    let (second, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_ne!(second["jti"], data["jti"], "every token gets a fresh jti");
    assert_eq!(app.mint_count().await, 2);
}

/// (The values out of bounds are rows of `mint::request`'s unit tests.)
async fn ttl_bounds_are_inclusive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for ttl in [60, 3600] {
        let (data, _) = app
            .mint_ok(
                ACME_KEY,
                json!({"session_id": "s-acme-1", "ttl_seconds": ttl}),
            )
            .await;
        let claims = app.verify(data["token"].as_str().unwrap()).await;
        assert_eq!(claims.exp - claims.iat, ttl);
        assert_eq!(data["expires_in"], ttl);
    }
    assert_eq!(app.mint_count().await, 2);
}

async fn ttl_limits_follow_the_configuration(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| {
            c.token.min_ttl = NonZero::new(30).unwrap();
            c.token.default_ttl = 45;
            c.token.max_ttl = 120;
        })
        .spawn()
        .await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(data["expires_in"], 45);
    app.mint_ok(
        ACME_KEY,
        json!({"session_id": "s-acme-1", "ttl_seconds": 30}),
    )
    .await;
    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "ttl_seconds": 121}),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

async fn rule_2_client_id_from_a_tenant_key_is_forbidden(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (key, body) in [
        (
            ACME_KEY,
            json!({"session_id": "s-acme-1", "client_id": "acme"}),
        ),
        (
            ACME_KEY,
            json!({"session_id": "s-acme-support", "client_id": "acme"}),
        ),
        (
            ACME_KEY,
            json!({"session_id": "s-globex-support", "client_id": "globex"}),
        ),
        (
            GLOBEX_KEY,
            json!({"session_id": "no-such-session", "client_id": "acme"}),
        ),
    ] {
        let response = app.mint(key, body.clone()).await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(app.mint_count().await, 0);
}

async fn rule_2_a_platform_key_mints_for_a_tenants_neo_support_session_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(
            NEO_KEY,
            json!({"session_id": "s-globex-support", "client_id": "globex"}),
        )
        .await;
    let claims = app.verify(data["token"].as_str().unwrap()).await;
    assert_eq!(claims.client_id, "globex");
    assert_eq!(claims.session_id, "s-globex-support");
    let minted_by: (String, String) =
        sqlx::query_as("SELECT tenant_id, minted_by FROM session_token_mints")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(minted_by, ("globex".to_owned(), "k-neo".to_owned()));

    // Not a Neo Support session, another tenant's session, or no such tenant: the same 403.
    let mut messages = Vec::new();
    for body in [
        json!({"session_id": "s-globex-1", "client_id": "globex"}),
        json!({"session_id": "s-globex-support", "client_id": "acme"}),
        json!({"session_id": "s-globex-support", "client_id": "no-such-tenant"}),
        json!({"session_id": "no-such-session", "client_id": "globex"}),
    ] {
        let response = app.mint(NEO_KEY, body).await;
        let error = assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
        messages.push(error["error"]["message"].clone());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "refusals do not reveal which part was wrong"
    );

    // The Neo Support session still has to be active (rule 4).
    let response = app
        .mint(
            NEO_KEY,
            json!({"session_id": "s-globex-support-closed", "client_id": "globex"}),
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "session_closed").await;

    // Without client_id the platform key is just its own tenant's key.
    let response = app
        .mint(NEO_KEY, json!({"session_id": "s-globex-support"}))
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    assert_eq!(app.mint_count().await, 1);
}

async fn rule_3_other_tenants_sessions_are_indistinguishable_from_missing_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown = app
        .mint(ACME_KEY, json!({"session_id": "no-such-session"}))
        .await;
    let unknown = assert_error(unknown, StatusCode::NOT_FOUND, "session_not_found").await;
    for session_id in ["s-globex-1", "s-globex-support", "s-globex-support-closed"] {
        let response = app.mint(ACME_KEY, json!({"session_id": session_id})).await;
        let error = assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
        assert_eq!(error["error"], unknown["error"]);
    }
    // And the other way round, including the closed and the scoped session.
    for session_id in ["s-acme-1", "s-acme-wl", "s-acme-old", "s-acme-support"] {
        let response = app
            .mint(GLOBEX_KEY, json!({"session_id": session_id, "end_company_id": "initech", "allowed_agent_ids": [201]}))
            .await;
        assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    }
    assert_eq!(app.mint_count().await, 0);
}

async fn rule_4_closed_sessions_conflict_before_scope_and_agent_checks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint(ACME_KEY, json!({"session_id": "s-acme-old", "end_company_id": "nope", "allowed_agent_ids": [999]}))
        .await;
    assert_error(response, StatusCode::CONFLICT, "session_closed").await;
    assert_eq!(app.mint_count().await, 0);
}

async fn rule_5_a_scoped_session_always_carries_its_own_end_company(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A different caller value is ignored, with a warning.
    let (data, meta) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-wl", "end_company_id": "fabrikam"}),
        )
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap())
            .await
            .end_company_id
            .as_deref(),
        Some("contoso")
    );
    let warnings = meta["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].as_str().unwrap().contains("end_company_id"),
        "{meta}"
    );

    // Even a value that names no end company, or another tenant's, cannot widen it.
    let (data, meta) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-wl", "end_company_id": "initech"}),
        )
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap())
            .await
            .end_company_id
            .as_deref(),
        Some("contoso")
    );
    assert_eq!(meta["warnings"].as_array().map(Vec::len), Some(1));

    // The same value, or none: the session's, without a warning.
    for body in [
        json!({"session_id": "s-acme-wl", "end_company_id": "contoso"}),
        json!({"session_id": "s-acme-wl"}),
        json!({"session_id": "s-acme-wl", "end_company_id": null}),
    ] {
        let (data, meta) = app.mint_ok(ACME_KEY, body).await;
        assert_eq!(
            app.verify(data["token"].as_str().unwrap())
                .await
                .end_company_id
                .as_deref(),
            Some("contoso")
        );
        assert!(meta.get("warnings").is_none(), "{meta}");
    }
}

async fn rule_5_an_unscoped_session_is_narrowed_to_an_end_company_of_the_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_company_id": "fabrikam"}),
        )
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap())
            .await
            .end_company_id
            .as_deref(),
        Some("fabrikam")
    );

    for end_company_id in ["initech", "no-such-company"] {
        let response = app
            .mint(
                ACME_KEY,
                json!({"session_id": "s-acme-1", "end_company_id": end_company_id}),
            )
            .await;
        let body = assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_end_company",
        )
        .await;
        assert!(
            body["error"]["details"]["end_company_id"].is_string(),
            "{body}"
        );
    }
    assert_eq!(app.mint_count().await, 1);
}

async fn rule_6_agents_must_be_the_target_tenants_and_are_deduplicated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [102, 101, 102, 101]}),
        )
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap())
            .await
            .allowed_agent_ids,
        vec![102, 101]
    );

    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [101, 999, 201, 999]}),
        )
        .await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_agent_ids",
    )
    .await;
    assert_eq!(
        body["error"]["details"]["unknown_agent_ids"],
        json!([999, 201])
    );

    // For a platform mint the agents are checked against the target tenant, not the caller's.
    let (data, _) = app
        .mint_ok(NEO_KEY, json!({"session_id": "s-globex-support", "client_id": "globex", "allowed_agent_ids": [201]}))
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap())
            .await
            .allowed_agent_ids,
        vec![201]
    );
    let response = app
        .mint(NEO_KEY, json!({"session_id": "s-globex-support", "client_id": "globex", "allowed_agent_ids": [101]}))
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_agent_ids",
    )
    .await;
    assert_eq!(app.mint_count().await, 2);
}

async fn rule_5_is_checked_before_rule_6(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_company_id": "nope", "allowed_agent_ids": [999]}),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_end_company",
    )
    .await;
}

async fn a_database_failure_is_a_500_that_says_nothing_internal(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    sqlx::query("ALTER TABLE session_token_mints RENAME TO session_token_mints_gone")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_user": "pat"}),
        )
        .await;
    let body = assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    let text = body.to_string();
    for leak in [
        "session_token_mints",
        "relation",
        "sqlx",
        "SELECT",
        "INSERT",
        "eyJ",
        "pat",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}

async fn concurrent_mints_all_succeed_and_are_all_recorded(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let app = std::sync::Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let session_id = ["s-acme-1", "s-acme-wl", "s-acme-support"][i % 3];
            let response = app
                .mint(
                    ACME_KEY,
                    json!({"session_id": session_id, "end_user": format!("user-{i}")}),
                )
                .await;
            let status = response.status();
            (status, response.text().await.unwrap())
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.mint_count().await, 64);
}

backend_tests!(
    concurrent_mints_all_succeed_and_are_all_recorded,
    a_minimal_mint_returns_a_verifiable_token_with_every_claim,
    each_mint_is_recorded_with_who_minted_it,
    ttl_bounds_are_inclusive,
    ttl_limits_follow_the_configuration,
    rule_2_client_id_from_a_tenant_key_is_forbidden,
    rule_2_a_platform_key_mints_for_a_tenants_neo_support_session_only,
    rule_3_other_tenants_sessions_are_indistinguishable_from_missing_ones,
    rule_4_closed_sessions_conflict_before_scope_and_agent_checks,
    rule_5_a_scoped_session_always_carries_its_own_end_company,
    rule_5_an_unscoped_session_is_narrowed_to_an_end_company_of_the_tenant,
    rule_6_agents_must_be_the_target_tenants_and_are_deduplicated,
    rule_5_is_checked_before_rule_6,
    a_database_failure_is_a_500_that_says_nothing_internal,
);
