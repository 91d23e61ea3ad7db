-- Idempotency-Key on minting: a retry with the same key and body within 24 h gets the same token
-- (same jti, same claims, re-signed) and records nothing new. Keys are scoped per principal
-- (kind:id). The claims are kept, never the token: no bearer credential rests in the database.
CREATE TABLE mint_idempotency (
    principal    TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    -- NULL while the first request is still minting.
    claims       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
