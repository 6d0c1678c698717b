-- Brings forward a database that applied an earlier text of migration
-- 20261202000015_search_postings_table.sql, which was edited in place after its release
-- (store::migrate, EDITED). Each statement is idempotent: it changes only what the earlier
-- text left different from the current one, so it is right after either earlier text.
--
-- f886ea7 created `search_postings.lexeme` in the database's default collation; fbfff0a
-- made it byte order (COLLATE "C"), which search's `COLLATE "C"` comparisons need to use the
-- primary key. Changing the collation rewrites no row; PostgreSQL rebuilds the primary key.
DO $$
BEGIN
    IF (SELECT attcollation FROM pg_attribute
        WHERE attrelid = 'search_postings'::regclass AND attname = 'lexeme')
       IS DISTINCT FROM 'pg_catalog."C"'::regcollation THEN
        ALTER TABLE search_postings ALTER COLUMN lexeme TYPE text COLLATE "C";
    END IF;
END
$$;

-- Both earlier texts lack d60a8d3's index on chunk_id, through which the trigger below
-- removes a chunk's postings.
CREATE INDEX IF NOT EXISTS search_postings_chunk_idx ON search_postings (chunk_id);

-- The statistics trigger's function as the current text defines it (removing postings by
-- chunk id instead of one primary-key probe per posting), verbatim.
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
    PERFORM ragpipe_search_stats_apply(tu, tl, td, cu, cc, ct);
    IF TG_OP <> 'INSERT' THEN
        -- By chunk, through search_postings_chunk_idx: a removed chunk's postings are one
        -- range of it (and, written by one statement, neighbours in the heap).
        EXECUTE format($q$
            DELETE FROM search_postings AS p
            WHERE p.chunk_id IN (SELECT c.id FROM (%s) AS c WHERE c.sign < 0)
        $q$, changed);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        -- tf: the lexeme's positions (a tsvector keeps up to 256 a lexeme; a lexeme without
        -- positions counts once).
        EXECUTE format($q$
            INSERT INTO search_postings (user_id, lexeme, chunk_id, tf, token_count)
            SELECT c.user_id, u.lexeme, c.id, greatest(cardinality(u.positions), 1), c.token_count
            FROM (%s) AS c, unnest(c.search_vector) AS u
            WHERE c.sign > 0
            ORDER BY c.user_id, u.lexeme, c.id
        $q$, changed);
    END IF;
    RETURN NULL;
END
$$;
