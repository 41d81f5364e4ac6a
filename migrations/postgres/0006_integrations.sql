-- Contract 0.2.0 (issue 11): outbound HTTP usage, connections whose credentials the kernel
-- holds, OAuth2 authorization state, inbound webhook addresses and receipts, schedules.

-- Outbound requests per tenant × plugin × host pattern × day: what billing will read.
CREATE TABLE plugin_http_usage (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    plugin_id  TEXT NOT NULL,
    host       TEXT NOT NULL,
    day        TEXT NOT NULL,
    calls      BIGINT NOT NULL,
    bytes      BIGINT NOT NULL,
    errors     BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id, host, day)
);

-- A connection's app-level settings and URLs, set by the provider. `settings` is sealed.
CREATE TABLE connection_apps (
    plugin_id  TEXT NOT NULL REFERENCES plugins(id),
    connection TEXT NOT NULL,
    settings   BYTEA,
    urls       TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (plugin_id, connection)
);

-- A tenant's connection: what it supplied (sealed), its tokens (sealed) and their
-- generation, which every token save bumps (a refresh saves only over the generation it
-- read, so two nodes refreshing at once cannot lose the newer refresh token).
CREATE TABLE connections (
    tenant_id   UUID NOT NULL REFERENCES tenants(id),
    plugin_id   TEXT NOT NULL,
    connection  TEXT NOT NULL,
    status      TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    credentials BYTEA,
    tokens      BYTEA,
    expires_at  BIGINT,
    last_error  TEXT,
    generation  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id, connection)
);

-- OAuth2 authorization requests in flight: single use, bound to tenant, user and the PKCE
-- verifier (sealed), expiring. Looked up by the hash of `state`, never by the value.
CREATE TABLE oauth_states (
    state_hash TEXT PRIMARY KEY,
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    user_id    UUID NOT NULL,
    plugin_id  TEXT NOT NULL,
    connection TEXT NOT NULL,
    verifier   BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- The opaque per-installation webhook address.
CREATE TABLE webhook_addresses (
    token      TEXT PRIMARY KEY,
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    plugin_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, plugin_id)
);

-- Every inbound webhook call: never its body, only its size and hash.
CREATE TABLE webhook_receipts (
    id          UUID PRIMARY KEY,
    tenant_id   UUID REFERENCES tenants(id),
    plugin_id   TEXT NOT NULL,
    address     TEXT NOT NULL,
    delivery_id TEXT,
    received_at BIGINT NOT NULL,
    verified    BOOLEAN NOT NULL,
    status      INTEGER NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    body_bytes  BIGINT NOT NULL,
    body_sha256 TEXT NOT NULL
);
CREATE INDEX webhook_receipts_by_plugin ON webhook_receipts (plugin_id, received_at);
CREATE INDEX webhook_receipts_by_tenant ON webhook_receipts (tenant_id, plugin_id, received_at);

-- Deliveries already handed to a plugin, by id: a replay is answered without a second
-- call. `tenant_key` is the tenant's id as text, or '' before routing.
CREATE TABLE webhook_deliveries (
    plugin_id   TEXT NOT NULL,
    tenant_key  TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (plugin_id, tenant_key, delivery_id)
);

-- Each schedule of each installation: when it runs next, and a lease so that one node
-- runs it per interval.
CREATE TABLE plugin_schedules (
    tenant_id     UUID NOT NULL REFERENCES tenants(id),
    plugin_id     TEXT NOT NULL,
    schedule_id   TEXT NOT NULL,
    every_seconds BIGINT NOT NULL,
    next_run_at   BIGINT NOT NULL,
    last_run_at   BIGINT,
    last_error    TEXT,
    lease_until   BIGINT,
    PRIMARY KEY (tenant_id, plugin_id, schedule_id)
);
CREATE INDEX plugin_schedules_due ON plugin_schedules (next_run_at);
