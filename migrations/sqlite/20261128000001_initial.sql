-- The SQLite twin of migrations/postgres/20261128000001_initial.sql: same tables, columns and
-- constraints; timestamps are RFC 3339 TEXT, UUIDs hyphenated TEXT, hashes BLOB.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    platform        INTEGER NOT NULL DEFAULT 0 CHECK (platform IN (0, 1)),
    entra_tenant_id TEXT UNIQUE,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE end_companies (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id        TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE agents (
    id        INTEGER PRIMARY KEY,
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
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    FOREIGN KEY (tenant_id, end_company_id) REFERENCES end_companies (tenant_id, id)
);
CREATE INDEX chat_sessions_tenant_id_idx ON chat_sessions (tenant_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_tenant_id_idx ON api_keys (tenant_id);

CREATE TABLE session_token_mints (
    jti            TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    minted_by_kind TEXT NOT NULL,
    minted_by      TEXT NOT NULL,
    end_user       TEXT,
    issued_at      TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    CHECK (expires_at > issued_at)
);
CREATE INDEX session_token_mints_session_id_idx ON session_token_mints (session_id);
CREATE INDEX session_token_mints_tenant_issued_idx ON session_token_mints (tenant_id, issued_at);
