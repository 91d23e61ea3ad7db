//! For the load benchmark (`bench/load.sh`): a local stand-in for Microsoft Entra ID.
//! Writes `<dir>/jwks.json` with a fresh RSA key and prints one user access token for the example
//! fixture's Acme directory, signed with it and valid for two hours.
//!
//! `cargo run --release --example entra_fixture -- <dir> <audience> <scope>`

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der},
    rsa::KeySize,
    signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents},
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const TID: &str = "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(audience), Some(scope)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: entra_fixture <dir> <audience> <scope>");
    };
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("keygen"))?;
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).map_err(|_| anyhow::anyhow!("pkcs8"))?;
    let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    let kid = "bench-entra-key";
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e),
    }]});
    std::fs::write(format!("{dir}/jwks.json"), serde_json::to_vec(&jwks)?)?;

    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"),
        "aud": audience, "tid": TID, "oid": "5f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f",
        "scp": scope, "iat": now, "nbf": now, "exp": now + 7200, "ver": "2.0",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(pem_text.as_bytes())?,
    )?;
    println!("{token}");
    Ok(())
}
