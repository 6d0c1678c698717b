-- The GIN index on document_chunks.search_vector served no query: under row-level security
-- `tsvector @@ tsquery` is not leakproof, so a user's search could never use it, and the text
-- leg reads its own postings (search_postings) instead. It was written on every chunk insert
-- (about a fifth of the payload's size again on disk) and read by nothing: idx_scan stayed 0
-- after hundreds of searches. The column itself stays: the postings triggers read it.
DROP INDEX IF EXISTS document_chunks_search_idx;
