-- Templates, pipelines and the event dispatcher (SQLite). Mirrors ../postgres/0003_templates.sql.

-- The template a tenant uses: the version applied last and the merged spec (record types,
-- pipelines, automations, plugins) the kernel enforces.
CREATE TABLE tenant_templates (
    tenant_id   BLOB PRIMARY KEY REFERENCES tenants(id),
    template_id TEXT NOT NULL,
    version     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    applied_at  INTEGER NOT NULL
);

-- Dispatch state of the outbox. An event is pending while dispatched_at is null; a worker
-- (claimed_by) claims it until claimed_until; a failed attempt sets next_attempt_at (backoff).
-- depth counts how many automations led to the event (chains are cut at a limit).
ALTER TABLE events ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN claimed_until INTEGER;
ALTER TABLE events ADD COLUMN claimed_by TEXT;
ALTER TABLE events ADD COLUMN last_error TEXT;
ALTER TABLE events ADD COLUMN failed_at INTEGER;
-- Events written before there was a dispatcher are history, not work: delivering them
-- now would run today's automations on last year's changes.
UPDATE events SET dispatched_at = created_at WHERE dispatched_at IS NULL;
DROP INDEX events_pending;
CREATE INDEX events_undispatched ON events (seq) WHERE dispatched_at IS NULL;
CREATE INDEX events_undispatched_by_record ON events (tenant_id, record_id, seq) WHERE dispatched_at IS NULL;
CREATE INDEX events_by_record ON events (tenant_id, record_id, seq);

-- What each event's delivery did, per target (an automation or a subscribed plugin). A
-- target with a row here is not run again when the event is retried.
CREATE TABLE event_deliveries (
    event_id    BLOB NOT NULL,
    target      TEXT NOT NULL,
    tenant_id   BLOB NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('done', 'failed', 'skipped')),
    attempts    INTEGER NOT NULL,
    output      TEXT,
    error       TEXT,
    event_at    INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    node        TEXT NOT NULL,
    PRIMARY KEY (event_id, target)
);
CREATE INDEX event_deliveries_by_tenant ON event_deliveries (tenant_id, finished_at);
