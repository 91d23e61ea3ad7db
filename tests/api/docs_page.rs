//! `/docs` as a person sees it: the real server on a random port, the page rendered by a real
//! headless Chromium (Debian's `chromium`; `NEO_TEST_CHROMIUM` names another binary), and the
//! DOM it builds read back. Without Chromium the test fails under `CI=true` and is skipped, loudly,
//! elsewhere. The page does not depend on the database, so it runs on SQLite only.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::support::{header, Backend, TestApp};

const MINT: &str = "public_api.session_token_mint_post";

/// Chromium's DOM of `url` once its scripts have run (or `None` when it is not installed and
/// this is not CI).
async fn rendered_dom(url: &str) -> Option<String> {
    let chromium = std::env::var("NEO_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dom.html");
    let err = dir.path().join("chromium.log");
    let spawned = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=15000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "`{chromium}` is not installed: CI must install Debian's chromium (.ci/run does)"
            );
            eprintln!(
                "\n*** SKIPPED: the /docs browser test needs `{chromium}` (apt-get install chromium) ***\n"
            );
            return None;
        }
        Err(error) => panic!("cannot start {chromium}: {error}"),
    };
    // Polled, not waited for: the server under test runs on this test's runtime.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s:\n{}", tail(&err));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        tail(&err)
    );
    Some(std::fs::read_to_string(&out).unwrap())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    text.get(start..).unwrap_or(&text).to_owned()
}

/// The operations in the order the page shows them (Redoc's `data-section-id`s).
fn operations_in_order(dom: &str) -> Vec<&str> {
    let mut operations: Vec<&str> = Vec::new();
    for piece in dom.split("data-section-id=\"").skip(1) {
        let id = piece.split('"').next().unwrap_or_default();
        if let Some((_, operation)) = id.split_once("operation/") {
            if operations.last() != Some(&operation) {
                operations.push(operation);
            }
        }
    }
    operations
}

/// The page shows the whole document: the mint first, with its `Idempotency-Key` header, its
/// request body's fields, its success schema, and its Markdown rendered.
#[tokio::test]
async fn the_docs_page_renders_the_mint_first_with_its_parameters_and_schemas() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let Some(dom) = rendered_dom(&app.url("/docs")).await else {
        return;
    };

    let operations = operations_in_order(&dom);
    assert_eq!(
        operations.first().copied(),
        Some(MINT),
        "the page shows {} operations, in this order: {operations:?}\n{}",
        operations.len(),
        &dom[..dom.len().min(2000)]
    );
    // Every documented operation is on the page.
    let document: serde_json::Value = app.get_json("/public-api/openapi.json").await;
    let documented = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .count();
    assert_eq!(operations.len(), documented, "{operations:?}");
    // Within a tag, the router's order: a list before its items, an item's PUT before its DELETE.
    let position = |id: &str| operations.iter().position(|op| *op == id).unwrap();
    assert!(
        position("public_api.directory_tenants_list") < position("public_api.directory_tenant_put")
            && position("public_api.directory_tenant_put")
                < position("public_api.directory_tenant_delete"),
        "{operations:?}"
    );

    let start = dom
        .find(&format!("data-section-id=\"operation/{MINT}\""))
        .unwrap();
    let end = operations
        .get(1)
        .and_then(|next| dom[start..].find(&format!("operation/{next}\"")))
        .map_or(dom.len(), |offset| start + offset);
    let mint = &dom[start..end];
    for (what, field) in [
        ("the Idempotency-Key header", "Idempotency-Key"),
        ("the request body's session_id", "session_id"),
        ("the request body's allowed_agent_ids", "allowed_agent_ids"),
        ("the request body's ttl_seconds", "ttl_seconds"),
        ("the success schema's data", "data"),
        ("the success schema's token", "token"),
        ("the success schema's expires_in", "expires_in"),
        ("the success schema's meta.request_id", "request_id"),
    ] {
        assert!(
            mint.contains(&format!("title=\"{field}\"")),
            "the mint's section does not show {what}"
        );
    }
    assert!(mint.contains("header Parameters"), "no header parameters");
    // Markdown is rendered, not shown raw.
    assert!(mint.contains("<code>session_id</code>"));
    assert!(!mint.contains("`session_id`"), "Markdown shown raw");
}

/// The page and its script come from the binary, with caching headers and a policy that lets the
/// page run only this server's script; the script is sent gzipped to a client that accepts it.
#[tokio::test]
async fn the_docs_page_and_its_script_come_from_the_binary() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let page = app.get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = header(&page, "content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    let html = page.text().await.unwrap();
    assert!(html.contains("<script src=\"/docs/redoc.standalone.js\">"));
    assert!(html.contains("spec-url=\"/public-api/openapi.json\""));

    let client = reqwest::Client::new();
    let gzipped = client
        .get(app.url("/docs/redoc.standalone.js"))
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(
        header(&gzipped, "content-encoding").as_deref(),
        Some("gzip")
    );
    assert_eq!(
        header(&gzipped, "content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        header(&gzipped, "cache-control").as_deref(),
        Some("public, max-age=86400")
    );
    let etag = header(&gzipped, "etag").unwrap();
    let compressed = gzipped.bytes().await.unwrap();
    assert!(compressed.starts_with(&[0x1f, 0x8b]), "not gzip");
    assert!(compressed.len() < 400_000, "{} bytes", compressed.len());

    // A client that does not take gzip gets the script itself.
    let plain = app.get("/docs/redoc.standalone.js").await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(header(&plain, "content-encoding").is_none());
    let script = plain.text().await.unwrap();
    assert!(script.contains("Redoc"), "not the Redoc bundle");

    let revalidated = client
        .get(app.url("/docs/redoc.standalone.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&revalidated, "etag"), Some(etag));

    // Counted under its own route, not as `unmatched`.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("neo_sessions_http_requests_total{")
                && line.contains("route=\"/docs/redoc.standalone.js\"")
                && line.contains("status=\"200\"")),
        "{metrics}"
    );
}
