//! How long one verification takes with a warm cache (the key set held, nothing fetched): each
//! valid token of the shared vectors (`tests/vectors/session-tokens.json`) verified N times
//! (default 10000) in a loop.
//!
//! ```sh
//! cargo run --release -p neo-sessions-verify --example verify_speed [N]
//! ```
//!
//! The Python package's counterpart: `python clients/python/benchmark.py`.

use std::time::{Duration, Instant};

use axum::{routing::get, Json, Router};
use chrono::DateTime;
use neo_sessions_verify::{Verifier, VerifierConfig};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/session-tokens.json"
);

/// This process's CPU time (user and system) on Linux, from `/proc/self/stat` (clock ticks of
/// 10 ms); `None` elsewhere. Wall time alone misleads on a busy machine.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn text(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{value} is not a string"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 10_000,
    };
    let document: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS)?)?;
    let jwks = document["jwks"].clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { ([("cache-control", "max-age=3600")], Json(jwks)) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config =
        VerifierConfig::for_issuer(text(&document["issuer"])?, text(&document["audience"])?);
    config.jwks_url = format!("http://{addr}/.well-known/jwks.json");
    let verifier = Verifier::new(config)?;
    let vectors = document["vectors"].as_array().ok_or("no vectors")?;
    for vector in vectors {
        let name = text(&vector["name"])?;
        if !name.starts_with("valid_") {
            continue;
        }
        let (token, session) = (text(&vector["token"])?, text(&vector["session_id"])?);
        let at =
            DateTime::from_timestamp(vector["at"].as_i64().ok_or("no at")?, 0).ok_or("bad at")?;
        verifier.verify_at(token, session, at).await?; // warm: the key set is fetched here
        let (start, cpu_start) = (Instant::now(), cpu_time());
        for _ in 0..rounds {
            verifier.verify_at(token, session, at).await?;
        }
        let each = start.elapsed() / rounds;
        let cpu = match (cpu_start, cpu_time()) {
            (Some(before), Some(after)) => format!(
                ", {:.1} µs of CPU",
                (after - before).as_secs_f64() * 1e6 / f64::from(rounds)
            ),
            _ => String::new(),
        };
        println!(
            "{name}: {:.1} µs per verification{cpu} ({rounds} rounds)",
            each.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
