-- Kernel schema (PostgreSQL). Mirrors ../sqlite/0001_kernel.sql column for column.
-- Ids are UUIDs (uuid here, BLOB on SQLite); times are microseconds since the Unix epoch.
-- Every tenant-owned table carries tenant_id and is keyed or indexed by it first.

CREATE TABLE realm_keys (
    realm      TEXT PRIMARY KEY,
    secret     BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE provider_accounts (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE developer_accounts (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE tenants (
    id         UUID PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    tenant_id     UUID NOT NULL REFERENCES tenants(id),
    id            UUID NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);
CREATE UNIQUE INDEX users_id ON users (id);

CREATE TABLE refresh_tokens (
    id          UUID PRIMARY KEY,
    token_hash  BYTEA NOT NULL UNIQUE,
    family_id   UUID NOT NULL,
    realm       TEXT NOT NULL,
    subject_id  UUID NOT NULL,
    tenant_id   UUID,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_subject ON refresh_tokens (subject_id);

CREATE TABLE api_keys (
    tenant_id    UUID NOT NULL REFERENCES tenants(id),
    id           UUID NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     BYTEA NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    created_by   UUID NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE record_types (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    schema     JSONB,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE records (
    tenant_id   UUID NOT NULL REFERENCES tenants(id),
    id          UUID NOT NULL,
    type        TEXT NOT NULL,
    stage       TEXT,
    data        JSONB NOT NULL,
    version     BIGINT NOT NULL,
    score       JSONB,
    score_value BIGINT,
    created_by  UUID,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX records_by_type ON records (tenant_id, type, id);
CREATE INDEX records_by_stage ON records (tenant_id, type, stage, id);
CREATE INDEX records_by_updated ON records (tenant_id, type, updated_at);

-- The outbox: written in the same transaction as the change; dispatched later.
CREATE TABLE events (
    seq           BIGSERIAL PRIMARY KEY,
    id            UUID NOT NULL UNIQUE,
    tenant_id     UUID NOT NULL,
    kind          TEXT NOT NULL,
    record_type   TEXT,
    record_id     UUID,
    actor         TEXT,
    payload       JSONB NOT NULL,
    created_at    BIGINT NOT NULL,
    dispatched_at BIGINT
);
CREATE INDEX events_pending ON events (dispatched_at, seq);
CREATE INDEX events_by_tenant ON events (tenant_id, seq);
