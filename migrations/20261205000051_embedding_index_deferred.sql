-- A model's vector index may be left out while a whole corpus is re-embedded into it, and
-- built once when the run completes (`ragpipe reprocess`, BENCHMARKS.md "Reprocessing"):
-- inserting each vector into an HNSW graph one at a time costs several times a build.
-- `index_deferred_at` records that the index is missing on purpose, so that a process starting
-- meanwhile (`ragpipe migrate`, a worker) does not build it back while the vectors are still
-- being written. NULL: the index is kept as usual.
ALTER TABLE embedding_models ADD COLUMN index_deferred_at timestamptz;
COMMENT ON COLUMN embedding_models.index_deferred_at IS
    'When the model''s vector index was dropped for a bulk write of its vectors; NULL when the index is kept. The run that completes builds it and clears this.';
