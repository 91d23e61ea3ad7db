//! Rebuilds the shared test vectors, `tests/vectors/session-tokens.json` at the repository root:
//! a JWKS (one ES256, one EdDSA, one RS256 key, made afresh on every run, private halves thrown
//! away) and tokens signed with it, each with the session it is presented for, the time it is
//! checked at and what every verifier must answer (`ok`, or a `VerifyError::code`).
//!
//! ```sh
//! cargo run -p neo-sessions-verify --example vectors            # writes the file
//! cargo run -p neo-sessions-verify --example vectors -- OUT.json # elsewhere
//! ```
//!
//! The Rust crate (`clients/rust/tests/vectors.rs`) and the Python package
//! (`clients/python/tests/test_vectors.py`) each run the whole set. Tokens are put together by
//! hand here (not with jsonwebtoken) so that headers a library would refuse to write, such as
//! `alg: none`, can be among them.

use aws_lc_rs::{
    encoding::AsDer,
    hmac,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
        ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    },
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::{json, Value};

const ISSUER: &str = "https://api.neoagent.io";
const AUDIENCE: &str = "https://api.neoagent.io/chat";
const LEEWAY: i64 = 30;
/// When the vectors are checked: 2026-01-01T00:00:00Z.
const AT: i64 = 1_767_225_600;
const SESSION: &str = "s-acme-1";
const TYP: &str = "neo-session+jwt";

enum Pair {
    Es(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

struct Key {
    kid: String,
    alg: &'static str,
    pair: Pair,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Key {
    fn new(kid: &str, alg: &'static str) -> Result<Self, Box<dyn std::error::Error>> {
        let rng = SystemRandom::new();
        let (pair, mut jwk) = match alg {
            "ES256" => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())?;
                let point = pair.public_key().as_ref().to_vec();
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]),
                                 "y": b64(&point[33..])});
                (Pair::Es(pair), jwk)
            }
            "EdDSA" => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())?;
                let jwk =
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
                (Pair::Ed(pair), jwk)
            }
            _ => {
                let generated = RsaKeyPair::generate(KeySize::Rsa2048)?;
                let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&generated)?;
                let pair = RsaKeyPair::from_pkcs8(der.as_ref())?;
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = json!({"kty": "RSA", "n": b64(&components.n), "e": b64(&components.e)});
                (Pair::Rsa(pair), jwk)
            }
        };
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            pair,
            jwk,
        })
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let rng = SystemRandom::new();
        Ok(match &self.pair {
            Pair::Es(pair) => pair.sign(&rng, input)?.as_ref().to_vec(),
            Pair::Ed(pair) => pair.sign(input).as_ref().to_vec(),
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input, &mut signature)?;
                signature
            }
        })
    }

    /// Our header for this key: its `alg` and `kid`, our `typ`.
    fn header(&self) -> Value {
        json!({"alg": self.alg, "typ": TYP, "kid": self.kid})
    }

    /// `header.claims` signed with this key, whatever the header says.
    fn token(&self, header: &Value, claims: &Value) -> Result<String, Box<dyn std::error::Error>> {
        let input = signing_input(header, claims);
        Ok(format!("{input}.{}", b64(&self.sign(input.as_bytes())?)))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The claims of a token minted a minute before the check, valid for 15 minutes, with `changes`
/// applied (`null` removes a claim).
fn claims(changes: Value) -> Value {
    let iat = AT - 60;
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "pat@acme.example",
        "jti": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a", "iat": iat, "nbf": iat, "exp": iat + 900,
        "session_id": SESSION, "client_id": "acme", "end_company_id": null,
        "end_user": "pat@acme.example", "end_user_email": "pat@acme.example",
        "allowed_agent_ids": [7, 12], "scope": "chat:session",
    });
    if let (Some(claims), Value::Object(changes)) = (claims.as_object_mut(), changes) {
        for (name, value) in changes {
            if value.is_null() {
                claims.remove(&name);
            } else {
                claims.insert(name, value);
            }
        }
    }
    claims
}

struct Vectors(Vec<Value>);

