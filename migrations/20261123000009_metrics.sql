-- Documents by status across all users, for the Prometheus endpoint.
--
-- `documents` is user data under forced row-level security: every role, the table owner
-- included, sees only the acting user's rows. /metrics needs the service-wide count per status
-- and nothing else, so that is all this migration exposes: one function returning
-- (status, count) rows, never a document, id or user.
--
-- Why a dedicated role owns the function: a SECURITY DEFINER function runs as its owner, and
-- forced RLS applies to the owner too. Owned by whoever ran the migrations it would count all
-- rows only where that role happens to be a superuser or BYPASSRLS (as in development and
-- tests) and silently count nothing elsewhere. So the function belongs to `ragpipe_metrics`, a
-- NOLOGIN role that can read one column of `documents` (`status`) through one policy of its
-- own; nobody logs in as it or is granted it but the migrating role, which needs membership
-- only to hand the function over.

-- Roles are cluster-wide while migrations run per database (tests migrate many databases at
-- once): a race creating or granting the role is harmless, as in the first migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_metrics') THEN
        BEGIN
            CREATE ROLE ragpipe_metrics NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- ALTER ... OWNER TO below needs membership (superusers need no grant).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'ragpipe_metrics', 'MEMBER') THEN
        EXECUTE format('GRANT ragpipe_metrics TO %I', current_user);
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- "tuple concurrently updated" from a parallel migration of another database.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_metrics') THEN
        RAISE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO ragpipe_metrics;
-- One column: the role can count documents by status and read nothing else of them.
GRANT SELECT (status) ON documents TO ragpipe_metrics;
-- Policies are permissive and OR-ed: acting as this role, every row is visible (to the column
-- above). A policy applies to the role's members too, and the migrating role may be one (see
-- above), so the policy also checks that the role in force is ragpipe_metrics itself: inside
-- the function, not in a session of a member. ragpipe_app is not a member at all.
CREATE POLICY documents_status_metrics ON documents FOR SELECT TO ragpipe_metrics
    USING (current_user = 'ragpipe_metrics');

CREATE FUNCTION ragpipe_document_status_counts()
    RETURNS TABLE (status text, documents bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    -- A SECURITY DEFINER function must not resolve names through the caller's search_path.
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT d.status, count(*) FROM public.documents AS d GROUP BY d.status $$;

COMMENT ON FUNCTION ragpipe_document_status_counts() IS
    'Documents per status across all users (aggregates only), for GET /metrics. Runs as ragpipe_metrics.';

-- Who may call it: only ragpipe_app. The metrics endpoint reads as ragpipe_app with no acting
-- user, like every other query ragpipe runs (store::stats), rather than straight from the pool:
-- the pool's login role differs between deployments (superuser, schema owner, a managed
-- service's role) and so cannot be named here, while every deployment can SET ROLE ragpipe_app.
-- A user transaction could call it too; it would learn service-wide counts per status, nothing
-- about any document.
REVOKE ALL ON FUNCTION ragpipe_document_status_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpipe_document_status_counts() TO ragpipe_app;

-- Hand the function to ragpipe_metrics. A non-superuser may do so only when the new owner could
-- have created it (CREATE on the schema), so that privilege is lent for the one statement.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION ragpipe_document_status_counts() OWNER TO ragpipe_metrics;
    ELSE
        GRANT CREATE ON SCHEMA public TO ragpipe_metrics;
        ALTER FUNCTION ragpipe_document_status_counts() OWNER TO ragpipe_metrics;
        REVOKE CREATE ON SCHEMA public FROM ragpipe_metrics;
    END IF;
END
$$;
