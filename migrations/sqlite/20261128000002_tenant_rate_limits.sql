-- Per-tenant overrides of the per-principal rate limit.
CREATE TABLE tenant_rate_limits (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    per_minute INTEGER NOT NULL CHECK (per_minute > 0),
    burst      INTEGER NOT NULL CHECK (burst > 0)
);
