-- Searchable chunks and the embedding models they were embedded with.

-- Models whose vectors are (or were) stored. The embedding column has no fixed dimension so
-- that a 384-d and a 1536-d model can both be served and can coexist during a migration from
-- one to the other; each model gets its own partial HNSW index over `embedding::vector(dim)`,
-- created by `ragpipe migrate` for the configured model (store::embedding_models).
CREATE TABLE embedding_models (
    model      text PRIMARY KEY,
    dim        integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
    index_name text NOT NULL UNIQUE,
    active     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE embedding_models IS 'Embedding models with a vector index; search uses the active one.';
CREATE UNIQUE INDEX embedding_models_one_active ON embedding_models (active) WHERE active;

-- array_to_string is only STABLE in general (element output functions could vary), but for
-- text[] it is immutable, which a generated column requires.
CREATE FUNCTION ragpipe_heading_text(path text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT array_to_string(path, ' ') $$;

CREATE TABLE document_chunks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id     uuid NOT NULL,
    user_id         uuid NOT NULL,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),
    content         text NOT NULL,
    token_count     integer NOT NULL CHECK (token_count >= 0),
    page_first      integer,
    page_last       integer,
    heading_path    text[] NOT NULL DEFAULT '{}',
    byte_start      integer NOT NULL,
    byte_end        integer NOT NULL,
    -- Headings are searched with the text: a chunk under "Installation" matches "install".
    search_vector   tsvector GENERATED ALWAYS AS (
                        setweight(to_tsvector('english', ragpipe_heading_text(heading_path)), 'A')
                        || to_tsvector('english', content)
                    ) STORED,
    embedding       vector,
    embedding_model text REFERENCES embedding_models (model),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, chunk_index),
    FOREIGN KEY (document_id, user_id) REFERENCES documents (id, user_id) ON DELETE CASCADE,
    CHECK (byte_end >= byte_start),
    CHECK (page_last >= page_first),
    CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);
COMMENT ON TABLE document_chunks IS 'A document''s current chunk set; replaced as a whole in one transaction.';
COMMENT ON COLUMN document_chunks.embedding IS 'Vector of embedding_model''s dimension; indexed per model (see embedding_models).';
COMMENT ON COLUMN document_chunks.byte_start IS 'Byte range of the chunk in the extracted text.';

CREATE INDEX document_chunks_search_idx ON document_chunks USING gin (search_vector);
CREATE INDEX document_chunks_user_idx ON document_chunks (user_id, document_id);

ALTER TABLE document_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE document_chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY document_chunks_owner ON document_chunks
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

GRANT SELECT, INSERT, UPDATE, DELETE ON document_chunks TO ragpipe_app;
GRANT SELECT ON embedding_models TO ragpipe_app;
