//! The directory API from the outside: the platform's key creates a tenant, an end company, an
//! agent and a session; a tenant's key mints for them; closing or deleting takes the tokens
//! away (in the revocation feed at once); bad rows get named errors and change nothing; only a
//! `directory:write` key writes, and a tenant reads only its own rows.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    assert_error, cli::Cli, Backend, TestApp, TestDatabase, ACME_KEY, GLOBEX_KEY, JSON, NEO_KEY,
};

async fn create_key(db: &TestDatabase, args: &[&str]) -> String {
    let mut all = vec!["api-key", "create"];
    all.extend_from_slice(args);
    let run = Cli::new(db).run(&all).await;
    run.assert_success();
    run.key_lines()[0].trim().to_owned()
}

async fn put(app: &TestApp, key: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/public-api/directory{path}")))
        .bearer_auth(key)
        .header("content-type", JSON)
        .body(body.to_string())
        .send()
        .await
        .expect("PUT")
}

async fn put_ok(app: &TestApp, key: &str, path: &str, body: Value) -> Value {
    let response = put(app, key, path, body).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert!(
        status == StatusCode::OK || status == StatusCode::CREATED,
        "PUT {path}: {status} {body}"
    );
    body
}

async fn call(app: &TestApp, method: Method, key: &str, path: &str) -> reqwest::Response {
    app.request(method, &format!("/public-api/directory{path}"), Some(key))
        .await
}

/// An app on a seeded database, with a `directory:write` platform key.
async fn app_with_directory_key(backend: Backend) -> (TestApp, String, TestDatabase) {
    let db = TestDatabase::seeded(backend).await;
    let key = create_key(
        &db,
        &[
            "--tenant",
            "neo",
            "--name",
            "platform sync",
            "--scope",
            "directory:write",
        ],
    )
    .await;
    let handle = TestDatabase::attach(backend, &db.name, db.url.clone()).await;
    let app = TestApp::builder(backend).database(db).spawn().await;
    (app, key, handle)
}

