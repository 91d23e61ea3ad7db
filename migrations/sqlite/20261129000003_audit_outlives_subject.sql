-- The mint record is the audit trail: it must outlive its session and tenant. Deleting a session
-- or tenant that has mint records is refused (RESTRICT) instead of deleting the records with it.
-- SQLite cannot alter a foreign key, so the table is rebuilt.
CREATE TABLE session_token_mints_new (
    jti            TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES chat_sessions (id) ON DELETE RESTRICT,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    minted_by_kind TEXT NOT NULL,
    minted_by      TEXT NOT NULL,
    end_user       TEXT,
    issued_at      TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    CHECK (expires_at > issued_at)
);
INSERT INTO session_token_mints_new
    (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at)
SELECT jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at
FROM session_token_mints;
DROP TABLE session_token_mints;
ALTER TABLE session_token_mints_new RENAME TO session_token_mints;
CREATE INDEX session_token_mints_session_id_idx ON session_token_mints (session_id);
CREATE INDEX session_token_mints_tenant_issued_idx ON session_token_mints (tenant_id, issued_at);
