-- Usage accounting: append-only.

CREATE TABLE usage_events (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('embedding', 'chat')),
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    requests          integer NOT NULL DEFAULT 1 CHECK (requests >= 0),
    cost              numeric(14, 8) NOT NULL DEFAULT 0,
    idempotency_key   text NOT NULL UNIQUE,
    -- Subjects are plain ids, not foreign keys: accounting outlives deleted documents.
    document_id       uuid,
    message_id        uuid,
    request_id        uuid,
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE usage_events IS 'One row per model call set. Never updated or deleted: the application role may only select and insert.';
COMMENT ON COLUMN usage_events.idempotency_key IS 'Derived from the job and its subject, so a retried job inserts nothing new (ON CONFLICT DO NOTHING).';
CREATE INDEX usage_events_user_created_idx ON usage_events (user_id, created_at);

ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_events_select ON usage_events FOR SELECT
    USING (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY usage_events_insert ON usage_events FOR INSERT
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

GRANT SELECT, INSERT ON usage_events TO ragpipe_app;
