-- Every replica caches API keys, tenants' directory mappings and rate-limit overrides (and, with
-- the session cache, sessions, agents and end companies). These triggers tell each of them what
-- changed, whoever changed it (the service, the CLI, psql, another service): a NOTIFY on channel
-- `neo_sessions_changes` with the payload `table:tenant_id:id`, delivered when the change
-- commits and never for one rolled back. PostgreSQL folds identical payloads of one transaction
-- into one. `api_keys` notifies only for what authentication reads (not `last_used_at`).
CREATE FUNCTION neo_sessions_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row JSONB;
    new_row JSONB;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        -- TRUNCATE: everything of the table changed.
        PERFORM pg_notify('neo_sessions_changes', TG_TABLE_NAME || '::');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := to_jsonb(OLD);
        PERFORM pg_notify('neo_sessions_changes', format('%s:%s:%s', TG_TABLE_NAME,
            COALESCE(old_row ->> 'tenant_id', old_row ->> 'id'), COALESCE(old_row ->> 'id', '')));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := to_jsonb(NEW);
        PERFORM pg_notify('neo_sessions_changes', format('%s:%s:%s', TG_TABLE_NAME,
            COALESCE(new_row ->> 'tenant_id', new_row ->> 'id'), COALESCE(new_row ->> 'id', '')));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_notify_insert_delete AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.tenant_id, OLD.key_hash, OLD.revoked_at)
          IS DISTINCT FROM (NEW.id, NEW.tenant_id, NEW.key_hash, NEW.revoked_at))
    EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();

CREATE TRIGGER chat_sessions_notify AFTER INSERT OR UPDATE OR DELETE ON chat_sessions
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER chat_sessions_notify_truncate AFTER TRUNCATE ON chat_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();

CREATE TRIGGER agents_notify AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER agents_notify_truncate AFTER TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();

CREATE TRIGGER end_companies_notify AFTER INSERT OR UPDATE OR DELETE ON end_companies
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER end_companies_notify_truncate AFTER TRUNCATE ON end_companies
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();

CREATE TRIGGER tenant_rate_limits_notify AFTER INSERT OR UPDATE OR DELETE ON tenant_rate_limits
    FOR EACH ROW EXECUTE FUNCTION neo_sessions_notify_change();
CREATE TRIGGER tenant_rate_limits_notify_truncate AFTER TRUNCATE ON tenant_rate_limits
    FOR EACH STATEMENT EXECUTE FUNCTION neo_sessions_notify_change();
