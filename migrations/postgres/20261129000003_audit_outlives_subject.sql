-- The mint record is the audit trail: it must outlive its session and tenant. Deleting a session
-- or tenant that has mint records is refused (RESTRICT) instead of deleting the records with it.
ALTER TABLE session_token_mints
    DROP CONSTRAINT session_token_mints_session_id_fkey,
    DROP CONSTRAINT session_token_mints_tenant_id_fkey,
    ADD CONSTRAINT session_token_mints_session_id_fkey
        FOREIGN KEY (session_id) REFERENCES chat_sessions (id) ON DELETE RESTRICT,
    ADD CONSTRAINT session_token_mints_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE RESTRICT;
