-- Per-tenant overrides of the per-principal rate limit.
CREATE TABLE tenant_rate_limits (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    per_minute BIGINT NOT NULL CHECK (per_minute > 0),
    burst      BIGINT NOT NULL CHECK (burst > 0)
);
