-- Emergency withdrawal of a signing key (`signing-key withdraw`). A withdrawn key is never
-- published and never signs again, whatever its times say; its successor (the `next` key brought
-- forward, or a key generated for it) signs from the moment of the withdrawal, in the same
-- transaction. A withdrawn key that had started signing still ended its predecessor's turn.
ALTER TABLE signing_keys ADD COLUMN withdrawn_at TEXT;

-- The key that signed each token, so a withdrawal revokes exactly the tokens it signed. Records
-- from before have NULL: a withdrawal revokes those by the key's signing window instead.
-- (No index: a withdrawal walks the live records only, along (tenant_id, issued_at).)
ALTER TABLE session_token_mints ADD COLUMN kid TEXT;

-- Every process reloads its keys as soon as they change (on the change log of migration 7),
-- instead of at its next `signing.reload_seconds`.
CREATE TRIGGER signing_keys_log_insert AFTER INSERT ON signing_keys
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('signing_keys', NULL, NEW.kid);
END;

CREATE TRIGGER signing_keys_log_delete AFTER DELETE ON signing_keys
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('signing_keys', NULL, OLD.kid);
END;

CREATE TRIGGER signing_keys_log_update AFTER UPDATE ON signing_keys
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('signing_keys', NULL, NEW.kid);
END;

-- A process that has not heard of the withdrawal yet may still sign with the key for a moment;
-- its records are revoked as they are written, so they too reach the revocation feed (the
-- single writer orders the insert and the withdrawal: one of them sees the other). The time is
-- in the schema's fixed-width format (microseconds); migration 8's trigger numbers it.
CREATE TRIGGER session_token_mints_withdrawn_key AFTER INSERT ON session_token_mints
    FOR EACH ROW WHEN NEW.kid IS NOT NULL AND NEW.revoked_at IS NULL
        AND EXISTS (SELECT 1 FROM signing_keys WHERE kid = NEW.kid AND withdrawn_at IS NOT NULL)
BEGIN
    UPDATE session_token_mints
       SET revoked_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
           revoked_by = 'signing-key withdraw ' || NEW.kid
     WHERE jti = NEW.jti;
END;
