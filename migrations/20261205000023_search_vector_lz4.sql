-- A chunk's stored tsvector is compressed with lz4 instead of pglz. pglz gives up
-- on a value that does not shrink by a quarter, which a tsvector (sorted lexemes and their
-- positions) rarely does, so it was stored raw: about 4 kB a 300-word chunk, more than the
-- chunk's text. lz4 saves ~8% of it on the generated benchmark corpus and decompresses faster than pglz
-- (BENCHMARKS.md, "Storage"). The text stays with pglz, which shrinks prose as well or better.
-- Values written before this migration keep their compression until
-- they are rewritten; nothing else changes.
--
-- A server built without lz4 support keeps pglz: the migration says so and goes on.
DO $$
BEGIN
    ALTER TABLE document_chunks ALTER COLUMN search_vector SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 compression is not supported by this server; document_chunks keeps pglz';
END
$$;