/// The path end to end: an empty tenant gets its rows through the API, a tenant key
/// mints for the white-label session and the token carries its end company, closing the
/// session refuses the next mint and puts the earlier token in the feed.
async fn the_platform_writes_the_directory_and_the_mint_follows(backend: Backend) {
    let (app, key, db) = app_with_directory_key(backend).await;

    let created = put(&app, &key, "/tenants/initech", json!({"name": "Initech"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let again = put(&app, &key, "/tenants/initech", json!({"name": "Initech"})).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "an upsert: the second is not a create"
    );
    put_ok(
        &app,
        &key,
        "/tenants/initech/end-companies/hooli",
        json!({"name": "Hooli"}),
    )
    .await;
    put_ok(
        &app,
        &key,
        "/tenants/initech/agents/9001",
        json!({"name": "Helpdesk"}),
    )
    .await;
    let session = put_ok(
        &app,
        &key,
        "/sessions/s-initech-wl",
        json!({"tenant_id": "initech", "end_company_id": "hooli"}),
    )
    .await;
    assert_eq!(
        session["data"],
        json!({"id": "s-initech-wl", "tenant_id": "initech", "kind": "standard",
               "status": "active", "end_company_id": "hooli"})
    );

    let tenant_key = create_key(&db, &["--tenant", "initech", "--name", "relay"]).await;
    let (data, _) = app
        .mint_ok(
            &tenant_key,
            json!({"session_id": "s-initech-wl", "allowed_agent_ids": [9001]}),
        )
        .await;
    let jti = data["jti"].as_str().expect("jti").to_owned();
    let claims = app.verify(data["token"].as_str().expect("token")).await;
    assert_eq!(claims.end_company_id.as_deref(), Some("hooli"));
    assert_eq!(claims.client_id, "initech");

    let closed = put_ok(
        &app,
        &key,
        "/sessions/s-initech-wl",
        json!({"tenant_id": "initech", "end_company_id": "hooli", "status": "closed"}),
    )
    .await;
    assert_eq!(closed["data"]["status"], "closed");
    assert!(
        app.revoked_jtis(NEO_KEY, 1).await.contains(&jti),
        "the earlier token is in the feed"
    );
    let refused = app
        .mint(&tenant_key, json!({"session_id": "s-initech-wl"}))
        .await;
    assert_error(refused, StatusCode::CONFLICT, "session_closed").await;
}

/// Removing a session or an agent revokes the live tokens that depend on it; an end company
/// that sessions are scoped to cannot be removed.
async fn removals_take_their_tokens_with_them(backend: Backend) {
    let (app, key, _db) = app_with_directory_key(backend).await;
    // Seeded: acme has agents 101, 102 and sessions s-acme-1, s-acme-wl (scoped to contoso).
    let (first, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [101]}),
        )
        .await;
    let (second, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [102]}),
        )
        .await;
    let response = call(&app, Method::DELETE, &key, "/tenants/acme/agents/101").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked_tokens"], 1, "{body}");
    let revoked = app.revoked_jtis(NEO_KEY, 1).await;
    assert!(revoked.contains(&first["jti"].as_str().unwrap().to_owned()));
    assert!(!revoked.contains(&second["jti"].as_str().unwrap().to_owned()));
    let response = app
        .mint(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [101]}),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_agent_ids",
    )
    .await;

    let response = call(
        &app,
        Method::DELETE,
        &key,
        "/tenants/acme/end-companies/contoso",
    )
    .await;
    assert_error(response, StatusCode::CONFLICT, "end_company_in_use").await;

    let response = call(&app, Method::DELETE, &key, "/sessions/s-acme-1").await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked_tokens"], 1, "{body}");
    assert!(app
        .revoked_jtis(NEO_KEY, 2)
        .await
        .contains(&second["jti"].as_str().unwrap().to_owned()));
    let response = app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    // The records stay: the audit trail outlives the session.
    assert_eq!(app.mint_count().await, 2);
    let response = call(&app, Method::GET, &key, "/sessions/s-acme-1").await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
}

