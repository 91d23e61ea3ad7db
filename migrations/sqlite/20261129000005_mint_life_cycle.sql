-- What the token life cycle needs of a mint record: the end company it was scoped to, the tenant
-- of the principal that minted it (differs from tenant_id when the platform minted into a
-- tenant's Neo Support session), and its revocation. Rows from before have NULLs.
ALTER TABLE session_token_mints ADD COLUMN end_company_id TEXT;
ALTER TABLE session_token_mints ADD COLUMN minted_by_tenant TEXT;
ALTER TABLE session_token_mints ADD COLUMN revoked_at TEXT;
ALTER TABLE session_token_mints ADD COLUMN revoked_by TEXT;
