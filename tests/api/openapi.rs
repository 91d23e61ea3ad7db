//! The served OpenAPI document, the committed copy, and the public metadata routes.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Backend, TestApp};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");

async fn the_committed_document_is_the_served_document(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let served: Value = app.get_json("/public-api/openapi.json").await;
    if std::env::var_os("NEO_UPDATE_OPENAPI").is_some() {
        let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(COMMITTED, pretty).unwrap();
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(COMMITTED).expect("openapi/openapi.json exists"),
    )
    .expect("committed document is JSON");
    assert!(
        served == committed,
        "openapi/openapi.json is stale: run `NEO_UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it"
    );
}

async fn the_document_keeps_the_seed_contract(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app.get_json("/public-api/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    for name in [
        "MintSessionTokenRequest",
        "MintSessionTokenResponse",
        "SuccessMeta",
        "ErrorEnvelope",
        "Pagination",
    ] {
        assert!(schemas.get(name).is_some(), "schema {name} is missing");
    }
    assert_eq!(
        schemas["MintSessionTokenRequest"]["required"],
        serde_json::json!(["session_id"])
    );
    let required: Vec<&str> = schemas["MintSessionTokenResponse"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in ["token", "jti", "session_id", "expires_at"] {
        assert!(
            required.contains(&field),
            "{field} not required in {required:?}"
        );
    }
    for field in ["request_id", "timings_ms"] {
        assert!(schemas["SuccessMeta"]["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from(field)));
    }
    for field in ["error", "meta"] {
        assert!(schemas["ErrorEnvelope"]["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from(field)));
    }

    let mint = &doc["paths"]["/public-api/sessions"]["post"];
    assert_eq!(mint["operationId"], "public_api.session_token_mint_post");
    assert_eq!(mint["security"], serde_json::json!([{"bearerAuth": []}]));
    for status in [
        "200", "400", "401", "403", "404", "409", "422", "429", "500",
    ] {
        assert!(
            mint["responses"].get(status).is_some(),
            "status {status} undocumented"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // For client developers: the headers, the error codes per status, the enforced bounds.
    let responses = &mint["responses"];
    for status in ["200", "401", "429", "503"] {
        assert!(
            responses[status]["headers"]["X-Request-Id"].is_object(),
            "{status}"
        );
    }
    assert!(responses["401"]["headers"]["WWW-Authenticate"].is_object());
    assert!(responses["429"]["headers"]["Retry-After"].is_object());
    assert!(responses["200"]["headers"]["RateLimit-Policy"].is_object());
    let codes = |status: &str| -> Vec<String> {
        responses[status]["content"]["application/json"]["schema"]["allOf"][1]["properties"]
            ["error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no code enum for {status}"))
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(codes("401"), ["missing_credentials", "invalid_credentials"]);
    assert!(codes("422").contains(&"invalid_agent_ids".to_owned()));
    assert!(codes("503").contains(&"database_unavailable".to_owned()));
    let ttl = &schemas["MintSessionTokenRequest"]["properties"]["ttl_seconds"];
    assert_eq!(
        (ttl["minimum"].as_i64(), ttl["maximum"].as_i64()),
        (Some(60), Some(3600))
    );
}

/// Renderers list operations by the declared tags, in their order, and within a tag in the
/// document's order: the mint must open the page, and an undeclared tag would trail at its end.
async fn the_mint_comes_first_and_every_tag_is_declared(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app.get_json("/public-api/openapi.json").await;
    let declared: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tag| tag["name"].as_str())
        .collect();
    let mut in_page_order: Vec<(usize, &str)> = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            let tags = operation["tags"].as_array().unwrap();
            let id = operation["operationId"].as_str().unwrap();
            assert_eq!(tags.len(), 1, "{id}: {tags:?}");
            let tag = tags[0].as_str().unwrap();
            let position = declared
                .iter()
                .position(|declared| *declared == tag)
                .unwrap_or_else(|| panic!("{id}: tag {tag} is not declared in ApiDoc's tags"));
            in_page_order.push((position, id));
        }
    }
    // (Within a tag this keeps the parsed document's order, not the served one: the mint must
    // have its tag to itself, the first declared.)
    in_page_order.sort_by_key(|(position, _)| *position);
    let first_tag = in_page_order
        .iter()
        .filter(|(position, _)| *position == 0)
        .count();
    assert_eq!(
        first_tag, 1,
        "the first tag holds more than the mint: {in_page_order:?}"
    );
    assert_eq!(
        in_page_order.first().map(|(_, id)| *id),
        Some("public_api.session_token_mint_post"),
        "{in_page_order:?}"
    );
}

async fn every_route_is_documented_and_every_documented_route_exists(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app.get_json("/public-api/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let response = app
                .request(method.to_uppercase().parse().unwrap(), path, None)
                .await;
            assert_ne!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert_ne!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /public-api/directory/sessions/{session_id}",
            "DELETE /public-api/directory/tenants/{tenant_id}",
            "DELETE /public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
            "DELETE /public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
            "DELETE /public-api/sessions/{jti}",
            "GET /.well-known/jwks.json",
            "GET /.well-known/openid-configuration",
            "GET /docs",
            "GET /docs/redoc.standalone.js",
            "GET /metrics",
            "GET /public-api/directory/sessions/{session_id}",
            "GET /public-api/directory/tenants",
            "GET /public-api/directory/tenants/{tenant_id}",
            "GET /public-api/directory/tenants/{tenant_id}/agents",
            "GET /public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
            "GET /public-api/directory/tenants/{tenant_id}/end-companies",
            "GET /public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
            "GET /public-api/directory/tenants/{tenant_id}/sessions",
            "GET /public-api/health",
            "GET /public-api/health/live",
            "GET /public-api/openapi.json",
            "GET /public-api/sessions",
            "GET /public-api/sessions/revocations",
            "GET /public-api/sessions/{jti}",
            "POST /oauth2/introspect",
            "POST /public-api/sessions",
            "POST /public-api/sessions/introspect",
            "POST /public-api/sessions/revoke",
            "PUT /public-api/directory/sessions/{session_id}",
            "PUT /public-api/directory/tenants/{tenant_id}",
            "PUT /public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
            "PUT /public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
        ]
    );
}

async fn health_reports_the_database(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/public-api/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["status"], "ok");
    assert_eq!(body["data"]["database"], "ok");
    assert!(body["meta"]["request_id"].is_string());

    // With its database gone the service says so, in the envelope, without details. (A SQLite
    // file cannot be taken away from open connections, so this half is PostgreSQL's.)
    if backend != Backend::Postgres {
        return;
    }
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", app.db.name))
        .execute(
            &sqlx::PgPool::connect(&crate::support::admin_url())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    // Readiness answers from one ping a second (shared by all probes): past that second it pings
    // again and finds the database gone.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = app.get("/public-api/health").await;
    let body = crate::support::assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    let text = body.to_string();
    assert!(
        !text.contains("neo_test_") && !text.contains("database \""),
        "{text}"
    );
}

/// `/docs` renders the document for people from the binary alone: no external host is named.
async fn the_docs_page_is_served_from_the_binary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/docs").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(crate::support::header(&response, "content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(crate::support::header(&response, "content-security-policy")
        .is_some_and(|csp| csp.contains("connect-src 'self'")));
    let page = response.text().await.expect("page");
    assert!(page.contains("/public-api/openapi.json"));
    for external in ["http://", "https://", "//cdn", "unpkg", "jsdelivr"] {
        assert!(!page.contains(external), "the page loads {external}");
    }
}

async fn the_jwks_publishes_only_public_key_material(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().unwrap();
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(
        !key.contains_key("d"),
        "private scalar must never be published"
    );
}

/// The token's claims have a named schema with every claim a token always carries required, and
/// both introspection answers (the envelope's `data` and RFC 7662's bare object) reference it.
async fn the_claims_have_a_schema_that_both_introspections_reference(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app.get_json("/public-api/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let claims = &schemas["SessionClaims"];
    let mut required: Vec<&str> = claims["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    required.sort_unstable();
    assert_eq!(
        required,
        [
            "allowed_agent_ids",
            "aud",
            "client_id",
            "exp",
            "iat",
            "iss",
            "jti",
            "nbf",
            "scope",
            "session_id",
            "sub"
        ]
    );
    for nullable in ["end_company_id", "end_user", "end_user_email"] {
        assert_eq!(
            claims["properties"][nullable]["type"],
            serde_json::json!(["string", "null"]),
            "{nullable}"
        );
    }
    let answer_schema = |path: &str| {
        doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"]
            .clone()
    };
    assert_eq!(
        answer_schema("/oauth2/introspect"),
        "#/components/schemas/Introspection"
    );
    assert_eq!(
        answer_schema("/public-api/sessions/introspect"),
        "#/components/schemas/IntrospectionEnvelope"
    );
    assert_eq!(
        schemas["IntrospectionEnvelope"]["properties"]["data"]["$ref"],
        "#/components/schemas/Introspection"
    );
    let one_of = schemas["Introspection"]["oneOf"].clone();
    assert_eq!(
        one_of,
        serde_json::json!([
            {"$ref": "#/components/schemas/ActiveToken"},
            {"$ref": "#/components/schemas/InactiveToken"}
        ])
    );
    let active = &schemas["ActiveToken"]["allOf"];
    assert_eq!(active[0]["$ref"], "#/components/schemas/SessionClaims");
    assert_eq!(
        active[1]["properties"]["active"]["enum"],
        serde_json::json!([true])
    );
    assert_eq!(
        schemas["InactiveToken"]["properties"]["active"]["enum"],
        serde_json::json!([false])
    );

    // What a token really carries is what the schema says: every claim named, every required
    // one present.
    let (data, _) = app
        .mint_ok(
            crate::support::ACME_KEY,
            serde_json::json!({"session_id": "s-acme-1"}),
        )
        .await;
    let token = data["token"].as_str().expect("token");
    let carried = app.verify(token).await;
    let carried = serde_json::to_value(carried).expect("claims");
    let carried = carried.as_object().expect("object");
    let named = claims["properties"].as_object().expect("properties");
    let mut carried_names: Vec<&String> = carried.keys().collect();
    let mut named_names: Vec<&String> = named.keys().collect();
    carried_names.sort_unstable();
    named_names.sort_unstable();
    assert_eq!(carried_names, named_names);
}

backend_tests!(
    the_claims_have_a_schema_that_both_introspections_reference,
    the_docs_page_is_served_from_the_binary,
    the_committed_document_is_the_served_document,
    the_document_keeps_the_seed_contract,
    the_mint_comes_first_and_every_tag_is_declared,
    every_route_is_documented_and_every_documented_route_exists,
    health_reports_the_database,
    the_jwks_publishes_only_public_key_material,
);
