-- Records a plugin created under a key of its own (an external system's id), so an import
-- finds them again and never creates one twice: the key reserves the record's id before the
-- record is written.
CREATE TABLE record_keys (
    tenant_id   BLOB NOT NULL REFERENCES tenants(id),
    plugin_id   TEXT NOT NULL,
    record_type TEXT NOT NULL,
    key         TEXT NOT NULL,
    record_id   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id, record_type, key)
);
