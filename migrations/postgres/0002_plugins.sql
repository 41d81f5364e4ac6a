-- Plugin registry, installations and plugin storage (PostgreSQL). Mirrors ../sqlite/0002_plugins.sql.

-- A plugin id belongs to the developer who first published it.
CREATE TABLE plugins (
    id           TEXT PRIMARY KEY,
    developer_id UUID NOT NULL REFERENCES developer_accounts(id),
    created_at   BIGINT NOT NULL
);

-- Published versions are immutable; only their review status changes.
CREATE TABLE plugin_versions (
    plugin_id   TEXT NOT NULL REFERENCES plugins(id),
    version     TEXT NOT NULL,
    name        TEXT NOT NULL,
    api         TEXT NOT NULL,
    manifest    JSONB NOT NULL,
    package     BYTEA NOT NULL,
    sha256      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    review_note TEXT,
    reviewed_by UUID,
    reviewed_at BIGINT,
    uploaded_by UUID NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (plugin_id, version)
);

-- Tenant x plugin. config holds everything but the secret fields, which are in secrets,
-- encrypted (AES-256-GCM, bound to the tenant, plugin and column).
CREATE TABLE plugin_installations (
    tenant_id   UUID NOT NULL REFERENCES tenants(id),
    plugin_id   TEXT NOT NULL REFERENCES plugins(id),
    requirement TEXT NOT NULL,
    version     TEXT NOT NULL,
    grants      JSONB NOT NULL,
    config      JSONB NOT NULL,
    secrets     BYTEA,
    enabled     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id)
);

-- The kv capability: private to tenant x plugin.
CREATE TABLE plugin_kv (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    plugin_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id, key)
);

-- Capability calls a plugin made without the grant.
CREATE TABLE plugin_audit (
    id         UUID PRIMARY KEY,
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    plugin_id  TEXT NOT NULL,
    version    TEXT NOT NULL,
    capability TEXT NOT NULL,
    operation  TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX plugin_audit_by_installation ON plugin_audit (tenant_id, plugin_id, created_at);
