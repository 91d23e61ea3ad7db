-- Tenants (MSPs and the platform tenant), what belongs to them, the keys that act for them,
-- and the record of every session token minted.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    platform        BOOLEAN NOT NULL DEFAULT FALSE,
    -- Microsoft Entra directory (tid) whose users are this tenant's dashboard users.
    entra_tenant_id TEXT UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE end_companies (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id        TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE agents (
    id        BIGINT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name      TEXT NOT NULL
);
CREATE INDEX agents_tenant_id_idx ON agents (tenant_id, id);

CREATE TABLE chat_sessions (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'neo_support')),
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    end_company_id TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, end_company_id) REFERENCES end_companies (tenant_id, id)
);
CREATE INDEX chat_sessions_tenant_id_idx ON chat_sessions (tenant_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    -- SHA-256 of the whole key; the plaintext is never stored.
    key_hash     BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant_id_idx ON api_keys (tenant_id);

CREATE TABLE session_token_mints (
    jti            UUID PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    minted_by_kind TEXT NOT NULL,
    minted_by      TEXT NOT NULL,
    end_user       TEXT,
    issued_at      TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    CHECK (expires_at > issued_at)
);
CREATE INDEX session_token_mints_session_id_idx ON session_token_mints (session_id);
CREATE INDEX session_token_mints_tenant_issued_idx ON session_token_mints (tenant_id, issued_at);
