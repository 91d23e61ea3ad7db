//! A stand-in for the chat service: `GET /chat/sessions/{id}/messages` is served only to the
//! holder of a session token for that session, verified offline with `neo_sessions_verify`
//! against the token service's JWKS.
//!
//! ```sh
//! NEO_VERIFY_ISSUER=https://api.neoagent.io \
//! NEO_VERIFY_JWKS_URL=http://127.0.0.1:8080/.well-known/jwks.json \
//! NEO_VERIFY_AUDIENCE=https://api.neoagent.io/chat \
//! cargo run -p neo-sessions-verify --example verify_token
//! # also refuse revoked tokens: an API key that may read the revocation feed, polled every 5 s
//! # (NEO_VERIFY_REVOCATIONS_URL when the feed is not at <issuer>/public-api/sessions/revocations)
//! NEO_VERIFY_API_KEY=neo_sk_test_... NEO_VERIFY_REVOCATIONS_URL=http://127.0.0.1:8080/public-api/sessions/revocations ...
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8090/chat/sessions/s-acme-1/messages
//! ```

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use neo_sessions_verify::{Verifier, VerifierConfig, VerifyError};
use serde_json::json;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = env_or("NEO_VERIFY_ISSUER", "https://api.neoagent.io");
    let audience = env_or("NEO_VERIFY_AUDIENCE", "https://api.neoagent.io/chat");
    let mut config = VerifierConfig::for_issuer(&issuer, &audience);
    if let Ok(url) = std::env::var("NEO_VERIFY_JWKS_URL") {
        config.jwks_url = url;
    }
    if let Ok(api_key) = std::env::var("NEO_VERIFY_API_KEY") {
        config = config.with_revocation_feed(&api_key, std::time::Duration::from_secs(5));
        if let (Some(feed), Ok(url)) = (
            config.revocations.as_mut(),
            std::env::var("NEO_VERIFY_REVOCATIONS_URL"),
        ) {
            feed.url = url;
        }
    }
    let verifier = Arc::new(Verifier::new(config)?);
    verifier.spawn_revocation_polling();
    let app = Router::new()
        .route("/chat/sessions/{id}/messages", get(messages))
        .with_state(verifier);
    let listener =
        tokio::net::TcpListener::bind(env_or("NEO_VERIFY_LISTEN", "127.0.0.1:8090")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn messages(
    State(verifier): State<Arc<Verifier>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match verifier.verify(token, &session_id).await {
        Ok(claims) => Json(json!({
            "session_id": claims.session_id,
            "end_user": claims.sub,
            "allowed_agent_ids": claims.allowed_agent_ids,
            "messages": [],
        }))
        .into_response(),
        // The token service's keys cannot be had: the token may well be valid.
        Err(error @ VerifyError::JwksUnavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
        Err(error) => (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer error=\"invalid_token\"")],
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}
