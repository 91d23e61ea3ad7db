-- What an API key may do: scope names separated by spaces (`sessions:mint`, `tokens:manage`,
-- `revocations:read`, `directory:write`). NULL is a key made before scopes existed: it keeps
-- what it could do then (mint, manage tokens, read the revocation feed).
ALTER TABLE api_keys ADD COLUMN scopes TEXT;

-- Authentication reads the scopes: a change of them reaches every replica's key cache.
DROP TRIGGER api_keys_log_update;
CREATE TRIGGER api_keys_log_update AFTER UPDATE ON api_keys
    WHEN OLD.id IS NOT NEW.id OR OLD.tenant_id IS NOT NEW.tenant_id
      OR OLD.key_hash IS NOT NEW.key_hash OR OLD.revoked_at IS NOT NEW.revoked_at
      OR OLD.scopes IS NOT NEW.scopes
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', OLD.tenant_id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', NEW.tenant_id, NEW.id);
END;
