-- Absolute session lifetime (PostgreSQL). Mirrors ../sqlite/0004_session_lifetime.sql.

-- When the login that started a refresh-token family happened: every token rotated from it
-- carries the same time, and a refresh past the configured session lifetime is refused.
ALTER TABLE refresh_tokens ADD COLUMN session_started_at BIGINT NOT NULL DEFAULT 0;

-- Families from before this column: their first token is when they logged in.
UPDATE refresh_tokens SET session_started_at = (
    SELECT MIN(f.created_at) FROM refresh_tokens f WHERE f.family_id = refresh_tokens.family_id
);
