-- Emergency withdrawal of a signing key (`signing-key withdraw`). A withdrawn key is never
-- published and never signs again, whatever its times say; its successor (the `next` key brought
-- forward, or a key generated for it) signs from the moment of the withdrawal, in the same
-- transaction. A withdrawn key that had started signing still ended its predecessor's turn.
ALTER TABLE signing_keys ADD COLUMN withdrawn_at TIMESTAMPTZ;

-- The key that signed each token, so a withdrawal revokes exactly the tokens it signed. Records
-- from before have NULL: a withdrawal revokes those by the key's signing window instead.
-- (No index: a withdrawal walks the live records only, along (tenant_id, issued_at).)
ALTER TABLE session_token_mints ADD COLUMN kid TEXT;

-- Every replica reloads its keys as soon as they change (on the change feed of migration 7),
-- instead of at its next `signing.reload_seconds`.
CREATE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();

-- A replica that has not heard of the withdrawal yet may still sign with the key for a moment;
-- its records are revoked as they are written, so they too reach the revocation feed. The
-- withdrawal takes this advisory lock exclusively before it marks the key and revokes; every
-- insert takes it shared before it looks: either the insert commits first and the withdrawal's
-- revocation sees its rows, or it waits for the withdrawal to commit and then sees the key
-- withdrawn. Shared holders never wait for each other. Once per statement (the recorder writes a
-- batch in one), and while no key is withdrawn it stops at a look at the few key rows.
CREATE FUNCTION neo_sessions_revoke_withdrawn_keys_tokens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7261120200012);
    -- A statement after the lock: its snapshot sees a withdrawal committed before the lock.
    PERFORM FROM signing_keys WHERE withdrawn_at IS NOT NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE session_token_mints
       SET revoked_at = CURRENT_TIMESTAMP, revoked_by = 'signing-key withdraw ' || kid
     WHERE revoked_at IS NULL
       -- With issued_at too, so on the table partitioned by it (migration 13) the update
       -- reads the inserted rows' partitions only.
       AND (jti, issued_at) IN (SELECT i.jti, i.issued_at FROM inserted i
                                JOIN signing_keys k ON k.kid = i.kid
                                WHERE k.withdrawn_at IS NOT NULL);
    RETURN NULL;
END;
$$;

CREATE TRIGGER session_token_mints_withdrawn_key AFTER INSERT ON session_token_mints
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_revoke_withdrawn_keys_tokens();
