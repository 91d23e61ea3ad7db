//! The store's contract, the same assertions on both backends: the statements written once for
//! both (revocations, key revocation, rate-limit overrides, timestamp order) mean the same on
//! each.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use neo_sessions::store::{self, MintRecord, Store};
use uuid::Uuid;

use crate::support::{Backend, TestDatabase};

async fn seeded_store(backend: Backend) -> (TestDatabase, Arc<Store>) {
    let db = TestDatabase::seeded(backend).await;
    let store = store::connect(&db.url, 2).await.expect("store");
    (db, store)
}

fn mint(session_id: &str, issued_at: DateTime<Utc>) -> MintRecord {
    MintRecord {
        jti: Uuid::new_v4(),
        session_id: session_id.to_owned(),
        tenant_id: "acme".to_owned(),
        minted_by_kind: "api_key",
        minted_by: "k-acme".to_owned(),
        minted_by_tenant: "acme".to_owned(),
        end_user: Some("pat".to_owned()),
        end_company_id: None,
        allowed_agent_ids: MintRecord::agents_column(&[101]),
        issued_at,
        expires_at: issued_at + Duration::minutes(15),
        kid: "test-kid".to_owned(),
    }
}

async fn a_token_revocation_is_one_statement_that_keeps_the_first(backend: Backend) {
    let (db, store) = seeded_store(backend).await;
    let record = mint("s-acme-1", Utc::now().trunc_subsecs(6));
    store
        .record_mints(std::slice::from_ref(&record))
        .await
        .unwrap();

    let first = store
        .revoke_mint(record.jti, "k-acme")
        .await
        .unwrap()
        .expect("a known jti");
    assert_eq!(first.jti, record.jti.to_string());
    assert_eq!(first.session_id, "s-acme-1");
    assert_eq!(first.end_user.as_deref(), Some("pat"));
    assert_eq!(first.issued_at, record.issued_at);
    assert_eq!(first.revoked_by.as_deref(), Some("k-acme"));
    let revoked_at = first.revoked_at.expect("revoked");

    // Revoking again changes nothing: neither who nor when.
    let again = store
        .revoke_mint(record.jti, "k-other")
        .await
        .unwrap()
        .expect("a known jti");
    assert_eq!(again.revoked_by.as_deref(), Some("k-acme"));
    assert_eq!(again.revoked_at, Some(revoked_at));
    let found = store.find_mint(record.jti).await.unwrap().expect("found");
    assert_eq!(found.revoked_at, Some(revoked_at));

    assert!(store
        .revoke_mint(Uuid::new_v4(), "k-acme")
        .await
        .unwrap()
        .is_none());

    // The feed shows it once (below the horizon), after its own position nothing; by time,
    // after the cursor's own jti nothing either.
    // (Held back while a transaction older than the revocation's is in flight on the server,
    // another test's included.)
    let started = std::time::Instant::now();
    let (horizon, fed) = loop {
        let horizon = store.revocation_horizon().await.unwrap();
        let fed = store
            .revocations_after(None, horizon, None, None, 10)
            .await
            .unwrap();
        if !fed.is_empty() || started.elapsed() > std::time::Duration::from_secs(10) {
            break (horizon, fed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(fed.len(), 1);
    assert_eq!(fed[0].jti, record.jti.to_string());
    assert!(fed[0].revoked_seq < horizon);
    let at = store::FeedPosition {
        seq: fed[0].revoked_seq,
        jti: Some(record.jti),
    };
    let after = store
        .revocations_after(Some("acme"), horizon, Some(at), None, 10)
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
    // Below a horizon at or under its sequence it is held back.
    let held = store
        .revocations_after(None, fed[0].revoked_seq, None, None, 10)
        .await
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
    let since = revoked_at - Duration::seconds(1);
    let by_time = store
        .revocations_after(None, horizon, None, Some((since, None)), 10)
        .await
        .unwrap();
    assert_eq!(by_time.len(), 1);
    let after = store
        .revocations_after(
            Some("acme"),
            horizon,
            None,
            Some((revoked_at, Some(record.jti))),
            10,
        )
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");

    // Un-revoked by hand (in SQL): out of the feed, not an error.
    sqlx::query("UPDATE session_token_mints SET revoked_at = NULL WHERE CAST(jti AS TEXT) = $1")
        .bind(record.jti.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
    let horizon = store.revocation_horizon().await.unwrap();
    let fed = store
        .revocations_after(None, horizon, None, None, 10)
        .await
        .unwrap();
    assert!(fed.is_empty(), "{fed:?}");
}

async fn an_api_key_is_revoked_once(backend: Backend) {
    let (_db, store) = seeded_store(backend).await;
    assert_eq!(store.revoke_api_key("k-acme").await.unwrap(), Some(true));
    assert_eq!(store.revoke_api_key("k-acme").await.unwrap(), Some(false));
    assert_eq!(store.revoke_api_key("k-old").await.unwrap(), Some(false));
    assert_eq!(store.revoke_api_key("k-nope").await.unwrap(), None);
    let keys = store.list_api_keys("acme").await.unwrap();
    assert!(keys.iter().all(|k| k.revoked_at.is_some()), "{keys:?}");
}

async fn a_rate_limit_override_is_set_replaced_and_removed(backend: Backend) {
    let (_db, store) = seeded_store(backend).await;
    assert!(store
        .set_tenant_rate_limit("globex", Some((5, 2)))
        .await
        .unwrap());
    assert!(store
        .set_tenant_rate_limit("globex", Some((7, 3)))
        .await
        .unwrap());
    assert_eq!(
        store.tenant_rate_limit("globex").await.unwrap(),
        Some((7, 3))
    );
    assert_eq!(
        store.list_tenant_rate_limits().await.unwrap(),
        vec![("globex".to_owned(), 7, 3)]
    );

    assert!(store.set_tenant_rate_limit("globex", None).await.unwrap());
    assert_eq!(store.tenant_rate_limit("globex").await.unwrap(), None);
    // Removing an override that is not there is still a known tenant.
    assert!(store.set_tenant_rate_limit("globex", None).await.unwrap());

    assert!(!store
        .set_tenant_rate_limit("nope", Some((1, 1)))
        .await
        .unwrap());
    assert!(!store.set_tenant_rate_limit("nope", None).await.unwrap());
    assert!(store.list_tenant_rate_limits().await.unwrap().is_empty());
}

async fn timestamps_compare_in_time_order(backend: Backend) {
    let (_db, store) = seeded_store(backend).await;
    // Whole seconds against fractions: compared as time, not as text of varying width.
    let later = Utc::now().trunc_subsecs(0);
    let earlier = later - Duration::microseconds(1);
    store.touch_api_key("k-acme", later).await.unwrap();
    store.touch_api_key("k-acme", earlier).await.unwrap();
    let keys = store.list_api_keys("acme").await.unwrap();
    let key = keys.iter().find(|k| k.id == "k-acme").expect("k-acme");
    assert_eq!(key.last_used_at, Some(later));

    // Keyset paging over issued_at, then jti: every record once, newest first.
    let base = Utc::now().trunc_subsecs(6) - Duration::minutes(1);
    let records: Vec<MintRecord> = (0..5)
        .map(|i| mint("s-acme-1", base + Duration::microseconds(i / 2)))
        .collect();
    store.record_mints(&records).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_mints(&store::MintQuery {
                tenant_id: "acme".to_owned(),
                minted_by_tenant: None,
                session_id: Some("s-acme-1".to_owned()),
                active: Some(true),
                after,
                limit: 2,
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.issued_at, Uuid::parse_str(&last.jti).unwrap()));
        seen.extend(page.into_iter().map(|r| (r.issued_at, r.jti)));
    }
    let mut expected: Vec<_> = records
        .iter()
        .map(|r| (r.issued_at, r.jti.to_string()))
        .collect();
    expected.sort();
    expected.reverse();
    assert_eq!(seen, expected);
}

async fn an_idempotency_claim_is_kept_until_stale(backend: Backend) {
    let (_db, store) = seeded_store(backend).await;
    let now = Utc::now().trunc_subsecs(6);
    let (before, after) = (now - Duration::seconds(1), now + Duration::seconds(1));
    let claim = |key: &'static str, hash: u8, expired_before, abandoned_before| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim_idempotency(
                    "api_key:k-acme",
                    key,
                    &[hash; 32],
                    now,
                    expired_before,
                    abandoned_before,
                )
                .await
                .unwrap()
        }
    };

    assert!(claim("a", 1, before, before).await.is_none(), "claimed");
    let minting = claim("a", 2, before, before).await.expect("held");
    assert_eq!((minting.request_hash, minting.claims), (vec![1; 32], None));
    // Never settled and older than the abandon limit: claimed anew.
    assert!(claim("a", 3, before, after).await.is_none());
    store
        .settle_idempotency("api_key:k-acme", "a", Some(("{}", b"mac")))
        .await
        .unwrap();
    // Settled: the abandon limit does not apply, the expiry does.
    let settled = claim("a", 4, before, after).await.expect("held");
    assert_eq!(
        (
            settled.request_hash,
            settled.claims.as_deref(),
            settled.claims_mac.as_deref()
        ),
        (vec![3; 32], Some("{}"), Some(&b"mac"[..]))
    );
    assert!(claim("a", 5, after, after).await.is_none());
    // Claimed anew: the old claims and their MAC are gone with it.
    let reclaimed = claim("a", 6, before, before).await.expect("held");
    assert_eq!((reclaimed.claims, reclaimed.claims_mac), (None, None));

    // A failed mint gives its key back.
    store
        .settle_idempotency("api_key:k-acme", "a", None)
        .await
        .unwrap();
    assert!(claim("a", 6, before, before).await.is_none());
    assert!(claim("b", 7, before, before).await.is_none());
    assert_eq!(store.prune_idempotency(after, 1).await.unwrap(), 1);
    assert_eq!(store.prune_idempotency(before, 10).await.unwrap(), 0);
    assert_eq!(store.prune_idempotency(after, 10).await.unwrap(), 1);
}

backend_tests!(
    an_idempotency_claim_is_kept_until_stale,
    a_token_revocation_is_one_statement_that_keeps_the_first,
    an_api_key_is_revoked_once,
    a_rate_limit_override_is_set_replaced_and_removed,
    timestamps_compare_in_time_order,
);
