-- Plugin limits (issue 9): aggregated audit of denied calls, kv byte quotas, and the
-- fan-out budget of one originating change.

-- Denied capability calls: one row per installation version × capability × operation ×
-- minute, with how many calls it stands for. Rows from before keep window_start NULL.
ALTER TABLE plugin_audit ADD COLUMN window_start INTEGER;
ALTER TABLE plugin_audit ADD COLUMN calls INTEGER NOT NULL DEFAULT 1;
ALTER TABLE plugin_audit ADD COLUMN last_at INTEGER;
UPDATE plugin_audit SET last_at = created_at;
CREATE UNIQUE INDEX plugin_audit_window
    ON plugin_audit (tenant_id, plugin_id, version, capability, operation, window_start);

-- What each tenant × plugin keeps in kv (bytes of keys and values, and keys), updated in
-- the same transaction as the kv row, under this row's lock.
CREATE TABLE plugin_kv_usage (
    tenant_id BLOB NOT NULL REFERENCES tenants(id),
    plugin_id TEXT NOT NULL,
    bytes     INTEGER NOT NULL,
    key_count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id)
);
INSERT INTO plugin_kv_usage (tenant_id, plugin_id, bytes, key_count)
    SELECT tenant_id, plugin_id, SUM(length(CAST(key AS BLOB)) + length(value)), COUNT(*)
    FROM plugin_kv GROUP BY tenant_id, plugin_id;

-- The event a chain started from (NULL: the event is its own root), and what each root's
-- chain has spent of its budget of plugin and automation runs.
ALTER TABLE events ADD COLUMN root_id BLOB;
CREATE TABLE event_budgets (
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    root_id    BLOB NOT NULL,
    spent      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, root_id)
);
