//! The `Idempotency-Key` protocol: the first request with a key claims it and mints; a retry with
//! the same key and body gets that token signed again (same `jti` and expiry); the same key with
//! another body is refused; a retry while the first request is still minting waits a little.
//!
//! The stored claims carry a MAC ([`crate::tokens::ClaimsMac`], a key derived from the
//! key-encryption key) over the principal, the key, the request's hash and the claims: a replay
//! signs only claims this service settled for this caller and request, and a row that does not
//! verify is refused ([`MintRefusal::StoredClaimsForged`]), never signed. Checking it costs no
//! round trip: the MAC travels with the claims.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{MintRefusal, MintRequest, MintTimings, Minted, Minter, Signing};
use crate::{auth::Principal, store::IdempotencyClaim, tokens::SessionClaims};

/// How long a retry waits for the first request with its key to finish before a refusal.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting retry looks again.
const IDEMPOTENCY_POLL: Duration = Duration::from_millis(50);
/// A claim never settled (its instance died mid-mint) is dropped after this long.
const IDEMPOTENCY_ABANDONED: chrono::Duration = chrono::Duration::seconds(30);
const IDEMPOTENT_REPLAY: &str = "Idempotency-Key replay: this is the token the first request with this key minted (same jti and expiry), signed again.";

impl Minter {
    /// A mint under `key`: claim, then mint and settle, or replay what the claim holds.
    pub(super) async fn mint_once(
        &self,
        principal: &Principal,
        body: Value,
        key: &str,
    ) -> Result<Minted, MintRefusal> {
        // Hashed as parsed (serde_json sorts object keys), so whitespace and key order do not
        // matter.
        let request_hash = {
            let canonical = serde_json::to_vec(&body).unwrap_or_default();
            <[u8; 32]>::from(Sha256::digest(canonical))
        };
        // Rule 1 first: a malformed body claims nothing.
        let request = MintRequest::from_json(body, self.ttl)?;
        let mut timings = MintTimings::default();

        let owner = format!("{}:{}", principal.kind(), principal.id());
        // A key answers with its token for as long as that token can live.
        let window = chrono::Duration::seconds(i64::from(self.ttl.max));
        let patience = Instant::now() + IDEMPOTENCY_WAIT;
        loop {
            let now = Utc::now();
            let claim = self.claims.claim_idempotency(
                &owner,
                key,
                &request_hash,
                now,
                now - window,
                now - IDEMPOTENCY_ABANDONED,
            );
            match timings.db(claim).await? {
                None => break,
                Some(claim) if claim.request_hash[..] != request_hash[..] => {
                    return Err(MintRefusal::IdempotencyKeyReused)
                }
                Some(IdempotencyClaim {
                    claims: Some(claims),
                    claims_mac,
                    ..
                }) => {
                    let parts = mac_parts(&owner, key, &request_hash, &claims);
                    let mac = claims_mac.unwrap_or_default();
                    if !self.issuer.claims_mac().verify(&parts, &mac) {
                        return Err(MintRefusal::StoredClaimsForged {
                            principal: owner,
                            key: key.to_owned(),
                        });
                    }
                    let claims: SessionClaims =
                        serde_json::from_str(&claims).map_err(MintRefusal::StoredClaims)?;
                    if claims.exp <= now.timestamp() {
                        // That token has expired: this retry mints a new one.
                        let forget = self.claims.settle_idempotency(&owner, key, None);
                        timings.db(forget).await?;
                        continue;
                    }
                    let minted = self.sign(Signing::Again(claims), &mut timings).await?;
                    let expires_in =
                        u32::try_from(minted.claims.exp - now.timestamp()).unwrap_or(0);
                    return Ok(Minted {
                        token: minted.token,
                        jti: minted.jti,
                        session_id: minted.claims.session_id,
                        expires_at: minted.expires_at,
                        expires_in,
                        warnings: vec![IDEMPOTENT_REPLAY.to_owned()],
                        timings,
                    });
                }
                Some(_) if Instant::now() < patience => tokio::time::sleep(IDEMPOTENCY_POLL).await,
                Some(_) => return Err(MintRefusal::IdempotencyKeyInUse),
            }
        }

        let minted = self.apply_rules(principal, request, &mut timings).await;
        let settled = match &minted {
            Ok((_, claims)) => serde_json::to_string(claims).ok().map(|claims| {
                let parts = mac_parts(&owner, key, &request_hash, &claims);
                let mac = self.issuer.claims_mac().sign(&parts);
                (claims, mac)
            }),
            Err(_) => None,
        };
        let settled = settled
            .as_ref()
            .map(|(claims, mac)| (claims.as_str(), mac.as_slice()));
        if let Err(error) = self.claims.settle_idempotency(&owner, key, settled).await {
            // The token is minted and recorded; a retry waits out the claim (IDEMPOTENCY_ABANDONED).
            tracing::warn!(%error, "could not settle an Idempotency-Key claim");
        }
        let (mut minted, _) = minted?;
        minted.timings = timings;
        Ok(minted)
    }
}

/// What the MAC of stored claims covers: whose claim (the principal and its key) for which
/// request, and the claims as stored. A row moved to another caller or key, or claims edited,
/// no longer verify.
fn mac_parts<'a>(
    owner: &'a str,
    key: &'a str,
    request_hash: &'a [u8; 32],
    claims: &'a str,
) -> [&'a [u8]; 4] {
    [
        owner.as_bytes(),
        key.as_bytes(),
        &request_hash[..],
        claims.as_bytes(),
    ]
}
