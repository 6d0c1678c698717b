-- The text leg's postings in blocks: one row per user, lexeme and run of up to 128 chunks,
-- instead of one row per user, lexeme and chunk.
--
-- Why: search_postings (migration `..._search_postings_table.sql`) cost about 140 bytes a
-- posting, almost all of it PostgreSQL's per-row and per-index-entry overhead (a 24-byte tuple
-- header, the user id and lexeme repeated in the heap and in the primary key): at 100,000
-- chunks 6.4 times the chunks' own text and vectors (BENCHMARKS.md, "Storage"). A block keeps
-- each posting in 8 bytes, in two parallel arrays:
--   offsets[i]  the chunk's id minus the block's base first_chunk (ascending, distinct);
--   stats[i]    the lexeme's frequency in the chunk and the chunk's length, packed as
--               tf << 22 | token_count (tf <= 256: a tsvector keeps at most 256 positions of a
--               lexeme; a length is stored up to 4,194,303 tokens, far past any chunk).
-- so BM25 still reads no chunk row, and its figures are unchanged (exact tf and length).
--
-- Reading: one term's postings are its blocks in key order, unnested (C, no per-posting
-- tuple); a candidate's frequency of another term is one index probe for the block whose base
-- is at or below the candidate's id, then array_position over at most 128 offsets.
--
-- Writing, by the statistics trigger of document_chunks (redefined below) under the per-user
-- lock that ragpipe_search_stats_apply takes, so blocks of one user never change in two
-- transactions at once:
--   the chunks a statement adds become new blocks after each lexeme's last, and a lexeme's
--   trailing partial blocks are merged, tiered (see the trigger), so that a posting is
--   rewritten a few times in all rather than with every later write (merging every write into
--   the last block instead left 14 times the payload in dead block versions after 500
--   documents were ingested one at a time);
--   a chunk removed is cut out of its block, and the blocks it was cut from are repacked with
--   those between them, so a deleted document leaves full blocks behind.
-- A block never spans a multiple of 2^30 in chunk ids, so every offset fits an integer.
-- ragpipe_search_blocks_compact(user) repacks every lexeme whose blocks are under half full.
--
-- search_postings becomes a view over the blocks with the same columns (as the caller, so
-- row-level security applies): ad-hoc queries and the consistency checks keep working, and a
-- search of the previous release still answers while a deployment rolls over.
--
-- The backfill takes a SHARE lock on document_chunks: searches go on reading throughout, and a
-- chunk write waits for the migration's commit instead of writing postings the backfill would
-- miss.

LOCK TABLE document_chunks IN SHARE MODE;

CREATE TABLE search_blocks (
    user_id     uuid NOT NULL,
    -- Byte order, as search_postings had: equality only, without locale collation.
    lexeme      text COLLATE "C" NOT NULL,
    first_chunk bigint NOT NULL,
    offsets     integer[] NOT NULL,
    stats       integer[] NOT NULL,
    PRIMARY KEY (user_id, lexeme, first_chunk),
    CHECK (cardinality(offsets) BETWEEN 1 AND 128 AND cardinality(stats) = cardinality(offsets))
)
-- Index-only reads are not used (the arrays are the payload), but vacuum should still keep up
-- with the tail blocks that every chunk-set write replaces.
WITH (autovacuum_vacuum_scale_factor = 0.05);
COMMENT ON TABLE search_blocks IS
    'The text leg''s inverted index: per user, lexeme (english text search config) and run of up to 128 chunks, the chunks (first_chunk + offsets[i]) and for each the lexeme''s frequency and the chunk''s token_count (stats[i] = tf << 22 | token_count). Maintained by triggers on document_chunks.';

ALTER TABLE search_blocks ENABLE ROW LEVEL SECURITY;
CREATE POLICY search_blocks_owner ON search_blocks
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
-- The triggers insert, replace and remove blocks, as the writing role.
GRANT SELECT, INSERT, DELETE ON search_blocks TO ragpipe_app;
GRANT UPDATE (offsets, stats) ON search_blocks TO ragpipe_app;

-- The statement that packs postings into blocks: runs of up to 128 of one user and lexeme,
-- never across a multiple of 2^30 in chunk ids, each based at its first chunk. `source` is a
-- query of (user_id, lexeme, chunk_id, stat); the result is the rows of
-- search_blocks, to insert. The trigger, the backfill and the compaction below execute it, so
-- there is one definition of a block, and a backfill of any size is one sort, not an array.
CREATE FUNCTION ragpipe_search_blocks_pack(source text) RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE
    RETURN format($q$
        SELECT b.user_id, b.lexeme, min(b.chunk_id) AS first_chunk,
               array_agg((b.chunk_id - b.base)::integer ORDER BY b.chunk_id) AS offsets,
               array_agg(b.stat ORDER BY b.chunk_id) AS stats
        FROM (
            SELECT n.*, min(n.chunk_id) OVER (PARTITION BY n.user_id, n.lexeme, n.span, n.block) AS base
            FROM (
                SELECT p.user_id, p.lexeme, p.chunk_id, p.stat, p.chunk_id >> 30 AS span,
                       (row_number() OVER (PARTITION BY p.user_id, p.lexeme, p.chunk_id >> 30
                                           ORDER BY p.chunk_id) - 1) / 128 AS block
                FROM (%s) AS p
            ) AS n
        ) AS b
        GROUP BY b.user_id, b.lexeme, b.span, b.block
        ORDER BY 1, 2, 3
    $q$, source);