impl Vectors {
    /// A token checked at `AT` for `session`, expected to give `expected`; `ok` ones also carry
    /// the claims a verifier must return.
    fn add(&mut self, name: &str, about: &str, token: String, session: &str, expected: &str) {
        let mut vector = json!({
            "name": name, "description": about, "token": token, "session_id": session,
            "at": AT, "expected": expected,
        });
        if expected == "ok" {
            if let Some(payload) = token.split('.').nth(1) {
                if let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) {
                    if let Ok(claims) = serde_json::from_slice::<Value>(&bytes) {
                        vector["claims"] = claims;
                    }
                }
            }
        }
        self.0.push(vector);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/session-tokens.json"
        )
        .to_owned()
    });
    let es = Key::new("vec-es256", "ES256")?;
    let ed = Key::new("vec-eddsa", "EdDSA")?;
    let rsa = Key::new("vec-rs256", "RS256")?;
    // Same kid as the ES256 key, not published: its signatures are bad ones.
    let impostor = Key::new("vec-es256", "ES256")?;
    let unpublished = Key::new("vec-unpublished", "EdDSA")?;
    let good = claims(json!({}));
    let mut v = Vectors(Vec::new());

    for key in [&es, &ed, &rsa] {
        v.add(
            &format!("valid_{}", key.alg.to_lowercase()),
            &format!(
                "A token as the service mints it, signed with the {} key.",
                key.alg
            ),
            key.token(&key.header(), &good)?,
            SESSION,
            "ok",
        );
    }
    let exp = |exp: i64| claims(json!({"exp": exp}));
    let nbf = |nbf: i64| claims(json!({"nbf": nbf, "iat": nbf}));
    v.add(
        "expired",
        "exp one second past the leeway.",
        es.token(&es.header(), &exp(AT - LEEWAY - 1))?,
        SESSION,
        "expired",
    );
    v.add(
        "expired_at_leeway_edge",
        "exp exactly the leeway ago: still valid (expired once exp < at - leeway).",
        es.token(&es.header(), &exp(AT - LEEWAY))?,
        SESSION,
        "ok",
    );
    v.add(
        "expired_inside_leeway",
        "exp one second inside the leeway: valid.",
        es.token(&es.header(), &exp(AT - LEEWAY + 1))?,
        SESSION,
        "ok",
    );
    v.add(
        "not_yet_valid",
        "nbf one second beyond the leeway.",
        es.token(&es.header(), &nbf(AT + LEEWAY + 1))?,
        SESSION,
        "not_yet_valid",
    );
    v.add(
        "not_yet_valid_inside_leeway",
        "nbf one second inside the leeway: valid.",
        es.token(&es.header(), &nbf(AT + LEEWAY - 1))?,
        SESSION,
        "ok",
    );
    v.add(
        "wrong_typ",
        "typ JWT: another kind of JWT signed by the same key.",
        es.token(&json!({"alg": "ES256", "typ": "JWT", "kid": es.kid}), &good)?,
        SESSION,
        "wrong_type",
    );
    v.add(
        "missing_typ",
        "No typ at all.",
        es.token(&json!({"alg": "ES256", "kid": es.kid}), &good)?,
        SESSION,
        "wrong_type",
    );
    v.add(
        "alg_none",
        "alg none, no signature: not a JWS algorithm a verifier knows, so not a JWT.",
        format!(
            "{}.",
            signing_input(&json!({"alg": "none", "typ": TYP, "kid": es.kid}), &good)
        ),
        SESSION,
        "malformed",
    );
    let hs_header = json!({"alg": "HS256", "typ": TYP, "kid": rsa.kid});
    let hs_input = signing_input(&hs_header, &good);
    let secret = hmac::Key::new(hmac::HMAC_SHA256, rsa.jwk.to_string().as_bytes());
    v.add(
        "hs256_public_key_as_secret",
        "HS256 naming the RS256 key, its public JWK (as sent in the JWKS) the HMAC secret.",
        format!(
            "{hs_input}.{}",
            b64(hmac::sign(&secret, hs_input.as_bytes()).as_ref())
        ),
        SESSION,
        "algorithm_mismatch",
    );
    v.add(
        "header_alg_differs_from_key",
        "Signed with the RS256 key but naming the ES256 key's kid: the header's alg is not the key's.",
        rsa.token(&json!({"alg": "RS256", "typ": TYP, "kid": es.kid}), &good)?,
        SESSION,
        "algorithm_mismatch",
    );
    v.add(
        "header_alg_differs_from_key_same_family",
        "ES384 named in the header of a token for the ES256 key.",
        es.token(&json!({"alg": "ES384", "typ": TYP, "kid": es.kid}), &good)?,
        SESSION,
        "algorithm_mismatch",
    );
    v.add(
        "unknown_kid",
        "A well-formed token whose kid is not in the JWKS (refetching it does not help).",
        unpublished.token(&unpublished.header(), &good)?,
        SESSION,
        "unknown_key",
    );
    v.add(
        "missing_kid",
        "Our typ, no kid.",
        es.token(&json!({"alg": "ES256", "typ": TYP}), &good)?,
        SESSION,
        "unknown_key",
    );
    v.add(
        "bad_signature_other_key",
        "Signed by another ES256 key under the published key's kid.",
        impostor.token(&es.header(), &good)?,
        SESSION,
        "bad_signature",
    );
    let valid_ed = ed.token(&ed.header(), &good)?;
    let altered = format!(
        "{}.{}",
        signing_input(
            &ed.header(),
            &claims(json!({"allowed_agent_ids": [7, 12, 99]}))
        ),
        valid_ed.rsplit('.').next().unwrap_or_default()
    );
    v.add(
        "bad_signature_altered_claims",
        "A valid EdDSA token whose claims were changed after signing.",
        altered,
        SESSION,
        "bad_signature",
    );
    v.add(
        "wrong_issuer",
        "iss of another service.",
        es.token(
            &es.header(),
            &claims(json!({"iss": "https://login.example"})),
        )?,
        SESSION,
        "wrong_issuer",
    );
    v.add(
        "wrong_audience",
        "aud of another service.",
        es.token(
            &es.header(),
            &claims(json!({"aud": "https://api.neoagent.io/admin"})),
        )?,
        SESSION,
        "wrong_audience",
    );
    v.add(
        "audience_as_array",
        "aud as a list holding ours: our tokens carry a single string, anything else is refused.",
        es.token(&es.header(), &claims(json!({"aud": [AUDIENCE]})))?,
        SESSION,
        "bad_claims",
    );
    v.add(
        "wrong_session",
        "A valid token presented on another session's path.",
        es.token(&es.header(), &good)?,
        "s-acme-2",
        "wrong_session",
    );
    for (name, changes) in [
        ("missing_session_id", json!({"session_id": null})),
        ("missing_exp", json!({"exp": null})),
        ("missing_sub", json!({"sub": null})),
        ("missing_jti", json!({"jti": null})),
        ("jti_not_a_uuid", json!({"jti": "7"})),
        ("agent_ids_not_numbers", json!({"allowed_agent_ids": ["7"]})),
    ] {
        v.add(
            name,
            "Required claims missing or of the wrong type.",
            es.token(&es.header(), &claims(changes))?,
            SESSION,
            "bad_claims",
        );
    }
    let tenant = "9188040d-6c67-4c5b-b112-36a304b66dad";
    let entra_claims = json!({
        "aud": "api://neo-sessions", "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": AT - 60, "nbf": AT - 60, "exp": AT + 3600, "tid": tenant,
        "oid": "00000000-0000-0000-66f3-3332eca7ea81", "scp": "Sessions.Mint",
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "ver": "1.0",
        "appid": "11111111-2222-3333-4444-555555555555",
    });
    v.add(
        "entra_shaped",
        "An Entra ID access token's shape (typ JWT, x5t), even signed by a published key.",
        rsa.token(
            &json!({"typ": "JWT", "alg": "RS256", "kid": rsa.kid, "x5t": rsa.kid}),
            &entra_claims,
        )?,
        SESSION,
        "wrong_type",
    );
    v.add(
        "not_a_jwt",
        "Not three base64url parts.",
        "garbage".to_owned(),
        SESSION,
        "malformed",
    );
    v.add(
        "header_not_json",
        "A header that is not JSON.",
        format!(
            "{}.{}.c2ln",
            b64(b"not json"),
            b64(good.to_string().as_bytes())
        ),
        SESSION,
        "malformed",
    );

    let document = json!({
        "description": "Session tokens and what every neo-sessions verifier must answer for each. \
            Rebuild: cargo run -p neo-sessions-verify --example vectors",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway_seconds": LEEWAY,
        "jwks": {"keys": [es.jwk, ed.jwk, rsa.jwk]},
        "vectors": v.0,
    });
    let mut text = serde_json::to_string_pretty(&document)?;
    text.push('\n');
    std::fs::write(&out, text)?;
    println!(
        "wrote {} vectors to {out}",
        document["vectors"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}
