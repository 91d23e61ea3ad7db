-- The embedded database's form of the change notifications (PostgreSQL uses NOTIFY): triggers
-- append what changed to `cache_changes`, whoever changed it (this process, the CLI, the sqlite3
-- shell), and the serving process polls it (`seq` follows commit order: SQLite has one writer at
-- a time). The poller deletes rows older than an hour. `api_keys` logs only what authentication
-- reads (not `last_used_at`).
CREATE TABLE cache_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    tenant_id  TEXT,
    row_id     TEXT,
    changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER api_keys_log_insert AFTER INSERT ON api_keys
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER api_keys_log_delete AFTER DELETE ON api_keys
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', OLD.tenant_id, OLD.id);
END;

CREATE TRIGGER api_keys_log_update AFTER UPDATE ON api_keys
    WHEN OLD.id IS NOT NEW.id OR OLD.tenant_id IS NOT NEW.tenant_id
      OR OLD.key_hash IS NOT NEW.key_hash OR OLD.revoked_at IS NOT NEW.revoked_at
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', OLD.tenant_id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('api_keys', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER tenants_log_insert AFTER INSERT ON tenants
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenants', NEW.id, NEW.id);
END;

CREATE TRIGGER tenants_log_delete AFTER DELETE ON tenants
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenants', OLD.id, OLD.id);
END;

CREATE TRIGGER tenants_log_update AFTER UPDATE ON tenants
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenants', OLD.id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenants', NEW.id, NEW.id);
END;

CREATE TRIGGER chat_sessions_log_insert AFTER INSERT ON chat_sessions
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('chat_sessions', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER chat_sessions_log_delete AFTER DELETE ON chat_sessions
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('chat_sessions', OLD.tenant_id, OLD.id);
END;

CREATE TRIGGER chat_sessions_log_update AFTER UPDATE ON chat_sessions
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('chat_sessions', OLD.tenant_id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('chat_sessions', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER agents_log_insert AFTER INSERT ON agents
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('agents', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER agents_log_delete AFTER DELETE ON agents
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('agents', OLD.tenant_id, OLD.id);
END;

CREATE TRIGGER agents_log_update AFTER UPDATE ON agents
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('agents', OLD.tenant_id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('agents', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER end_companies_log_insert AFTER INSERT ON end_companies
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('end_companies', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER end_companies_log_delete AFTER DELETE ON end_companies
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('end_companies', OLD.tenant_id, OLD.id);
END;

CREATE TRIGGER end_companies_log_update AFTER UPDATE ON end_companies
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('end_companies', OLD.tenant_id, OLD.id);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('end_companies', NEW.tenant_id, NEW.id);
END;

CREATE TRIGGER tenant_rate_limits_log_insert AFTER INSERT ON tenant_rate_limits
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenant_rate_limits', NEW.tenant_id, NULL);
END;

CREATE TRIGGER tenant_rate_limits_log_delete AFTER DELETE ON tenant_rate_limits
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenant_rate_limits', OLD.tenant_id, NULL);
END;

CREATE TRIGGER tenant_rate_limits_log_update AFTER UPDATE ON tenant_rate_limits
BEGIN
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenant_rate_limits', OLD.tenant_id, NULL);
    INSERT INTO cache_changes (topic, tenant_id, row_id) VALUES ('tenant_rate_limits', NEW.tenant_id, NULL);
END;
