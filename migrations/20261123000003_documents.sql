-- Uploaded documents and their original bytes.

CREATE TABLE documents (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename             text NOT NULL,
    content_type         text NOT NULL,
    byte_size            bigint NOT NULL CHECK (byte_size >= 0),
    sha256               bytea NOT NULL CHECK (length(sha256) = 32),
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'extracting', 'chunking', 'embedding', 'ready', 'failed')),
    progress             real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    error                text,
    title                text,
    language             text,
    page_count           integer CHECK (page_count >= 0),
    chunk_count          integer NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
    failed_pages         jsonb NOT NULL DEFAULT '[]',
    metadata             jsonb NOT NULL DEFAULT '{}',
    embedding_model      text,
    chunk_max_tokens     integer,
    chunk_overlap_tokens integer,
    tokenizer            text,
    extractor_version    text,
    attempts             integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    ready_at             timestamptz,
    -- Children reference (id, user_id) so a chunk can never belong to another user's document.
    UNIQUE (id, user_id),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
COMMENT ON TABLE documents IS 'One uploaded file and where it is in the ingest pipeline.';
COMMENT ON COLUMN documents.sha256 IS 'Of the original bytes; an identical re-upload returns the existing document.';
COMMENT ON COLUMN documents.progress IS 'Fraction of the current pipeline run done, 0..1.';
COMMENT ON COLUMN documents.failed_pages IS 'Pages that could not be extracted: [{"page": n, "reason": "..."}]; the rest of the document still is.';
COMMENT ON COLUMN documents.embedding_model IS 'Model that embedded the current chunk set.';
COMMENT ON COLUMN documents.extractor_version IS 'Extractor that produced the current chunk set, so reprocessing knows what is stale.';

CREATE UNIQUE INDEX documents_user_sha256_key ON documents (user_id, sha256);
CREATE INDEX documents_user_created_idx ON documents (user_id, created_at DESC, id DESC);
CREATE INDEX documents_user_status_idx ON documents (user_id, status, created_at DESC, id DESC);

CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    bytes       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (document_id, user_id) REFERENCES documents (id, user_id) ON DELETE CASCADE
);
COMMENT ON TABLE document_blobs IS 'Original uploaded bytes, kept so documents can be reprocessed.';
-- Uploads are mostly already compressed (PDF, DOCX): skip TOAST compression, keep out-of-line.
ALTER TABLE document_blobs ALTER COLUMN bytes SET STORAGE EXTERNAL;

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;
ALTER TABLE document_blobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE document_blobs FORCE ROW LEVEL SECURITY;

CREATE POLICY documents_owner ON documents
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY document_blobs_owner ON document_blobs
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

GRANT SELECT, INSERT, UPDATE, DELETE ON documents, document_blobs TO ragpipe_app;