-- A tsvector entry's posting statistic: tf (its positions; a lexeme without positions counts
-- once) and the chunk's length, packed.
CREATE FUNCTION ragpipe_search_posting_stat(positions smallint[], token_count integer) RETURNS integer
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE
    RETURN (least(greatest(cardinality(positions), 1), 511) << 22) | least(greatest(token_count, 0), 4194303);

-- The statistics trigger of migration `..._search_postings_table.sql`, now keeping blocks.
CREATE OR REPLACE FUNCTION ragpipe_search_stats_maintain() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    changed text;
    tu uuid[]; tl text[]; td integer[];
    cu uuid[]; cc bigint[]; ct bigint[];
BEGIN
    -- Each changed chunk as (id, user_id, search_vector, token_count, sign): +1 counted in,
    -- -1 out.
    IF TG_OP = 'INSERT' THEN
        changed := 'SELECT id, user_id, search_vector, token_count, 1 AS sign FROM new_chunks';
    ELSIF TG_OP = 'DELETE' THEN
        changed := 'SELECT id, user_id, search_vector, token_count, -1 AS sign FROM old_chunks';
    ELSE
        changed := 'SELECT x.* FROM new_chunks AS n JOIN old_chunks AS o USING (id), '
                   'LATERAL (VALUES (n.id, n.user_id, n.search_vector, n.token_count, 1), '
                   '                (o.id, o.user_id, o.search_vector, o.token_count, -1)) '
                   '        AS x(id, user_id, search_vector, token_count, sign) '
                   'WHERE (n.user_id, n.search_vector, n.token_count) '
                   '      IS DISTINCT FROM (o.user_id, o.search_vector, o.token_count)';
    END IF;
    EXECUTE format($q$
        WITH changed AS (%s),
        terms AS (
            SELECT c.user_id, l.lexeme, sum(c.sign)::integer AS delta
            FROM changed AS c, unnest(tsvector_to_array(c.search_vector)) AS l(lexeme)
            GROUP BY c.user_id, l.lexeme
            HAVING sum(c.sign) <> 0
            ORDER BY c.user_id, l.lexeme
        ),
        corpus AS (
            SELECT user_id, sum(sign)::bigint AS chunks, sum(sign * token_count)::bigint AS tokens
            FROM changed
            GROUP BY user_id
        )
        SELECT t.users, t.lexemes, t.deltas, c.users, c.chunks, c.tokens
        FROM (SELECT array_agg(user_id) AS users, array_agg(lexeme) AS lexemes, array_agg(delta) AS deltas
              FROM terms) AS t,
             (SELECT array_agg(user_id) AS users, array_agg(chunks) AS chunks, array_agg(tokens) AS tokens
              FROM corpus) AS c
    $q$, changed) INTO tu, tl, td, cu, cc, ct;
    -- cu is NULL exactly when no chunk changed.
    IF cu IS NULL THEN
        RETURN NULL;
    END IF;
    -- Takes the per-user locks under which the blocks below change.
    PERFORM ragpipe_search_stats_apply(tu, tl, td, cu, cc, ct);
    IF TG_OP <> 'INSERT' THEN
        -- The blocks holding the removed postings (each the one whose base is at or below the
        -- chunk id), and those between them, are deleted and what stays in them is packed
        -- again: removing a document's chunks leaves full blocks, not a trail of thinned ones.
        EXECUTE format($q$
            WITH gone AS (
                SELECT c.user_id, l.lexeme COLLATE "C" AS lexeme, c.id AS chunk_id
                FROM (%s) AS c, unnest(tsvector_to_array(c.search_vector)) AS l(lexeme)
                WHERE c.sign < 0
            ),
            hit AS (
                SELECT g.user_id, g.lexeme, min(b.first_chunk) AS low, max(b.first_chunk) AS high
                FROM gone AS g
                CROSS JOIN LATERAL (
                    SELECT b.first_chunk FROM search_blocks AS b
                    WHERE b.user_id = g.user_id AND b.lexeme = g.lexeme AND b.first_chunk <= g.chunk_id
                    ORDER BY b.first_chunk DESC
                    LIMIT 1
                ) AS b
                GROUP BY g.user_id, g.lexeme
            ),
            moved AS (
                DELETE FROM search_blocks AS b
                USING hit AS h
                WHERE b.user_id = h.user_id AND b.lexeme = h.lexeme AND b.first_chunk BETWEEN h.low AND h.high
                RETURNING b.user_id, b.lexeme, b.first_chunk, b.offsets, b.stats
            ),
            kept AS (
                SELECT m.user_id, m.lexeme, m.first_chunk + u.o AS chunk_id, u.s AS stat
                FROM moved AS m, unnest(m.offsets, m.stats) AS u(o, s)
                WHERE NOT EXISTS (
                    SELECT FROM gone AS g
                    WHERE (g.user_id, g.lexeme, g.chunk_id) = (m.user_id, m.lexeme, m.first_chunk + u.o)
                )
            )
            INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats)
            %s
        $q$, changed, ragpipe_search_blocks_pack('SELECT * FROM kept'));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        -- The added postings become blocks of their own, after the lexeme's last block: no
        -- existing block is rewritten. Only chunk ids that fall within or before existing
        -- blocks (ids not from the sequence's end, e.g. another writer's that committed later)
        -- take the blocks they fall into, and every later one, to be repacked with them, so
        -- that blocks never overlap.
        EXECUTE format($q$
            WITH fresh AS (
                SELECT c.user_id, u.lexeme COLLATE "C" AS lexeme, c.id AS chunk_id,
                       ragpipe_search_posting_stat(u.positions, c.token_count) AS stat
                FROM (%s) AS c, unnest(c.search_vector) AS u
                WHERE c.sign > 0
            ),
            lowest AS (
                SELECT f.user_id, f.lexeme, min(f.chunk_id) AS low FROM fresh AS f GROUP BY 1, 2
            ),
            region AS (
                SELECT l.user_id, l.lexeme, b.first_chunk
                FROM lowest AS l
                LEFT JOIN LATERAL (
                    SELECT b.first_chunk, b.offsets[cardinality(b.offsets)] AS last
                    FROM search_blocks AS b
                    WHERE b.user_id = l.user_id AND b.lexeme = l.lexeme AND b.first_chunk <= l.low
                    ORDER BY b.first_chunk DESC
                    LIMIT 1
                ) AS s ON true
                JOIN search_blocks AS b
                  ON b.user_id = l.user_id AND b.lexeme = l.lexeme
                 AND (s.first_chunk IS NULL OR b.first_chunk > s.first_chunk
                      OR (b.first_chunk = s.first_chunk AND s.first_chunk + s.last >= l.low))
            ),
            moved AS (
                DELETE FROM search_blocks AS b
                USING region AS r
                WHERE (b.user_id, b.lexeme, b.first_chunk) = (r.user_id, r.lexeme, r.first_chunk)
                RETURNING b.user_id, b.lexeme, b.first_chunk, b.offsets, b.stats
            ),
            merged AS (
                SELECT m.user_id, m.lexeme, m.first_chunk + u.o AS chunk_id, u.s AS stat
                FROM moved AS m, unnest(m.offsets, m.stats) AS u(o, s)
                UNION ALL
                SELECT f.user_id, f.lexeme, f.chunk_id, f.stat FROM fresh AS f
            )
            INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats)
            %s
        $q$, changed, ragpipe_search_blocks_pack('SELECT * FROM merged'));
        -- Then each added lexeme's trailing blocks that are not full are merged, tiered as in
        -- a log-structured merge: the oldest of them that is no larger than all the newer ones
        -- together, with every newer one, once that makes at least four blocks. Small blocks
        -- merge into larger ones and a large one waits for as much again, so a posting is
        -- rewritten about once per fourfold growth of its block (a few times in all, where
        -- merging into the last block rewrote it with every chunk-set write), and a lexeme
        -- keeps at most a few partial blocks per size. ragpipe_search_blocks_compact repacks
        -- what remains.
        EXECUTE format($q$
            WITH touched AS (
                SELECT DISTINCT c.user_id, u.lexeme COLLATE "C" AS lexeme
                FROM (%s) AS c, unnest(tsvector_to_array(c.search_vector)) AS u(lexeme)
                WHERE c.sign > 0
            ),
            tail_blocks AS (
                SELECT t.user_id, t.lexeme, b.first_chunk, b.n,
                       -- 1 for the last block, 2 for the one before, ...
                       row_number() OVER (PARTITION BY t.user_id, t.lexeme ORDER BY b.first_chunk DESC) AS age,
                       coalesce(sum(b.n) OVER (PARTITION BY t.user_id, t.lexeme ORDER BY b.first_chunk DESC
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS newer,
                       -- full blocks at or after this one
                       count(*) FILTER (WHERE b.n = 128)
                           OVER (PARTITION BY t.user_id, t.lexeme ORDER BY b.first_chunk DESC) AS full_since
                FROM touched AS t
                CROSS JOIN LATERAL (
                    SELECT b.first_chunk, cardinality(b.offsets) AS n
                    FROM search_blocks AS b
                    WHERE b.user_id = t.user_id AND b.lexeme = t.lexeme
                    ORDER BY b.first_chunk DESC
                    LIMIT 32
                ) AS b
            ),
            oldest AS (
                SELECT DISTINCT ON (user_id, lexeme) user_id, lexeme, first_chunk
                FROM tail_blocks
                WHERE full_since = 0 AND age >= 4 AND n <= newer
                ORDER BY user_id, lexeme, age DESC
            ),
            moved AS (
                DELETE FROM search_blocks AS b
                USING oldest AS o
                WHERE b.user_id = o.user_id AND b.lexeme = o.lexeme AND b.first_chunk >= o.first_chunk
                RETURNING b.user_id, b.lexeme, b.first_chunk, b.offsets, b.stats
            ),
            merged AS (
                SELECT m.user_id, m.lexeme, m.first_chunk + u.o AS chunk_id, u.s AS stat
                FROM moved AS m, unnest(m.offsets, m.stats) AS u(o, s)
            )
            INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats)
            %s
        $q$, changed, ragpipe_search_blocks_pack('SELECT * FROM merged'));
    END IF;
    RETURN NULL;
END
$$;

-- Repacks a user's blocks of every lexeme whose blocks are less than half full on average
-- (deletions and re-chunking thin them): fewer rows, the same postings. Takes the user's
-- statistics lock, as a chunk write does. Returns the blocks removed.
CREATE FUNCTION ragpipe_search_blocks_compact(acting uuid) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    removed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1920168820, hashtext(acting::text));
    EXECUTE format($q$
        WITH thin AS (
            SELECT b.lexeme
            FROM search_blocks AS b
            WHERE b.user_id = $1
            GROUP BY b.lexeme
            HAVING count(*) > 1 AND sum(cardinality(b.offsets)) * 2 < count(*) * 128
        ),
        moved AS (
            DELETE FROM search_blocks AS b
            USING thin AS t
            WHERE b.user_id = $1 AND b.lexeme = t.lexeme
            RETURNING b.user_id, b.lexeme, b.first_chunk, b.offsets, b.stats
        ),
        postings AS (
            SELECT m.user_id, m.lexeme, m.first_chunk + u.o AS chunk_id, u.s AS stat
            FROM moved AS m, unnest(m.offsets, m.stats) AS u(o, s)
        ),
        written AS (
            INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats)
            %s
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM moved) - (SELECT count(*) FROM written)
    $q$, ragpipe_search_blocks_pack('SELECT * FROM postings')) INTO removed USING acting;
    RETURN removed;
