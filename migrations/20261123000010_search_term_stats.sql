-- Term statistics for the text leg of search (store::search): a BM25 score needs, per user, how
-- many chunks there are (N), their average length, and for each lexeme how many chunks contain
-- it (df). `ts_rank`/`ts_rank_cd` have no notion of term rarity, so an any-term query ranked by
-- them puts chunks full of common words first, and fusing that leg with the vector leg makes
-- hybrid search worse than vector search alone (shared/FACTS.md). With BM25's
-- idf = ln(1 + (N - df + 0.5) / (df + 0.5)) a rare identifier outweighs any number of "use"s.
--
-- Computing df at query time means reading every chunk of the user; so the statistics are kept
-- here, maintained by statement-level triggers on document_chunks (one aggregate per statement,
-- however many rows it wrote), and read by primary key when searching.

CREATE TABLE search_term_stats (
    user_id uuid NOT NULL,
    lexeme  text NOT NULL,
    chunks  integer NOT NULL CHECK (chunks >= 0),
    PRIMARY KEY (user_id, lexeme)
);
COMMENT ON TABLE search_term_stats IS
    'Per user and lexeme (english text search config): how many of the user''s chunks contain it (BM25 document frequency). Maintained by triggers on document_chunks.';

CREATE TABLE search_corpus_stats (
    user_id uuid PRIMARY KEY,
    chunks  bigint NOT NULL CHECK (chunks >= 0),
    tokens  bigint NOT NULL CHECK (tokens >= 0)
);
COMMENT ON TABLE search_corpus_stats IS
    'Per user: chunk count and total token_count, for BM25''s N and average chunk length. Maintained by triggers on document_chunks.';

-- No foreign key to users: a row exists exactly while the user has chunks containing the
-- lexeme, and deleting a user deletes their chunks, whose trigger removes these rows. (Checking
-- a key for each of the thousands of lexemes a chunk set adds would only cost time.)

-- Row-level security is enabled here and forced at the end of this file, after the backfill.
ALTER TABLE search_term_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE search_corpus_stats ENABLE ROW LEVEL SECURITY;
-- Lexemes reveal what a user's documents say: the same owner policy as the chunks themselves.
CREATE POLICY search_term_stats_owner ON search_term_stats
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY search_corpus_stats_owner ON search_corpus_stats
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
GRANT SELECT, INSERT, UPDATE, DELETE ON search_term_stats, search_corpus_stats TO ragpipe_app;

-- Applies signed changes to the statistics. Called by the triggers below with the changes of
-- one statement, already summed per (user, lexeme) and per user. Rows that fall to zero are
-- kept (a count of zero means absent; search skips them): deleting them would cost a second
-- pass over thousands of rows on every chunk-set write, for a few bytes per lexeme the user no
-- longer has. Counts never go below zero, so statistics that drifted (say after a TRUNCATE) can
-- never make a chunk write fail; they are rebuilt by
-- running this file's backfill statements again (after emptying both tables).
--
-- Concurrency: two transactions writing chunk sets of the same user update the same hot rows
-- (every chunk set contains "use", "data", ...). A replacement is a DELETE then an INSERT, two
-- passes over the rows, and two such transactions could each hold rows the other's second pass
-- needs: a deadlock. So each user's statistics are changed under a transaction-level advisory
-- lock, taken in user order: the first writer holds it to its commit and the next waits before
-- touching any row. Writes of one user's chunk sets therefore commit one at a time from their
-- first statistics change (for a fresh upload that is the end of its INSERT, so the wait is only
-- the rest of that transaction); different users never wait for each other.
CREATE FUNCTION ragpipe_search_stats_apply(
    term_users uuid[], term_lexemes text[], term_deltas integer[],
    corpus_users uuid[], corpus_chunks bigint[], corpus_tokens bigint[]
) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    acting uuid;
BEGIN
    FOR acting IN SELECT DISTINCT u FROM unnest(corpus_users) AS u ORDER BY u LOOP
        -- Key space 1920168820 ('rsst'): the two-int4 advisory keys of search statistics.
        PERFORM pg_advisory_xact_lock(1920168820, hashtext(acting::text));
    END LOOP;

    -- Chunks counted in (an INSERT statement has only these), in key order.
    INSERT INTO search_term_stats AS s (user_id, lexeme, chunks)
    SELECT d.user_id, d.lexeme, d.delta
    FROM unnest(term_users, term_lexemes, term_deltas) AS d(user_id, lexeme, delta)
    WHERE d.delta > 0
    ORDER BY d.user_id, d.lexeme
    ON CONFLICT (user_id, lexeme) DO UPDATE SET chunks = s.chunks + excluded.chunks;
    -- Chunks counted out (a DELETE statement has only these).
    UPDATE search_term_stats AS s SET chunks = greatest(s.chunks + d.delta, 0)
    FROM unnest(term_users, term_lexemes, term_deltas) AS d(user_id, lexeme, delta)
    WHERE d.delta < 0 AND s.user_id = d.user_id AND s.lexeme = d.lexeme;

    INSERT INTO search_corpus_stats AS s (user_id, chunks, tokens)
    SELECT d.user_id, d.chunks, greatest(d.tokens, 0)
    FROM unnest(corpus_users, corpus_chunks, corpus_tokens) AS d(user_id, chunks, tokens)
    WHERE d.chunks > 0 OR (d.chunks = 0 AND d.tokens > 0)
    ON CONFLICT (user_id) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, tokens = s.tokens + excluded.tokens;
    UPDATE search_corpus_stats AS s
    SET chunks = greatest(s.chunks + d.chunks, 0), tokens = greatest(s.tokens + d.tokens, 0)
    FROM unnest(corpus_users, corpus_chunks, corpus_tokens) AS d(user_id, chunks, tokens)
    WHERE (d.chunks < 0 OR (d.chunks = 0 AND d.tokens < 0)) AND s.user_id = d.user_id;