/// Rows that break a rule get a named error and change nothing.
async fn bad_rows_get_named_errors_and_change_nothing(backend: Backend) {
    let (app, key, _db) = app_with_directory_key(backend).await;
    let sessions_before = app.mint_count().await;
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        // A session never changes tenant.
        (
            "/sessions/s-acme-1",
            json!({"tenant_id": "globex"}),
            StatusCode::CONFLICT,
            "session_of_another_tenant",
        ),
        // A white-label session's end company must be its tenant's.
        (
            "/sessions/s-globex-new",
            json!({"tenant_id": "globex", "end_company_id": "contoso"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_end_company",
        ),
        // At most one active Neo Support session per tenant.
        (
            "/sessions/s-acme-support-2",
            json!({"tenant_id": "acme", "kind": "neo_support"}),
            StatusCode::CONFLICT,
            "neo_support_session_exists",
        ),
        // An agent id is another tenant's.
        (
            "/tenants/globex/agents/101",
            json!({"name": "taken"}),
            StatusCode::CONFLICT,
            "agent_of_another_tenant",
        ),
        (
            "/sessions/s-nowhere",
            json!({"tenant_id": "nowhere"}),
            StatusCode::NOT_FOUND,
            "tenant_not_found",
        ),
        (
            "/tenants/nowhere/end-companies/x",
            json!({"name": "X"}),
            StatusCode::NOT_FOUND,
            "tenant_not_found",
        ),
        (
            "/sessions/s-acme-1",
            json!({"tenant_id": "acme", "kind": "vip"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/sessions/s-acme-1",
            json!({"id": "s-acme-2", "tenant_id": "acme"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/sessions/s-acme-1",
            json!({"tenant_id": "acme", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/tenants/acme",
            json!({"name": "Acme", "platform": true}),
            StatusCode::CONFLICT,
            "platform_tenant_immutable",
        ),
        (
            "/tenants/newco",
            json!({"name": "NewCo", "entra_tenant_id": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a"}),
            StatusCode::CONFLICT,
            "entra_tenant_id_taken",
        ),
        (
            "/tenants/acme",
            json!({"name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    for (path, body, status, code) in cases {
        let response = put(&app, &key, path, body.clone()).await;
        let got = response.status();
        let answer: Value = response.json().await.expect("json");
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {answer}"
        );
    }
    // Unchanged: acme's session is still acme's and active, globex got nothing, acme is no platform.
    let session: Value = call(&app, Method::GET, &key, "/sessions/s-acme-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["data"]["tenant_id"], "acme");
    assert_eq!(session["data"]["kind"], "standard");
    for path in [
        "/sessions/s-globex-new",
        "/sessions/s-acme-support-2",
        "/sessions/s-nowhere",
    ] {
        let response = call(&app, Method::GET, &key, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let tenant: Value = call(&app, Method::GET, &key, "/tenants/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["data"]["platform"], false);
    let response = call(&app, Method::GET, &key, "/tenants/newco").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.mint_count().await, sessions_before);
}

/// Only a `directory:write` key writes; a tenant's key reads its own rows and nothing else.
async fn tenants_read_their_own_rows_and_never_write(backend: Backend) {
    let (app, key, _db) = app_with_directory_key(backend).await;
    for (path, body) in [
        ("/tenants/acme", json!({"name": "Mine now"})),
        (
            "/sessions/s-acme-1",
            json!({"tenant_id": "acme", "status": "closed"}),
        ),
        ("/sessions/s-acme-new", json!({"tenant_id": "acme"})),
    ] {
        let response = put(&app, ACME_KEY, path, body).await;
        let body = assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
        assert_eq!(
            body["error"]["details"]["required_scope"],
            "directory:write"
        );
    }
    // The platform's minting key does not write the directory either: the scope is explicit.
    let response = put(&app, NEO_KEY, "/tenants/acme", json!({"name": "x"})).await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let response = call(&app, Method::DELETE, ACME_KEY, "/sessions/s-acme-1").await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;

    let own: Value = call(&app, Method::GET, ACME_KEY, "/sessions/s-acme-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        own["data"]["status"], "active",
        "nothing was written: {own}"
    );
    for path in [
        "/sessions/s-globex-1",
        "/tenants/globex",
        "/tenants/globex/sessions",
        "/tenants/globex/agents",
    ] {
        let response = call(&app, Method::GET, ACME_KEY, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let tenants: Value = call(&app, Method::GET, ACME_KEY, "/tenants")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme"]);
    let all: Value = call(&app, Method::GET, &key, "/tenants")
        .await
        .json()
        .await
        .unwrap();
    assert!(all["data"].as_array().unwrap().len() >= 3, "{all}");

    // A session token (an end user) reads nothing.
    let (data, _) = app
        .mint_ok(GLOBEX_KEY, json!({"session_id": "s-globex-1"}))
        .await;
    let token = data["token"].as_str().unwrap();
    let response = call(&app, Method::GET, token, "/sessions/s-globex-1").await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
}

/// Lists page by id; the rate-limit override round-trips; a tenant with rows cannot go.
async fn lists_page_and_tenants_carry_their_quota(backend: Backend) {
    let (app, key, _db) = app_with_directory_key(backend).await;
    put_ok(
        &app,
        &key,
        "/tenants/paged",
        json!({"name": "Paged", "rate_limit": {"per_minute": 120, "burst": 12}}),
    )
    .await;
    for i in 0..5 {
        put_ok(
            &app,
            &key,
            &format!("/sessions/s-paged-{i}"),
            json!({"tenant_id": "paged"}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = "/tenants/paged/sessions?limit=2".to_owned();
    loop {
        let page: Value = call(&app, Method::GET, &key, &path)
            .await
            .json()
            .await
            .unwrap();
        for s in page["data"].as_array().unwrap() {
            seen.push(s["id"].as_str().unwrap().to_owned());
        }
        match page["meta"]["pagination"]["next_cursor"].as_str() {
            Some(cursor) => path = format!("/tenants/paged/sessions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("s-paged-{i}")).collect::<Vec<_>>()
    );

    let tenant: Value = call(&app, Method::GET, &key, "/tenants/paged")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        tenant["data"]["rate_limit"],
        json!({"per_minute": 120, "burst": 12})
    );
    // Left out: kept. null: removed.
    put_ok(&app, &key, "/tenants/paged", json!({"name": "Paged Inc"})).await;
    let tenant: Value = call(&app, Method::GET, &key, "/tenants/paged")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["data"]["rate_limit"]["burst"], 12);
    put_ok(
        &app,
        &key,
        "/tenants/paged",
        json!({"name": "Paged Inc", "rate_limit": null}),
    )
    .await;
    let tenant: Value = call(&app, Method::GET, &key, "/tenants/paged")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["data"]["rate_limit"], Value::Null);

    let response = call(&app, Method::DELETE, &key, "/tenants/paged").await;
    assert_error(response, StatusCode::CONFLICT, "tenant_in_use").await;
    for i in 0..5 {
        let response = call(
            &app,
            Method::DELETE,
            &key,
            &format!("/sessions/s-paged-{i}"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = call(&app, Method::DELETE, &key, "/tenants/paged").await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = call(&app, Method::DELETE, &key, "/tenants/neo").await;
    assert_error(response, StatusCode::CONFLICT, "platform_tenant_immutable").await;
}

backend_tests!(
    the_platform_writes_the_directory_and_the_mint_follows,
    removals_take_their_tokens_with_them,
    bad_rows_get_named_errors_and_change_nothing,
    tenants_read_their_own_rows_and_never_write,
    lists_page_and_tenants_carry_their_quota,
);

/// The README's operator path: an empty database to a first mint without `seed`. `migrate`,
/// the platform tenant by `directory import` (the one thing the API may not create), a
/// `directory:write` key, then the platform's rows over HTTP, a tenant key, and a mint.
async fn an_empty_database_reaches_a_first_mint_without_seed(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.run(&["migrate"]).await.assert_success();
    let refused = cli
        .run(&["api-key", "create", "--tenant", "acme", "--name", "relay"])
        .await;
    refused.assert_failure();
    let platform = cli.write_fixture(
        "platform.jsonl",
        &json!({"tenant": {"id": "neo", "name": "Neo", "platform": true}}),
    );
    cli.run(&["directory", "import", &platform.to_string_lossy()])
        .await
        .assert_success();
    let sync = create_key(
        &db,
        &[
            "--tenant",
            "neo",
            "--name",
            "sync",
            "--scope",
            "directory:write",
        ],
    )
    .await;
    let handle = TestDatabase::attach(backend, &db.name, db.url.clone()).await;
    let app = TestApp::builder(backend).database(db).spawn().await;

    put_ok(&app, &sync, "/tenants/acme", json!({"name": "Acme MSP"})).await;
    put_ok(
        &app,
        &sync,
        "/tenants/acme/agents/101",
        json!({"name": "Helpdesk"}),
    )
    .await;
    put_ok(&app, &sync, "/sessions/s-1", json!({"tenant_id": "acme"})).await;
    let relay = create_key(&handle, &["--tenant", "acme", "--name", "teams relay"]).await;
    let (data, _) = app
        .mint_ok(
            &relay,
            json!({"session_id": "s-1", "allowed_agent_ids": [101]}),
        )
        .await;
    let claims = app.verify(data["token"].as_str().expect("token")).await;
    assert_eq!(claims.session_id, "s-1");
    assert_eq!(claims.client_id, "acme");
}

backend_tests!(an_empty_database_reaches_a_first_mint_without_seed);
