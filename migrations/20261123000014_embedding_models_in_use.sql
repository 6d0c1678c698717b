-- Which embedding models still have chunks, across all users, for search.
--
-- While a corpus moves from one embedding model to another, search ranks the chunks of every
-- model that has any (store::embedding_models::with_chunks). That question spans users, and
-- `document_chunks` is under forced row-level security, so outside a user's transaction no role
-- but a superuser sees a row of it. As for /metrics (migration `..._metrics.sql`), one function
-- owned by the NOLOGIN role `ragpipe_metrics` answers it and returns model names only: the role
-- may read one column of `document_chunks` (`embedding_model`), through a policy of its own that
-- holds only inside the function.

GRANT SELECT (embedding_model) ON document_chunks TO ragpipe_metrics;
GRANT SELECT ON embedding_models TO ragpipe_metrics;
CREATE POLICY document_chunks_model_metrics ON document_chunks FOR SELECT TO ragpipe_metrics
    USING (current_user = 'ragpipe_metrics');

-- One probe of the `embedding_model` index per recorded model.
CREATE FUNCTION ragpipe_embedding_models_in_use()
    RETURNS TABLE (model text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT m.model FROM public.embedding_models AS m
        WHERE EXISTS (SELECT 1 FROM public.document_chunks AS c WHERE c.embedding_model = m.model)
    $$;

COMMENT ON FUNCTION ragpipe_embedding_models_in_use() IS
    'Embedding models that have at least one chunk of any user (names only), for search during a model migration. Runs as ragpipe_metrics.';

REVOKE ALL ON FUNCTION ragpipe_embedding_models_in_use() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpipe_embedding_models_in_use() TO ragpipe_app;

-- Hand the function to ragpipe_metrics (see `..._metrics.sql` for why CREATE is lent).
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION ragpipe_embedding_models_in_use() OWNER TO ragpipe_metrics;
    ELSE
        GRANT CREATE ON SCHEMA public TO ragpipe_metrics;
        ALTER FUNCTION ragpipe_embedding_models_in_use() OWNER TO ragpipe_metrics;
        REVOKE CREATE ON SCHEMA public FROM ragpipe_metrics;
    END IF;
END
$$;
