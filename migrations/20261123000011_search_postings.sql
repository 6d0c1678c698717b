-- The one read of document_chunks that cannot go through row-level security: which of the
-- acting user's chunks contain a lexeme, through the GIN index on search_vector.
--
-- Why: under row-level security PostgreSQL evaluates a query's own conditions after the
-- policy's, unless their functions are LEAKPROOF (so a function that raises errors cannot be
-- used to probe rows the policy hides). `tsvector @@ tsquery` is not leakproof, so in a user
-- transaction the planner may not use the GIN index for it: every text search becomes a
-- sequential scan of the user's chunks, detoasting each search_vector (~5 µs a row: half a
-- second at 100,000 chunks). Equality on uuid, text and bigint is leakproof, which is why the
-- statistics tables and primary-key reads of chunks stay fast under the policies.
--
-- So, as in the metrics migration, a dedicated NOLOGIN role owns a SECURITY DEFINER function
-- and has a policy of its own under which no security condition remains (the policy is the
-- constant true, which the planner folds away), so the index applies. The function itself
-- restricts to the acting user (ragpipe_current_user_id(), set by store::UserTx) and returns
-- only (term, chunk id, token count); the search query then reads the chunks by id as
-- ragpipe_app, under the usual policy, so a row of another user could not come back even if
-- this function were wrong.
--
-- The role's policy applies to its members as well. The migrating role has to be a member for a
-- moment to hand the function over (when it is not a superuser), so it gives the membership up
-- again at the end of this migration; ragpipe_app is never a member. Nobody logs in as the role.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_search') THEN
        BEGIN
            CREATE ROLE ragpipe_search NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- "tuple concurrently updated" from a parallel migration of another database.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_search') THEN
        RAISE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO ragpipe_search;
-- What the function reads, and nothing else (not the content, not the embedding).
GRANT SELECT (id, user_id, document_id, token_count, search_vector) ON document_chunks TO ragpipe_search;
CREATE POLICY document_chunks_search_postings ON document_chunks FOR SELECT TO ragpipe_search USING (true);

-- For each tsquery in `terms` (one lexeme each; position i in the array is `term` i), the ids
-- and token counts of the acting user's chunks that contain it, at most `per_term` of them,
-- restricted to `documents` unless that is NULL. A term beyond `per_term` matches returns an
-- arbitrary `per_term` of them: callers send only terms rare enough (see store::search).
CREATE FUNCTION ragpipe_search_postings(terms tsquery[], documents uuid[], per_term integer)
    RETURNS TABLE (term integer, chunk_id bigint, token_count integer)
    LANGUAGE sql STABLE SECURITY DEFINER
    -- A SECURITY DEFINER function must not resolve names through the caller's search_path.
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT t.term::integer, c.id, c.token_count
        FROM unnest(terms) WITH ORDINALITY AS t(query, term)
        CROSS JOIN LATERAL (
            SELECT c.id, c.token_count
            FROM public.document_chunks AS c
            WHERE c.search_vector @@ t.query
              AND c.user_id = public.ragpipe_current_user_id()
              AND (documents IS NULL OR c.document_id = ANY (documents))
            LIMIT per_term
        ) AS c
    $$;
COMMENT ON FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer) IS
    'The acting user''s chunks containing each term, through the GIN index (see migration ..._search_postings). Runs as ragpipe_search.';

REVOKE ALL ON FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer) TO ragpipe_app;

-- Hand the function to ragpipe_search. A non-superuser needs to be a member of the new owner,
-- and the new owner needs CREATE on the schema; both are lent for this statement only.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer) OWNER TO ragpipe_search;
    ELSE
        IF NOT pg_has_role(current_user, 'ragpipe_search', 'MEMBER') THEN
            EXECUTE format('GRANT ragpipe_search TO %I', current_user);
        END IF;
        GRANT CREATE ON SCHEMA public TO ragpipe_search;
        ALTER FUNCTION ragpipe_search_postings(tsquery[], uuid[], integer) OWNER TO ragpipe_search;
        REVOKE CREATE ON SCHEMA public FROM ragpipe_search;
        EXECUTE format('REVOKE ragpipe_search FROM %I', current_user);
    END IF;
END
$$;
