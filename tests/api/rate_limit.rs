//! Rate limits from the outside: per principal (with per-tenant overrides), per client IP for
//! failed authentications, shared through a real Redis, and falling back to memory without it.

use std::num::NonZero;
use std::{net::TcpListener as StdListener, sync::Arc, time::Duration};

use neo_sessions::{auth::PACED_LOOKUP_SPACING, config::Config};
use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::support::{
    assert_error, header, redis::OwnRedis, Backend, TestApp, ACME_KEY, GLOBEX_KEY,
};

fn redis_url() -> String {
    std::env::var("NEO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix of its own, so tests sharing the machine's Redis never share buckets.
fn unique_prefix() -> String {
    format!("neo-test:{}:", uuid::Uuid::new_v4().simple())
}

const BODY: fn() -> serde_json::Value = || json!({"session_id": "s-acme-1"});
const UNKNOWN_KEY: &str = "neo_sk_test_UnknownUnknownUnknown00";

/// A failing authentication, the request saying it was forwarded for `xff`.
async fn fail_from(app: &TestApp, xff: &str) -> Response {
    app.mint_with(Some(UNKNOWN_KEY), &[("x-forwarded-for", xff)], BODY())
        .await
}

async fn principal_limit_gives_429_with_retry_after_and_the_budget_comes_back(backend: Backend) {
    // 60/min: one request per second comes back (slow enough that no refill sneaks in between
    // the requests below on a busy machine); a burst of 2.
    let app = TestApp::builder(backend)
        .config(|c| {
            c.rate_limit.per_minute = NonZero::new(60).unwrap();
            c.rate_limit.burst = NonZero::new(2).unwrap();
        })
        .spawn()
        .await;
    for remaining in [1, 0] {
        let response = app.mint(ACME_KEY, BODY()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit-policy").as_deref(),
            Some("\"per-principal\";q=60;w=60;burst=2")
        );
        let current = header(&response, "ratelimit").unwrap();
        assert!(
            current.starts_with(&format!("\"per-principal\";r={remaining};t=")),
            "{current}"
        );
    }
    let response = app.mint(ACME_KEY, BODY()).await;
    let retry_after: u64 = header(&response, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert_eq!(
        retry_after, 1,
        "at most one second, rounded up to a whole second"
    );
    assert!(header(&response, "ratelimit").unwrap().contains("r=0"));
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["error"]["details"]["retry_after_seconds"], 1);
    assert_eq!(
        app.mint_count().await,
        2,
        "a refused request records nothing"
    );

    // Another principal has its own budget.
    let response = app
        .mint(GLOBEX_KEY, json!({"session_id": "s-globex-1"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Waiting what Retry-After said is enough.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let response = app.mint(ACME_KEY, BODY()).await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn a_tenant_override_replaces_the_default(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| {
            c.rate_limit.per_minute = NonZero::new(1).unwrap();
            c.rate_limit.burst = NonZero::new(3).unwrap();
        })
        .spawn()
        .await;
    assert!(app
        .state
        .store
        .set_tenant_rate_limit("globex", Some((1, 1)))
        .await
        .unwrap());
    assert!(!app
        .state
        .store
        .set_tenant_rate_limit("nope", Some((1, 1)))
        .await
        .unwrap());

    let globex = json!({"session_id": "s-globex-1"});
    assert_eq!(
        app.mint(GLOBEX_KEY, globex.clone()).await.status(),
        StatusCode::OK
    );
    let response = app.mint(GLOBEX_KEY, globex).await;
    assert_eq!(
        header(&response, "ratelimit-policy").as_deref(),
        Some("\"per-principal\";q=1;w=60;burst=1")
    );
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    for _ in 0..3 {
        assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
    }
    assert_eq!(
        app.mint(ACME_KEY, BODY()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

fn tight_failure_budget(c: &mut Config) {
    c.rate_limit.auth_failure_per_minute = NonZero::new(1).unwrap();
    c.rate_limit.auth_failure_burst = NonZero::new(3).unwrap();
}

async fn failed_authentications_are_limited_per_ip_and_paced_over_budget(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .spawn()
        .await;
    // Successful calls take nothing from the failure budget.
    for _ in 0..5 {
        assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
    }
    for _ in 0..3 {
        let response = app.mint(UNKNOWN_KEY, BODY()).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let response = app.mint(UNKNOWN_KEY, BODY()).await;
    assert!(header(&response, "retry-after").is_some());
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Over its budget, the address's credentials are still looked up, but one at a time and
    // paced: ten more guesses take at least ten lookup spacings (they are all refused), sent one
    // after another or all at once.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let response = app.mint(UNKNOWN_KEY, BODY()).await;
        assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    assert!(
        started.elapsed() >= PACED_LOOKUP_SPACING * 10,
        "over-budget lookups were not paced: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let guesses: Vec<_> = (0..10).map(|_| app.mint(UNKNOWN_KEY, BODY())).collect();
    for response in futures_util::future::join_all(guesses).await {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        started.elapsed() >= PACED_LOOKUP_SPACING * 10,
        "concurrent over-budget lookups were not one at a time: {:?}",
        started.elapsed()
    );
    // "garbage" is refused without any lookup: the per-address limit.
    let response = app.mint("garbage", BODY()).await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

/// The audit's finding: a valid key sharing an address with someone guessing keys is never
/// refused for the guesser's failures. The key cache is off, so every request looks its key
/// up; between the guesser's refused attempts (keeping the address over its budget), a valid
/// key is served 12 times out of 12.
async fn a_valid_key_is_never_refused_for_a_guesser_at_its_address(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .config(|c| c.api_key.cache_seconds = 0)
        .spawn()
        .await;
    let mut limited = false;
    for _ in 0..20 {
        if app.mint(UNKNOWN_KEY, BODY()).await.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "the guesser was never limited");
    let mut served = 0;
    for round in 0..12 {
        let guess = app.mint(UNKNOWN_KEY, BODY()).await;
        assert_eq!(
            guess.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "round {round}"
        );
        let (key, body) = if round % 2 == 0 {
            (ACME_KEY, BODY())
        } else {
            (GLOBEX_KEY, json!({"session_id": "s-globex-1"}))
        };
        let response = app.mint(key, body).await;
        if response.status() == StatusCode::OK {
            served += 1;
        } else {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            eprintln!("round {round}: {status} {text}");
        }
    }
    assert_eq!(
        served, 12,
        "a valid key was refused for the guesser's failures"
    );
}

async fn a_spoofed_forwarded_for_gets_no_fresh_bucket(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .spawn()
        .await;
    for i in 0..4 {
        fail_from(&app, &format!("198.51.100.{i}")).await;
    }
    for i in 10..20 {
        let response = fail_from(&app, &format!("198.51.100.{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "X-Forwarded-For from an untrusted peer is ignored"
        );
    }

    // Behind a trusted proxy (here: loopback) the forwarded client is what counts.
    let proxied = TestApp::builder(backend)
        .config(tight_failure_budget)
        .config(|c| {
            c.server.trusted_proxies =
                neo_sessions::config::TrustedProxies::parse("127.0.0.1/32, ::1").expect("proxies")
        })
        .spawn()
        .await;
    for _ in 0..4 {
        fail_from(&proxied, "203.0.113.5").await;
    }
    assert_eq!(
        fail_from(&proxied, "203.0.113.5").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        fail_from(&proxied, "203.0.113.6").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A client cannot escape by prepending hops: the nearest untrusted hop is the client.
    assert_eq!(
        fail_from(&proxied, "192.0.2.1, 203.0.113.5").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn two_replicas_sharing_redis_enforce_one_budget(backend: Backend) {
    let prefix = unique_prefix();
    let configure = |c: &mut Config| {
        c.rate_limit.per_minute = NonZero::new(1).unwrap();
        c.rate_limit.burst = NonZero::new(5).unwrap();
        tight_failure_budget(c);
        c.rate_limit.redis_url = Some(redis_url().into());
        c.rate_limit.redis_prefix = prefix.clone();
    };
    let first = TestApp::builder(backend).config(configure).spawn().await;
    let second = TestApp::builder(backend).config(configure).spawn().await;
    let mut ok = 0;
    for i in 0..12 {
        let app = if i % 2 == 0 { &first } else { &second };
        match app.mint(ACME_KEY, BODY()).await.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 5, "one budget of 5 between both replicas, not 5 each");

    // The failed-authentication budget of a client is shared too: 3 failures in all, then the
    // other replica refuses the next failure.
    for app in [&first, &second, &first] {
        let response = app.mint(UNKNOWN_KEY, BODY()).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let response = second.mint(UNKNOWN_KEY, BODY()).await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // A valid key from that client is still served, on either replica.
    let response = first
        .mint(GLOBEX_KEY, json!({"session_id": "s-globex-1"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A quota above one request per microsecond (60,000,000 a minute: "unlimited" in practice) is
/// a valid Redis check like any other: it once sent Redis an expiry of 0, which Redis refuses,
/// and each refusal sent every principal of the replica, not only that one, to its in-memory
/// buckets for a second, so the limited ones got a full budget on each replica.
async fn a_very_high_quota_keeps_the_other_budgets_shared(backend: Backend) {
    let prefix = unique_prefix();
    let configure = |c: &mut Config| {
        c.rate_limit.per_minute = NonZero::new(1).unwrap();
        c.rate_limit.burst = NonZero::new(3).unwrap();
        c.rate_limit.redis_url = Some(redis_url().into());
        c.rate_limit.redis_prefix = prefix.clone();
    };
    let first = TestApp::builder(backend).config(configure).spawn().await;
    let second = TestApp::builder(backend).config(configure).spawn().await;
    for app in [&first, &second] {
        assert!(app
            .state
            .store
            .set_tenant_rate_limit("acme", Some((u32::MAX, 1_000_000)))
            .await
            .unwrap());
    }
    let globex = json!({"session_id": "s-globex-1"});
    let mut globex_ok = 0;
    for i in 0..10 {
        let app = if i % 2 == 0 { &first } else { &second };
        let response = app.mint(ACME_KEY, BODY()).await;
        assert_eq!(response.status(), StatusCode::OK, "acme's quota is huge");
        match app.mint(GLOBEX_KEY, globex.clone()).await.status() {
            StatusCode::OK => globex_ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        globex_ok, 3,
        "globex's budget of 3 is shared by both replicas through Redis, not 3 each"
    );
}

#[tokio::test]
async fn without_redis_requests_are_still_answered_and_limited_in_memory() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = TestApp::builder(Backend::Postgres)
        .config(|c| {
            c.rate_limit.per_minute = NonZero::new(1).unwrap();
            c.rate_limit.burst = NonZero::new(3).unwrap();
            c.rate_limit.redis_url = Some(url.into());
            c.rate_limit.redis_prefix = unique_prefix();
        })
        .spawn()
        .await;
    // On Redis: the budget of 3 is spent there.
    for _ in 0..3 {
        assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
    }
    assert_eq!(
        app.mint(ACME_KEY, BODY()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Redis gone: still answered (no 5xx), with this process's own budget of 3.
    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.mint(ACME_KEY, BODY()).await.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // Redis back (empty: it keeps nothing on disk): after the one-second back-off the service
    // uses it again, whose fresh bucket admits what the spent in-memory one would not.
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        app.mints_again(ACME_KEY, BODY(), 40).await,
        "the service returns to Redis when it is back"
    );
}

#[tokio::test]
async fn a_flood_of_distinct_failing_keys_leaves_the_limiter_small() {
    let app = Arc::new(
        TestApp::builder(Backend::Postgres)
            .config(|c| {
                c.rate_limit.auth_failure_per_minute = NonZero::new(30).unwrap();
                c.rate_limit.auth_failure_burst = NonZero::new(10).unwrap();
            })
            .spawn()
            .await,
    );
    // Over its budget the address's lookups are paced (one at a time, 20 ms each), so the
    // flood is 400 keys from 16 connections at once, not 100 000: it takes some 8 s.
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..25 {
                let key = format!("neo_sk_test_{worker:04}x{i:019}");
                if app.mint(&key, BODY()).await.status() == StatusCode::TOO_MANY_REQUESTS {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    // All but the burst of 10 and what refills (30 a minute) while it runs.
    assert!(refused >= 380, "{refused} of 400 refused");
    // Buckets are never keyed on an unverified credential: one client, one bucket (plus its
    // exhaustion mark), however many keys it tries; its lookup lane is gone once it is done.
    let tracked = app.state.limits.memory().tracked_keys();
    assert!(
        tracked <= 2,
        "{tracked} keys tracked after 400 distinct failing keys"
    );
    assert_eq!(app.state.authenticator.lanes.addresses(), 0);
}

fn behind_loopback_proxy(c: &mut Config) {
    c.server.trusted_proxies =
        neo_sessions::config::TrustedProxies::parse("127.0.0.1/32, ::1").expect("proxies");
}

/// Gateways that append `ip:port` or `[v6]:port`: the client cannot pick its bucket by writing
/// fresh addresses to the left of that entry.
async fn forwarded_for_with_ports_still_names_the_client(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .config(behind_loopback_proxy)
        .spawn()
        .await;
    for (i, gateway_entry) in ["203.0.113.5:4711", "[2001:db8::5]:443"].iter().enumerate() {
        let mut statuses = Vec::new();
        for n in 0..5 {
            let spoofed = format!("198.51.{i}.{n}");
            let response = fail_from(&app, &format!("{spoofed}, {gateway_entry}")).await;
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [401, 401, 401, 429, 429], "{gateway_entry}");
    }
}

/// One IPv6 subscriber holds a /64: its addresses share one failed-authentication bucket.
async fn ipv6_clients_are_limited_per_64(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .config(behind_loopback_proxy)
        .spawn()
        .await;
    let mut statuses = Vec::new();
    for n in 1..=5 {
        let response = fail_from(&app, &format!("2001:db8:7:9::{n:x}")).await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Another /64 has its own budget.
    assert_eq!(
        fail_from(&app, "2001:db8:7:a::1").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// An address over its failed-authentication budget is refused its failures, not service: a
/// key found in the cache, a token that verifies offline and a valid key that must be looked up
/// are answered as usual, while a credential that fails gets the per-address 429, saying so.
async fn a_spent_address_is_refused_lookups_not_service(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(tight_failure_budget)
        .config(|c| c.api_key.cache_seconds = 300)
        .spawn()
        .await;
    // Warm the key cache, and get an end-user token.
    let (data, _) = app.mint_ok(ACME_KEY, BODY()).await;
    let end_user_token = data["token"].as_str().expect("token").to_owned();
    for _ in 0..4 {
        app.mint(UNKNOWN_KEY, BODY()).await;
    }
    let response = app.mint(UNKNOWN_KEY, BODY()).await;
    assert_eq!(
        header(&response, "ratelimit-policy").as_deref(),
        Some("\"failed-auth-per-ip\";q=1;w=60;burst=3")
    );
    assert!(header(&response, "ratelimit").is_some_and(|v| v.contains("r=0")));
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["error"]["details"]["limit"], "failed_auth_per_ip");

    // Cached key: served.
    assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
    // Our own token verifies offline: its usual 403, not a 429.
    let response = app.mint(&end_user_token, BODY()).await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    // A valid key that is not cached is looked up (paced), and served.
    let response = app
        .mint(GLOBEX_KEY, json!({"session_id": "s-globex-1"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A wrong one is looked up too, and refused by the per-address limit, saying so.
    let response = app.mint(UNKNOWN_KEY, BODY()).await;
    assert!(header(&response, "retry-after").is_some());
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["error"]["details"]["limit"], "failed_auth_per_ip");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("address")),
        "{body}"
    );
}

backend_tests!(
    forwarded_for_with_ports_still_names_the_client,
    ipv6_clients_are_limited_per_64,
    a_spent_address_is_refused_lookups_not_service,
);

/// Redis that is down, unresolvable, or spoken to over TLS when the service starts: every mint
/// is answered at once from memory (no 503 after a connection timeout), and once Redis comes up
/// the service connects in the background and uses it.
#[tokio::test]
async fn redis_that_was_never_reachable_costs_mints_nothing() {
    let unresolvable = "redis://no-such-host.invalid:6379".to_owned();
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls = format!("rediss://127.0.0.1:{port}");
    for url in [unresolvable, tls] {
        let app = TestApp::builder(Backend::Postgres)
            .config(|c| {
                c.server.request_timeout_seconds = NonZero::new(2).unwrap();
                c.rate_limit.redis_url = Some(url.clone().into());
            })
            .spawn()
            .await;
        for _ in 0..10 {
            assert_eq!(
                app.mint(ACME_KEY, BODY()).await.status(),
                StatusCode::OK,
                "{url}"
            );
        }
    }

    // Down at start, up later.
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    redis.stop();
    let app = TestApp::builder(Backend::Postgres)
        .config(|c| {
            c.server.request_timeout_seconds = NonZero::new(2).unwrap();
            c.rate_limit.per_minute = NonZero::new(1).unwrap();
            c.rate_limit.burst = NonZero::new(3).unwrap();
            c.rate_limit.redis_url = Some(url.into());
            c.rate_limit.redis_prefix = unique_prefix();
        })
        .spawn()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.mint(ACME_KEY, BODY()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "memory answers at once");
    redis.restart().await;
    // The background connector retries with a back-off (1 s, 2 s, ...): Redis's fresh bucket
    // admits what the spent in-memory one does not, once it is connected.
    assert!(
        app.mints_again(ACME_KEY, BODY(), 100).await,
        "the service connects to Redis once it is up"
    );
}

backend_tests!(
    principal_limit_gives_429_with_retry_after_and_the_budget_comes_back,
    a_tenant_override_replaces_the_default,
    failed_authentications_are_limited_per_ip_and_paced_over_budget,
    a_valid_key_is_never_refused_for_a_guesser_at_its_address,
    a_spoofed_forwarded_for_gets_no_fresh_bucket,
    two_replicas_sharing_redis_enforce_one_budget,
    a_very_high_quota_keeps_the_other_budgets_shared,
);
