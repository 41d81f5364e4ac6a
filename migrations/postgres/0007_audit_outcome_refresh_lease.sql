-- The plugin audit records what a plugin was allowed to do that is worth knowing (each
-- read of one of its secrets) beside what it was denied: one counted row per minute each.
ALTER TABLE plugin_audit ADD COLUMN outcome TEXT NOT NULL DEFAULT 'denied';
DROP INDEX plugin_audit_window;
CREATE UNIQUE INDEX plugin_audit_window
    ON plugin_audit (tenant_id, plugin_id, version, capability, operation, outcome, window_start);

-- One node at a time refreshes a connection's token (a lease): a service that rotates
-- refresh tokens accepts each once, so two concurrent refreshes would lose one.
ALTER TABLE connections ADD COLUMN refresh_lease_until BIGINT;

-- JSON columns are JSONB on PostgreSQL, like every other JSON column here.
ALTER TABLE connection_apps ALTER COLUMN urls TYPE JSONB USING urls::jsonb;
ALTER TABLE connections ALTER COLUMN metadata TYPE JSONB USING metadata::jsonb;

-- What the provider set for one installation within the platform's maxima: per-call
-- quotas and longer schedule intervals (`{"quotas": {...}, "schedules": {"poll": "1h"}}`).
ALTER TABLE plugin_installations ADD COLUMN overrides JSONB NOT NULL DEFAULT '{}';

-- Webhook history is kept for a while, not forever: pruned by age.
CREATE INDEX webhook_receipts_by_time ON webhook_receipts (received_at);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (seen_at);
