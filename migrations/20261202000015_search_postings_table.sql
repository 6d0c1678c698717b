-- The text leg's own inverted index: for each of a user's chunks and each lexeme in it, the
-- lexeme's frequency in the chunk and the chunk's length, in a B-tree keyed by
-- (user, lexeme, chunk). Replaces the postings function of migration `..._search_postings.sql`.
--
-- Why: the GIN index on document_chunks.search_vector says only which rows contain a lexeme.
-- BM25 needs, for each posting, the chunk id and length, and for each candidate the term
-- frequencies, so the text leg visited a heap row per posting (~5-12 us) and read each
-- rescored candidate's ~4 kB tsvector out of TOAST (~30-45 us): at 100,000 chunks that was
-- 6 + 5 ms a query, most of hybrid search's time (BENCHMARKS.md, "Where the text leg's time
-- goes"). Here one term's postings are one range of this index's leaf pages, read by an
-- index-only scan (the INCLUDE columns carry tf and length), and a candidate's frequency of
-- another term is one index probe: no chunk row is read until the fused top k.
--
-- Row-level security applies as to every user table; the key starts with user_id and uuid,
-- text and bigint equality are leakproof, so the policy's condition and the query's are index
-- conditions together (unlike `tsvector @@ tsquery`, which is why the function existed).
--
-- Maintained by the statistics trigger of document_chunks (redefined below), in the same
-- statement as the term statistics, so the postings, the statistics and the chunks always
-- agree. No foreign key, for the reason the statistics have none: a chunk-set write would check
-- a key for each of its thousands of postings.

CREATE TABLE search_postings (
    user_id     uuid NOT NULL,
    -- Byte order: search only ever asks for equality, and locale collation (strcoll) would
    -- be paid at every level of every probe. Search compares with COLLATE "C" to match.
    lexeme      text COLLATE "C" NOT NULL,
    chunk_id    bigint NOT NULL,
    tf          smallint NOT NULL CHECK (tf > 0),
    token_count integer NOT NULL CHECK (token_count >= 0),
    PRIMARY KEY (user_id, lexeme, chunk_id) INCLUDE (tf, token_count)
)
-- Index-only scans skip the heap only on pages the visibility map marks all-visible; vacuum
-- after every 2% of new rows rather than the default 20%, so a growing corpus keeps them so.
WITH (autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
-- For removing a chunk's postings. Probing the primary key once per removed posting instead
-- visits a random leaf of a large index each time: on a 20,000-chunk corpus (4.2 M postings)
-- the postings of 2,000 chunks took 5.8-8.2 s to delete that way and 1.7-1.9 s through this
-- index, which is small (28 MB there, against 267 MB for the primary key: B-tree
-- deduplication stores each chunk id once a leaf page) and is appended to at its right edge,
-- chunk ids only growing.
CREATE INDEX search_postings_chunk_idx ON search_postings (chunk_id);
COMMENT ON TABLE search_postings IS
    'Per user, lexeme (english text search config) and chunk: the lexeme''s frequency in the chunk (tf, positions in search_vector) and the chunk''s token_count, for BM25 without reading chunk rows. Maintained by triggers on document_chunks.';

ALTER TABLE search_postings ENABLE ROW LEVEL SECURITY;
CREATE POLICY search_postings_owner ON search_postings
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
GRANT SELECT, INSERT, DELETE ON search_postings TO ragpipe_app;

-- The statistics trigger of migration `..._search_term_stats.sql`, now also writing postings:
-- the chunks a statement removed lose theirs (before), the chunks it added gain theirs (after),
-- both under the per-user lock that ragpipe_search_stats_apply takes. An UPDATE that leaves the
-- text and length alone (a new embedding) changes nothing here, as before.
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

-- Backfill from the chunks already stored (row-level security lifted for this transaction
-- only, as in the statistics backfill).
ALTER TABLE document_chunks NO FORCE ROW LEVEL SECURITY;
INSERT INTO search_postings (user_id, lexeme, chunk_id, tf, token_count)
SELECT c.user_id, u.lexeme, c.id, greatest(cardinality(u.positions), 1), c.token_count
FROM document_chunks AS c, unnest(c.search_vector) AS u
ORDER BY 1, 2, 3;
ALTER TABLE document_chunks FORCE ROW LEVEL SECURITY;
ALTER TABLE search_postings FORCE ROW LEVEL SECURITY;

-- The postings function and what it needed are retired. Its owner is ragpipe_search; a
-- migrating role that is not a superuser becomes a member for this statement only (as when it
-- handed the function over). The role itself stays: roles are shared by every database on the
-- server, and another database may still be on the older schema.
DROP POLICY document_chunks_search_postings ON document_chunks;
REVOKE SELECT (id, user_id, document_id, token_count, search_vector) ON document_chunks FROM ragpipe_search;
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        DROP FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer);
    ELSE
        IF NOT pg_has_role(current_user, 'ragpipe_search', 'MEMBER') THEN
            EXECUTE format('GRANT ragpipe_search TO %I', current_user);
        END IF;
        DROP FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer);
        EXECUTE format('REVOKE ragpipe_search FROM %I', current_user);
    END IF;
END
$$;
REVOKE USAGE ON SCHEMA public FROM ragpipe_search;
