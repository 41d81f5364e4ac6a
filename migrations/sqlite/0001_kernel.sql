-- Kernel schema (SQLite). Mirrors ../postgres/0001_kernel.sql column for column.
-- Ids are UUIDs (BLOB here, uuid on PostgreSQL); times are microseconds since the Unix epoch.
-- Every tenant-owned table carries tenant_id and is keyed or indexed by it first.

CREATE TABLE realm_keys (
    realm      TEXT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE provider_accounts (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE developer_accounts (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tenants (
    id         BLOB PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE users (
    tenant_id     BLOB NOT NULL REFERENCES tenants(id),
    id            BLOB NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);
CREATE UNIQUE INDEX users_id ON users (id);

CREATE TABLE refresh_tokens (
    id          BLOB PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    family_id   BLOB NOT NULL,
    realm       TEXT NOT NULL,
    subject_id  BLOB NOT NULL,
    tenant_id   BLOB,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_subject ON refresh_tokens (subject_id);

CREATE TABLE api_keys (
    tenant_id    BLOB NOT NULL REFERENCES tenants(id),
    id           BLOB NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    created_by   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE record_types (
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    schema     TEXT,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE records (
    tenant_id   BLOB NOT NULL REFERENCES tenants(id),
    id          BLOB NOT NULL,
    type        TEXT NOT NULL,
    stage       TEXT,
    data        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    score       TEXT,
    score_value INTEGER,
    created_by  BLOB,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX records_by_type ON records (tenant_id, type, id);
CREATE INDEX records_by_stage ON records (tenant_id, type, stage, id);
CREATE INDEX records_by_updated ON records (tenant_id, type, updated_at);

-- The outbox: written in the same transaction as the change; dispatched later.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            BLOB NOT NULL UNIQUE,
    tenant_id     BLOB NOT NULL,
    kind          TEXT NOT NULL,
    record_type   TEXT,
    record_id     BLOB,
    actor         TEXT,
    payload       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    dispatched_at INTEGER
);
CREATE INDEX events_pending ON events (dispatched_at, seq);
CREATE INDEX events_by_tenant ON events (tenant_id, seq);
