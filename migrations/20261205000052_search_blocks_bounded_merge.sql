-- The statistics trigger of migration `..._search_postings_in_blocks.sql`, with one change:
-- when a chunk-set write adds postings, the blocks it takes to repack with them (those its
-- lowest new chunk id falls into, and every later one) are found through the key, from the
-- block at or below that id, and computed before the blocks are deleted by key (MATERIALIZED:
-- otherwise the planner may start the delete from every block of the lexemes). Before, every
-- block of each added lexeme was read and the bound tested afterwards: at 1,000,000 chunks of one user, a 50-chunk document read 1,013,186 block
-- keys for its 5,385 lexemes and the trigger took 7.0 s of the write's 7.9 s (BENCHMARKS.md,
-- "A million chunks"). Blocks and postings are unchanged.
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
            region AS MATERIALIZED (
                SELECT l.user_id, l.lexeme, b.first_chunk
                FROM lowest AS l
                LEFT JOIN LATERAL (
                    SELECT b.first_chunk, b.offsets[cardinality(b.offsets)] AS last
                    FROM search_blocks AS b
                    WHERE b.user_id = l.user_id AND b.lexeme = l.lexeme AND b.first_chunk <= l.low
                    ORDER BY b.first_chunk DESC
                    LIMIT 1
                ) AS s ON true
                -- From that block on, through the key. The bound is a column of a subquery
                -- of its own: as an expression (coalesce) it is not leakproof, and under the
                -- table's row-level security PostgreSQL tests it after reading each block.
                CROSS JOIN LATERAL (
                    SELECT coalesce(s.first_chunk, -9223372036854775808) AS low_block
                    OFFSET 0
                ) AS f
                CROSS JOIN LATERAL (
                    SELECT b.first_chunk
                    FROM search_blocks AS b
                    WHERE b.user_id = l.user_id AND b.lexeme = l.lexeme AND b.first_chunk >= f.low_block
                    OFFSET 0
                ) AS b
                -- That block itself only when the new postings fall inside it.
                WHERE s.first_chunk IS NULL OR b.first_chunk > s.first_chunk
                      OR s.first_chunk + s.last >= l.low
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
