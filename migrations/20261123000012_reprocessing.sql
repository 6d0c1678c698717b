-- Reprocessing, embedding model migration and the embedding cache.
--
-- A ready document is reprocessed in the background: its status stays `ready` and its current
-- chunk set stays searchable until the job replaces it in one transaction. What the pending
-- run wants (stage, chunk settings, embedding model, the run it belongs to) is kept on the
-- document, written in the same transaction as the job, so an interrupted `ragpipe reprocess`
-- knows on its next run which documents are still in the queue and enqueues them no second time.
-- The run that last completed on the document is kept too: re-running the same command skips it.
ALTER TABLE documents
    ADD COLUMN reprocess jsonb,
    ADD COLUMN last_reprocess_run text;
COMMENT ON COLUMN documents.reprocess IS
    'Pending reprocessing ({"run", "stage", "chunk_max_tokens", "chunk_overlap_tokens", "embedding_model"}); NULL when none. Cleared when the new chunk set replaces the old one; when the run fails, "error" says why and the old chunk set is kept.';
COMMENT ON COLUMN documents.last_reprocess_run IS 'The reprocessing run that last completed on this document.';
CREATE INDEX documents_reprocess_run_idx ON documents ((reprocess ->> 'run')) WHERE reprocess IS NOT NULL;

-- Models are served from their recorded endpoint, so any process can embed a query (or a chunk)
-- with any recorded model: during a migration from one model to another, search embeds the
-- query with each model that still has chunks and ranks each model's chunks in a leg of its
-- own. The configured model is the one new chunks are embedded with; there is no other notion
-- of an "active" model to keep in step across processes.
ALTER TABLE embedding_models ADD COLUMN base_url text;
COMMENT ON COLUMN embedding_models.base_url IS 'OpenAI-compatible endpoint of the model; NULL: the offline hashed embedder.';
DROP INDEX embedding_models_one_active;
ALTER TABLE embedding_models DROP COLUMN active;
COMMENT ON TABLE embedding_models IS 'Embedding models with a vector index; search ranks the chunks of every model that has any.';

-- Which models still have chunks, answered from an index rather than a scan.
CREATE INDEX document_chunks_embedding_model_idx ON document_chunks (embedding_model);

-- Pay once per text: vectors by (model, dimension, sha256 of the exact text embedded). Ingest
-- and reprocessing look chunks up here first and send only the misses to the model. The cache
-- holds no user id and no text (a hit needs the text itself), so it is shared: the same
-- paragraph in two users' documents is embedded once.
CREATE TABLE embedding_cache (
    model       text NOT NULL,
    dim         integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
    text_sha256 bytea NOT NULL CHECK (length(text_sha256) = 32),
    embedding   vector NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, dim, text_sha256),
    CHECK (vector_dims(embedding) = dim)
);
COMMENT ON TABLE embedding_cache IS 'Embeddings by model, dimension and sha256 of the text; read before calling the model.';
GRANT SELECT, INSERT ON embedding_cache TO ragpipe_app;

-- Usage events say how much of a call set the cache saved, and whether the user asked for it
-- (uploads, questions) or an operator did (reprocessing): quotas charge only the former.
ALTER TABLE usage_events
    ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    ADD COLUMN origin text NOT NULL DEFAULT 'user' CHECK (origin IN ('user', 'reprocess'));
COMMENT ON COLUMN usage_events.cached_tokens IS 'Input tokens served from the embedding cache instead of the model (not in prompt_tokens, not charged).';
COMMENT ON COLUMN usage_events.origin IS 'user: an upload or a question; reprocess: an operator''s batch run, not charged to the user''s quota.';