END
$$;

-- Rebuilds every block from the chunks (the backfill below; a bulk load that disabled the
-- triggers calls it too). As the table's owner: row-level security does not apply to it.
CREATE FUNCTION ragpipe_search_blocks_rebuild() RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM search_blocks;
    EXECUTE 'INSERT INTO search_blocks (user_id, lexeme, first_chunk, offsets, stats) '
        || ragpipe_search_blocks_pack(
               'SELECT c.user_id, u.lexeme COLLATE "C" AS lexeme, c.id AS chunk_id, '
               '       ragpipe_search_posting_stat(u.positions, c.token_count) AS stat '
               'FROM document_chunks AS c, unnest(c.search_vector) AS u');
END
$$;
REVOKE ALL ON FUNCTION ragpipe_search_blocks_rebuild() FROM PUBLIC;

-- Backfill from the chunks already stored (row-level security lifted for this transaction
-- only, as in the earlier backfills).
ALTER TABLE document_chunks NO FORCE ROW LEVEL SECURITY;
SELECT ragpipe_search_blocks_rebuild();
ALTER TABLE document_chunks FORCE ROW LEVEL SECURITY;
ALTER TABLE search_blocks FORCE ROW LEVEL SECURITY;

-- The postings table gives way to a view of the same columns over the blocks.
DROP TABLE search_postings;
CREATE VIEW search_postings WITH (security_invoker = true) AS
SELECT b.user_id, b.lexeme, b.first_chunk + u.o AS chunk_id,
       (u.s >> 22)::smallint AS tf, u.s & 4194303 AS token_count
FROM search_blocks AS b, unnest(b.offsets, b.stats) AS u(o, s);
COMMENT ON VIEW search_postings IS
    'The text leg''s postings, one row per user, lexeme and chunk, read from search_blocks.';
GRANT SELECT ON search_postings TO ragpipe_app;
