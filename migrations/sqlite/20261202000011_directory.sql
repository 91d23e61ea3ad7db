-- The directory API deletes chat sessions: the records of the tokens minted for a deleted session
-- stay (they are the audit trail, and their revocations stay in the feed until they expire), so a
-- record no longer needs its session to exist. A tenant with records still cannot be deleted.
-- SQLite cannot drop a foreign key, so the table is rebuilt (its triggers and indexes with it).
--
-- `allowed_agent_ids`: the agents a token may talk to, as `,101,102,` (empty list: `,`), so that
-- removing an agent finds the live tokens that carry it. NULL for records from before.
CREATE TABLE session_token_mints_new (
    jti               TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    minted_by_kind    TEXT NOT NULL,
    minted_by         TEXT NOT NULL,
    end_user          TEXT,
    issued_at         TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    end_company_id    TEXT,
    minted_by_tenant  TEXT,
    revoked_at        TEXT,
    revoked_by        TEXT,
    revoked_seq       INTEGER,
    allowed_agent_ids TEXT,
    CHECK (expires_at > issued_at)
);
INSERT INTO session_token_mints_new
    (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at,
     end_company_id, minted_by_tenant, revoked_at, revoked_by, revoked_seq)
SELECT jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at,
       end_company_id, minted_by_tenant, revoked_at, revoked_by, revoked_seq
FROM session_token_mints;
DROP TABLE session_token_mints;
ALTER TABLE session_token_mints_new RENAME TO session_token_mints;
CREATE INDEX session_token_mints_session_id_idx ON session_token_mints (session_id);
CREATE INDEX session_token_mints_tenant_issued_idx ON session_token_mints (tenant_id, issued_at);
CREATE INDEX session_token_mints_revoked_seq_idx ON session_token_mints (revoked_seq, jti)
    WHERE revoked_seq IS NOT NULL;

CREATE TRIGGER session_token_mints_revoked_seq_update AFTER UPDATE OF revoked_at ON session_token_mints
    FOR EACH ROW WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    UPDATE revocation_counter SET value = value + 1 WHERE id = 1;
    UPDATE session_token_mints SET revoked_seq = (SELECT value FROM revocation_counter WHERE id = 1)
        WHERE jti = NEW.jti;
END;
CREATE TRIGGER session_token_mints_revoked_seq_insert AFTER INSERT ON session_token_mints
    FOR EACH ROW WHEN NEW.revoked_at IS NOT NULL
BEGIN
    UPDATE revocation_counter SET value = value + 1 WHERE id = 1;
    UPDATE session_token_mints SET revoked_seq = (SELECT value FROM revocation_counter WHERE id = 1)
        WHERE jti = NEW.jti;
END;
