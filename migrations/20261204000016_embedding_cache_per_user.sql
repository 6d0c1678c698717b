-- The embedding cache becomes per user, and every successful model call is in the ledger.
--
-- A cache shared by all users told one user what another had embedded: B uploading text A had
-- already embedded saw `cached_tokens` and nothing charged. Now an entry belongs to the user
-- whose model call paid for it, under forced row-level security like every user-data table,
-- read and written in the user's transaction (store::embedding_cache). What a user sees and
-- is charged depends on their own data only; the same paragraph in two users' documents is
-- embedded (and paid) once per user.
--
-- Each entry names the usage event that paid for it (`usage_key`): the worker writes a model
-- call's vectors and its usage event in one transaction, so a job killed after a call has both
-- or neither, and its retry can tell vectors it paid for itself (not a cache saving) from
-- vectors served by the cache. Entries rebuilt below from stored chunks have no key: they were
-- paid before the ledger recorded calls one by one.

ALTER TABLE embedding_cache RENAME TO embedding_cache_shared;
ALTER TABLE embedding_cache_shared RENAME CONSTRAINT embedding_cache_pkey TO embedding_cache_shared_pkey;

CREATE TABLE embedding_cache (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    model       text NOT NULL,
    dim         integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
    text_sha256 bytea NOT NULL CHECK (length(text_sha256) = 32),
    embedding   vector NOT NULL,
    usage_key   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, model, dim, text_sha256),
    CHECK (vector_dims(embedding) = dim)
);
COMMENT ON TABLE embedding_cache IS
    'A user''s embeddings by model, dimension and sha256 of the text; read before calling the model. Never shared between users.';
COMMENT ON COLUMN embedding_cache.usage_key IS
    'Idempotency key of the usage event of the model call that produced the vector (NULL: rebuilt from chunks stored before per-call accounting).';

-- Keep what existing deployments already paid for: one entry per user, model, dimension and
-- chunk text, from the chunks as stored (the vector the chunk holds is the one the cache gave
-- or the model returned for exactly that text). Shared rows that no user's chunk holds are
-- dropped with the old table: nothing says whose they were.
INSERT INTO embedding_cache (user_id, model, dim, text_sha256, embedding)
SELECT DISTINCT ON (c.user_id, c.embedding_model, vector_dims(c.embedding), sha256(convert_to(c.content, 'UTF8')))
       c.user_id, c.embedding_model, vector_dims(c.embedding), sha256(convert_to(c.content, 'UTF8')), c.embedding
FROM document_chunks AS c
WHERE c.embedding IS NOT NULL AND c.embedding_model IS NOT NULL
ORDER BY c.user_id, c.embedding_model, vector_dims(c.embedding), sha256(convert_to(c.content, 'UTF8')), c.id;

DROP TABLE embedding_cache_shared;

ALTER TABLE embedding_cache ENABLE ROW LEVEL SECURITY;
ALTER TABLE embedding_cache FORCE ROW LEVEL SECURITY;
CREATE POLICY embedding_cache_select ON embedding_cache FOR SELECT
    USING (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY embedding_cache_insert ON embedding_cache FOR INSERT
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

-- Exactly what the application does: look entries up and add them. Never updated or deleted
-- by the application (a user's entries go with the user, by the foreign key).
REVOKE ALL ON embedding_cache FROM ragpipe_app;
GRANT SELECT (user_id, model, dim, text_sha256, embedding, usage_key) ON embedding_cache TO ragpipe_app;
GRANT INSERT (user_id, model, dim, text_sha256, embedding, usage_key) ON embedding_cache TO ragpipe_app;

-- usage_events, column by column: inserted with everything but the generated id and the
-- default time; read for the user's report, quota checks and ledger queries. The table was
-- granted SELECT, INSERT whole; the columns granted here are all of them the app uses.
REVOKE ALL ON usage_events FROM ragpipe_app;
GRANT SELECT (user_id, kind, model, prompt_tokens, completion_tokens, cached_tokens, requests, cost,
              idempotency_key, document_id, message_id, request_id, origin, created_at)
    ON usage_events TO ragpipe_app;
GRANT INSERT (user_id, kind, model, prompt_tokens, completion_tokens, cached_tokens, requests, cost,
              idempotency_key, document_id, message_id, request_id, origin)
    ON usage_events TO ragpipe_app;

COMMENT ON COLUMN usage_events.cached_tokens IS
    'Input tokens served from the user''s embedding cache without any model call for this job (not in prompt_tokens, not charged). Vectors a killed attempt of the same job paid for are not cached tokens: their call has its own event.';
COMMENT ON COLUMN usage_events.idempotency_key IS
    'One key per model call, made before its transaction (ingest:{job}:call:{uuid}, agent:{request}, agent:{request}:query:{uuid}, search:{uuid}), or per job for what the cache served (ingest:{job}); a replayed transaction inserts nothing new (ON CONFLICT DO NOTHING).';
