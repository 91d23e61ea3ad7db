-- Signing keys shared by every replica. The private key is sealed (AES-256-GCM under the
-- key-encryption key, the kid as associated data); the life cycle follows from activates_at:
-- a key signs from its activates_at until the next key's, and is published from its insertion
-- until the last token it signed has expired.
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY,
    -- 1, 2, 3, ...: two replicas rotating at once cannot both insert the same generation.
    generation         INTEGER NOT NULL UNIQUE,
    algorithm          TEXT NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA', 'RS256')),
    sealed_private_key BLOB NOT NULL,
    created_at         TEXT NOT NULL,
    activates_at       TEXT NOT NULL
);
