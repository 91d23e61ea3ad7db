//! The shared test vectors (`tests/vectors/session-tokens.json` at the repository root, rebuilt
//! by `cargo run -p neo-sessions-verify --example vectors`): each token, checked at its time for
//! its session against the vectors' JWKS (served over HTTP as the token service serves it), must
//! give exactly the expected answer, and a valid one exactly its claims. The Python package runs
//! the same file (`clients/python/tests/test_vectors.py`).

use axum::{routing::get, Json, Router};
use chrono::DateTime;
use neo_sessions_verify::{Verifier, VerifierConfig};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/session-tokens.json"
);

#[tokio::test]
async fn every_vector_gets_its_expected_answer() {
    let text = std::fs::read_to_string(VECTORS).expect("the vectors file");
    let document: Value = serde_json::from_str(&text).expect("vectors JSON");
    let jwks = document["jwks"].clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { ([("cache-control", "public, max-age=300")], Json(jwks)) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let text_of = |v: &Value| v.as_str().expect("a string").to_owned();
    let mut config = VerifierConfig::for_issuer(
        &text_of(&document["issuer"]),
        &text_of(&document["audience"]),
    );
    config.jwks_url = format!("http://{addr}/.well-known/jwks.json");
    let leeway = document["leeway_seconds"].as_u64().expect("leeway");
    config.leeway = std::time::Duration::from_secs(leeway);
    let verifier = Verifier::new(config).expect("verifier");

    let vectors = document["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 20, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for vector in vectors {
        let name = text_of(&vector["name"]);
        let at = DateTime::from_timestamp(vector["at"].as_i64().expect("at"), 0).expect("time");
        let outcome = verifier
            .verify_at(
                &text_of(&vector["token"]),
                &text_of(&vector["session_id"]),
                at,
            )
            .await;
        let expected = text_of(&vector["expected"]);
        match outcome {
            Ok(claims) if expected == "ok" => {
                let got = serde_json::to_value(&claims).expect("claims");
                if got != vector["claims"] {
                    failures.push(format!("{name}: claims {got} != {}", vector["claims"]));
                }
            }
            Ok(_) => failures.push(format!("{name}: ok, expected {expected}")),
            Err(error) if error.code() == expected => {}
            Err(error) => failures.push(format!(
                "{name}: {} ({error}), expected {expected}",
                error.code()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
