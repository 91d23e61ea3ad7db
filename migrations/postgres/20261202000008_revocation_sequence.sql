-- The revocation feed's cursor (issue 20, item 1). `revoked_at` is taken when the revoking
-- statement starts, not when it commits, so a feed paged by it loses a revocation that commits
-- after a verifier polled past its time. Each revoked row now carries `revoked_seq`: the id of the
-- transaction that revoked it (`pg_current_xact_id()`, an xid8 as a bigint), set by the trigger
-- below whoever revokes. The feed orders by (revoked_seq, jti) and hands out only rows whose
-- transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below it
-- has ended, and every transaction that may still revoke has an id at or above it, so a row the
-- feed has not handed out yet always sorts after the cursor. Rows revoked before this migration
-- get 0 (before every transaction id).
ALTER TABLE session_token_mints ADD COLUMN revoked_seq BIGINT;
UPDATE session_token_mints SET revoked_seq = 0 WHERE revoked_at IS NOT NULL;

CREATE FUNCTION neo_sessions_revoked_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.revoked_seq := CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT);
    RETURN NEW;
END;
$$;

CREATE TRIGGER session_token_mints_revoked_seq_update BEFORE UPDATE ON session_token_mints
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION neo_sessions_revoked_seq();
CREATE TRIGGER session_token_mints_revoked_seq_insert BEFORE INSERT ON session_token_mints
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION neo_sessions_revoked_seq();

-- The feed's index: revoked rows only, in the feed's order.
CREATE INDEX session_token_mints_revoked_seq_idx ON session_token_mints (revoked_seq, jti)
    WHERE revoked_seq IS NOT NULL;
