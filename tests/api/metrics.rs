//! `GET /metrics` from the outside: after a mint, a 401 and a 429 the counters moved with the
//! right labels, and no label value is unbounded (no key id, jti, tenant or address).

use std::{collections::BTreeSet, num::NonZero, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{header, Backend, TestApp, ACME_KEY};

const UNKNOWN_KEY: &str = "neo_sk_test_UnknownUnknownUnknown00";

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.to_owned(), value.trim_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    response.text().await.expect("text")
}

async fn counters_move_with_bounded_labels(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| {
            c.rate_limit.per_minute = NonZero::new(1).unwrap();
            c.rate_limit.burst = NonZero::new(2).unwrap();
        })
        .spawn()
        .await;
    let body = json!({"session_id": "s-acme-1"});
    let (data, _) = app.mint_ok(ACME_KEY, body.clone()).await;
    let jti = data["jti"].as_str().expect("jti").to_owned();
    app.mint_ok(ACME_KEY, body.clone()).await;
    assert_eq!(
        app.mint(ACME_KEY, body.clone()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.mint(UNKNOWN_KEY, body).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let text = scrape(&app).await;
    let all = samples(&text);
    let mints = "neo_sessions_mints_total";
    assert_eq!(
        value(
            &all,
            mints,
            &[("principal_kind", "api_key"), ("outcome", "ok")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &all,
            mints,
            &[("principal_kind", "api_key"), ("outcome", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &all,
            mints,
            &[
                ("principal_kind", "none"),
                ("outcome", "invalid_credentials")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &all,
            "neo_sessions_auth_failures_total",
            &[("reason", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &all,
            "neo_sessions_rate_limit_decisions_total",
            &[
                ("limit", "per_principal"),
                ("backend", "memory"),
                ("decision", "limited")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &all,
            "neo_sessions_http_requests_total",
            &[("route", "/public-api/sessions"), ("status", "200")]
        ),
        2.0
    );
    assert!(
        value(&all, "neo_sessions_mint_recorder_batch_rows_count", &[]) >= 1.0,
        "{text}"
    );
    // The first mint reads the session; the session cache may answer the others
    // (session_cache.rs proves it does).
    assert!(
        value(
            &all,
            "neo_sessions_store_operation_duration_seconds_count",
            &[("operation", "find_session")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &all,
            "neo_sessions_database_pool_connections",
            &[("state", "max")]
        ),
        5.0
    );
    assert!(value(&all, "neo_sessions_signing_key_age_seconds", &[]) >= 0.0);
    assert_eq!(
        value(
            &all,
            "neo_sessions_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Bounded labels: only these keys, and no value that names a caller, tenant or token.
    let allowed: BTreeSet<&str> = [
        "method",
        "state",
        "route",
        "status",
        "principal_kind",
        "outcome",
        "reason",
        "limit",
        "backend",
        "decision",
        "operation",
        "result",
        "version",
        "le",
    ]
    .into();
    for (name, labels, _) in &all {
        for (key, value) in labels {
            assert!(allowed.contains(key.as_str()), "{name}: label {key}");
            for forbidden in ["k-acme", "acme", jti.as_str(), "127.0.0.1", "neo_sk_"] {
                assert!(
                    !value.contains(forbidden),
                    "{name}{{{key}={value}}} names {forbidden}"
                );
            }
        }
    }
}

/// With `NEO_METRICS_LISTEN`, the metrics are served there and not on the public listener.
async fn metrics_can_move_to_their_own_listener(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let app = TestApp::builder(backend)
        .config(move |c| {
            c.server.metrics_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"))
        })
        .spawn()
        .await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    let response = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(text.contains("neo_sessions_build_info"), "{text}");
}

/// The metrics listener runs the public listener's connection loop: a half-sent request head is
/// cut after the header timeout instead of holding a connection (and its buffer) for ever.
async fn the_metrics_listener_cuts_stalled_request_heads(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let _app = TestApp::builder(backend)
        .config(move |c| {
            c.server.metrics_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
            c.server.header_timeout_seconds = NonZero::new(1).expect("non-zero");
        })
        .spawn()
        .await;
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Closed (EOF or reset) well within the wait, whatever it sends first.
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(_) | Err(_))),
        "a stalled request head on the metrics listener stayed open for 10 s"
    );
}

/// Whether a series with these labels is in the scrape (at any value, zero included).
fn present(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> bool {
    samples.iter().any(|(n, ls, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
    })
}

/// Mint (POST) and list (GET) share a route: the HTTP series tell them apart by `method`.
async fn http_series_carry_the_method(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let listed = app
        .request(reqwest::Method::GET, "/public-api/sessions", Some(ACME_KEY))
        .await;
    assert_eq!(listed.status(), StatusCode::OK);

    let text = scrape(&app).await;
    let all = samples(&text);
    let route = ("route", "/public-api/sessions");
    for method in ["POST", "GET"] {
        assert_eq!(
            value(
                &all,
                "neo_sessions_http_requests_total",
                &[("method", method), route, ("status", "200")]
            ),
            1.0,
            "{method}:\n{text}"
        );
        assert_eq!(
            value(
                &all,
                "neo_sessions_http_request_duration_seconds_count",
                &[("method", method), route]
            ),
            1.0,
            "{method}:\n{text}"
        );
    }
    // Every HTTP series has the label.
    for (name, labels, _) in &all {
        if name.starts_with("neo_sessions_http_") {
            assert!(labels.iter().any(|(k, _)| k == "method"), "{name}");
        }
    }
}

/// The pool gauge is labelled `state`, as its help says; a value that does not exist is an
/// absent series, never `-1` (here: no Entra key set, since Entra login is off).
async fn the_pool_gauge_says_state_and_nothing_is_a_sentinel(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let text = scrape(&app).await;
    let all = samples(&text);
    let pool = "neo_sessions_database_pool_connections";
    for state in ["in_use", "idle", "max"] {
        assert!(present(&all, pool, &[("state", state)]), "{state}:\n{text}");
    }
    assert!(
        all.iter()
            .filter(|(n, _, _)| n == pool)
            .all(|(_, labels, _)| labels.len() == 1 && labels[0].0 == "state"),
        "{text}"
    );
    assert!(
        text.contains(
            "# HELP neo_sessions_database_pool_connections Database pool connections by state"
        ),
        "{text}"
    );
    assert!(
        !present(&all, "neo_sessions_entra_jwks_age_seconds", &[]),
        "no key set held, no series:\n{text}"
    );
    for (name, labels, value) in &all {
        assert!(*value >= 0.0, "{name}{labels:?} = {value}");
    }
    // The active key's age is there, and real.
    assert!(present(&all, "neo_sessions_signing_key_age_seconds", &[]));
}

/// The standard process metrics, under their standard names.
async fn process_metrics_are_exported(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let text = scrape(&app).await;
    let all = samples(&text);
    for (name, kind) in [
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{text}"
        );
    }
    assert!(
        value(&all, "process_cpu_seconds_total", &[]) > 0.0,
        "{text}"
    );
    let resident = value(&all, "process_resident_memory_bytes", &[]);
    let virtual_bytes = value(&all, "process_virtual_memory_bytes", &[]);
    assert!(resident > 1e6 && virtual_bytes >= resident, "{text}");
    let open = value(&all, "process_open_fds", &[]);
    assert!(
        open >= 3.0 && open <= value(&all, "process_max_fds", &[]),
        "{text}"
    );
    let started = value(&all, "process_start_time_seconds", &[]);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        started <= now + 1.0 && started > now - 24.0 * 3600.0,
        "started {started}, now {now}"
    );
}

/// Counters whose labels form a small closed set are there at zero before anything happened,
/// so a rate or an alert on them has a series from the first scrape.
async fn labelled_counters_are_present_at_zero_from_the_start(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let text = scrape(&app).await;
    let all = samples(&text);
    for reason in [
        "missing",
        "invalid",
        "ambiguous",
        "insufficient_scope",
        "unknown_directory",
        "entra_unavailable",
        "store",
    ] {
        assert!(
            present(
                &all,
                "neo_sessions_auth_failures_total",
                &[("reason", reason)]
            ),
            "{reason}:\n{text}"
        );
    }
    for limit in ["per_principal", "failed_auth_per_ip"] {
        for decision in ["allowed", "limited"] {
            assert!(
                present(
                    &all,
                    "neo_sessions_rate_limit_decisions_total",
                    &[
                        ("limit", limit),
                        ("backend", "memory"),
                        ("decision", decision)
                    ]
                ),
                "{limit} {decision}:\n{text}"
            );
        }
    }
    for kind in ["api_key", "entra_user"] {
        assert!(
            present(
                &all,
                "neo_sessions_mints_total",
                &[("principal_kind", kind), ("outcome", "ok")]
            ),
            "{kind}:\n{text}"
        );
    }
    for name in [
        "neo_sessions_auth_failures_total",
        "neo_sessions_rate_limit_decisions_total",
        "neo_sessions_mints_total",
    ] {
        assert_eq!(value(&all, name, &[]), 0.0, "{name}:\n{text}");
    }
}

backend_tests!(
    http_series_carry_the_method,
    the_pool_gauge_says_state_and_nothing_is_a_sentinel,
    process_metrics_are_exported,
    labelled_counters_are_present_at_zero_from_the_start,
    counters_move_with_bounded_labels,
    metrics_can_move_to_their_own_listener,
    the_metrics_listener_cuts_stalled_request_heads,
);
