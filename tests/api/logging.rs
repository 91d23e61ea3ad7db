//! The real binary: one JSON log line per request with the request's identity, never a secret;
//! and a clean exit on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    entra::{self, FakeEntra},
    support::{Backend, TestDatabase, ACME_KEY, ACME_REVOKED_KEY},
};

async fn request_logs_carry_identity_but_never_secrets_and_sigterm_stops_cleanly(backend: Backend) {
    let fake_entra = FakeEntra::start(&[entra::current()]).await;
    let db = TestDatabase::seeded(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let workdir = tempfile::tempdir().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_neo-sessions"))
        .arg("serve")
        .current_dir(workdir.path())
        .env("NEO_DATABASE_URL", &db.url)
        .env("NEO_DATA_DIR", data_dir.path())
        .env("NEO_KEY_ENCRYPTION_KEY", crate::support::TEST_KEK)
        .env("NEO_LISTEN", "127.0.0.1:0")
        .env("NEO_LOG_FORMAT", "json")
        .env("NEO_ENTRA_JWKS_URL", &fake_entra.url)
        .env("NEO_ENTRA_AUDIENCE", entra::AUD_GUID)
        .env("NEO_AUTH_FAILURE_BURST", "1")
        .env("NEO_AUTH_FAILURE_PER_MINUTE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start neo-sessions serve");

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let mut lines = Vec::new();
    let address = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server logs that it listens");
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        lines.push(line);
        if entry["message"] == "neo-sessions listening" {
            break entry["address"].as_str().unwrap().to_owned();
        }
    };

    crate::support::init_test_process();
    let client = reqwest::Client::new();
    let url = format!("http://{address}/public-api/sessions");
    let request_id = uuid::Uuid::new_v4().to_string();
    let minted: Value = client
        .post(&url)
        .bearer_auth(ACME_KEY)
        .header("x-request-id", &request_id)
        .json(&json!({"session_id": "s-acme-1", "end_user": "pat", "end_user_email": "pat.secret@contoso.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["data"]["token"].as_str().expect("minted").to_owned();
    for credential in [ACME_REVOKED_KEY, token.as_str()] {
        let response = client
            .post(&url)
            .bearer_auth(credential)
            .json(&json!({"session_id": "s-acme-1"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }

    // A dashboard user: of the Entra token only tid and oid may reach the log.
    let entra_token = entra::sign(entra::current(), &entra::user_claims(json!({})));
    let response = client
        .post(&url)
        .bearer_auth(&entra_token)
        .json(&json!({"session_id": "s-acme-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Over the failed-auth budget (1): the line says which limit fired. The caller's own request
    // id is not a UUID: logged as client_request_id, bounded, while ours is assigned.
    let response = client
        .post(&url)
        .bearer_auth(ACME_REVOKED_KEY)
        .header("x-request-id", format!("relay-{}", "x".repeat(200)))
        .json(&json!({"session_id": "s-acme-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    // Probes are logged at DEBUG only (this run logs INFO and up).
    let probe = client
        .get(format!("http://{address}/public-api/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    // A request method of 8 KiB (a valid token, any length is): the line copies a bounded
    // prefix of it.
    let long_method = format!("LONG{}", "X".repeat(8 * 1024));
    let response = client
        .request(
            reqwest::Method::from_bytes(long_method.as_bytes()).expect("a token"),
            format!("http://{address}/public-api/openapi.json"),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(exit.success(), "SIGTERM ends the server cleanly: {exit:?}");

    let log = lines.join("\n");
    for secret in [
        ACME_KEY,
        ACME_REVOKED_KEY,
        &ACME_KEY[12..],
        token.as_str(),
        "pat.secret@contoso.com",
    ] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    let completed: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["message"] == "request completed")
        .collect();
    assert_eq!(
        completed.len(),
        6,
        "one line per request, probes not at INFO:\n{log}"
    );
    for line in &completed {
        assert_eq!(line["span"]["client_ip"], "127.0.0.1", "{line}");
    }
    let first = &completed[0];
    assert_eq!(first["status"], 200);
    assert!(first["latency_ms"].is_number());
    assert_eq!(first["span"]["request_id"], request_id);
    assert_eq!(first["span"]["route"], "/public-api/sessions");
    assert_eq!(first["span"]["principal_kind"], "api_key");
    assert_eq!(first["span"]["tenant"], "acme");
    assert_eq!(first["span"]["jti"], minted["data"]["jti"]);
    assert_eq!(completed[1]["status"], 401);
    assert_eq!(completed[1]["span"]["code"], "invalid_credentials");
    // The refusal of a revoked key says whose key it is (its id and tenant; never the key).
    let refused = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["message"] == "request refused" && e["code"] == "invalid_credentials")
        .unwrap_or_else(|| panic!("no refusal line:\n{log}"));
    assert_eq!(
        refused["cause"], "revoked API key k-old of tenant acme",
        "{refused}"
    );
    assert_eq!(completed[2]["status"], 403);
    assert_eq!(completed[2]["span"]["code"], "insufficient_scope");
    assert_eq!(completed[2]["span"]["principal_kind"], "end_user");
    assert_eq!(completed[3]["status"], 200);
    assert_eq!(completed[3]["span"]["principal_kind"], "entra_user");
    assert_eq!(
        completed[3]["span"]["principal_id"],
        format!("{}:{}", entra::TID, entra::OID)
    );
    assert_eq!(completed[3]["span"]["tenant"], "acme");
    assert_eq!(completed[4]["status"], 429);
    assert_eq!(completed[4]["span"]["code"], "rate_limited");
    assert_eq!(completed[4]["span"]["limit"], "failed_auth_per_ip");
    let client_request_id = completed[4]["span"]["client_request_id"]
        .as_str()
        .expect("client_request_id");
    assert!(client_request_id.starts_with("relay-x"));
    assert_eq!(client_request_id.len(), 64);
    assert!(uuid::Uuid::try_parse(completed[4]["span"]["request_id"].as_str().unwrap()).is_ok());
    let method = completed[5]["span"]["method"].as_str().expect("method");
    assert!(method.starts_with("LONGXXX"), "{method}");
    assert!(
        method.len() <= 64,
        "the method copied whole: {} bytes",
        method.len()
    );
    assert!(
        !log.contains(&"X".repeat(100)),
        "the method reached the log whole"
    );
    assert!(lines.iter().any(|l| l.contains("shut down")), "{log}");
}

backend_tests!(request_logs_carry_identity_but_never_secrets_and_sigterm_stops_cleanly,);