END
$$;

-- One trigger function for the three statements that change chunks. The transition tables
-- hold every row the statement wrote, so a chunk set of any size costs one aggregate. (TRUNCATE
-- is not followed: nothing in ragpipe truncates user data.)
CREATE FUNCTION ragpipe_search_stats_maintain() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    changed text;
    tu uuid[]; tl text[]; td integer[];
    cu uuid[]; cc bigint[]; ct bigint[];
BEGIN
    -- Each changed chunk as (user_id, search_vector, token_count, sign): +1 counted in, -1 out.
    IF TG_OP = 'INSERT' THEN
        changed := 'SELECT user_id, search_vector, token_count, 1 AS sign FROM new_chunks';
    ELSIF TG_OP = 'DELETE' THEN
        changed := 'SELECT user_id, search_vector, token_count, -1 AS sign FROM old_chunks';
    ELSE
        -- Most updates (a new embedding) leave the text alone and change nothing here.
        changed := 'SELECT x.* FROM new_chunks AS n JOIN old_chunks AS o USING (id), '
                   'LATERAL (VALUES (n.user_id, n.search_vector, n.token_count, 1), '
                   '                (o.user_id, o.search_vector, o.token_count, -1)) '
                   '        AS x(user_id, search_vector, token_count, sign) '
                   'WHERE (n.user_id, n.search_vector, n.token_count) '
                   '      IS DISTINCT FROM (o.user_id, o.search_vector, o.token_count)';
    END IF;
    -- Dynamic only to share the aggregate between the three cases; the transition tables are
    -- visible to it like to static SQL.
    EXECUTE format($q$
        WITH changed AS (%s),
        terms AS (
            SELECT c.user_id, l.lexeme, sum(c.sign)::integer AS delta
            FROM changed AS c, unnest(tsvector_to_array(c.search_vector)) AS l(lexeme)
            GROUP BY c.user_id, l.lexeme
            HAVING sum(c.sign) <> 0
            -- Key order, which the upsert keeps (see ragpipe_search_stats_apply).
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
    IF cu IS NOT NULL THEN
        PERFORM ragpipe_search_stats_apply(tu, tl, td, cu, cc, ct);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER document_chunks_search_stats_insert
    AFTER INSERT ON document_chunks REFERENCING NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION ragpipe_search_stats_maintain();
CREATE TRIGGER document_chunks_search_stats_delete
    AFTER DELETE ON document_chunks REFERENCING OLD TABLE AS old_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION ragpipe_search_stats_maintain();
CREATE TRIGGER document_chunks_search_stats_update
    AFTER UPDATE ON document_chunks REFERENCING OLD TABLE AS old_chunks NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION ragpipe_search_stats_maintain();

-- Backfill from the chunks already stored. Forced row-level security hides every row from the
-- table owner outside a user transaction, so, when migrating as the owner rather than a
-- superuser, it is lifted for this transaction only (DDL is transactional: no other session
-- ever sees it lifted) and the new tables are forced afterwards.
ALTER TABLE document_chunks NO FORCE ROW LEVEL SECURITY;
INSERT INTO search_term_stats (user_id, lexeme, chunks)
SELECT c.user_id, l.lexeme, count(*)
FROM document_chunks AS c, unnest(tsvector_to_array(c.search_vector)) AS l(lexeme)
GROUP BY c.user_id, l.lexeme;
INSERT INTO search_corpus_stats (user_id, chunks, tokens)
SELECT user_id, count(*), sum(token_count) FROM document_chunks GROUP BY user_id;
ALTER TABLE document_chunks FORCE ROW LEVEL SECURITY;
ALTER TABLE search_term_stats FORCE ROW LEVEL SECURITY;
ALTER TABLE search_corpus_stats FORCE ROW LEVEL SECURITY;
