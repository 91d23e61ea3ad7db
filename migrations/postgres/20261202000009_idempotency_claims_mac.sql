-- The claims an Idempotency-Key replay signs again carry a MAC (HMAC-SHA256 under a key derived
-- from the key-encryption key) over the principal, the key, the request hash and the claims: a
-- replay signs only claims this service stored, so write access to this table yields no token.
ALTER TABLE mint_idempotency ADD COLUMN claims_mac BYTEA;
-- Claims settled before this migration have no MAC and would be refused: forget them, so a
-- retry with their key mints a new token instead of failing.
DELETE FROM mint_idempotency WHERE claims IS NOT NULL;
