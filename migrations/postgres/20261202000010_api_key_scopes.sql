-- What an API key may do: scope names separated by spaces (`sessions:mint`, `tokens:manage`,
-- `revocations:read`, `directory:write`). NULL is a key made before scopes existed: it keeps
-- what it could do then (mint, manage tokens, read the revocation feed).
ALTER TABLE api_keys ADD COLUMN scopes TEXT;

-- Authentication reads the scopes: a change of them reaches every replica's key cache.
DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.tenant_id, OLD.key_hash, OLD.revoked_at, OLD.scopes)
          IS DISTINCT FROM (NEW.id, NEW.tenant_id, NEW.key_hash, NEW.revoked_at, NEW.scopes))
    EXECUTE FUNCTION neo_sessions_notify_change();
