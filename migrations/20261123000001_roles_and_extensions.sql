-- Extensions, the application role and the acting-user function every policy uses.
--
-- Security model (DESIGN.md): the pool may connect as a superuser or as the schema owner, but
-- every request and job runs its SQL inside a transaction that does `SET LOCAL ROLE
-- ragpipe_app` and sets `ragpipe.user_id` with set_config(..., true). ragpipe_app is a plain
-- NOLOGIN role without BYPASSRLS, so the row-level security policies below always apply.

CREATE EXTENSION IF NOT EXISTS vector;

-- Roles are cluster-wide while migrations run per database, and tests migrate many databases
-- at once: creating or granting the role can race with another database's migration, which is
-- harmless (the role exists either way), so those races are swallowed here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_app') THEN
        BEGIN
            CREATE ROLE ragpipe_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- The connecting role must be a member to SET ROLE (superusers need no grant).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'ragpipe_app', 'MEMBER') THEN
        EXECUTE format('GRANT ragpipe_app TO %I', current_user);
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- "tuple concurrently updated" from a parallel migration of another database.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_app') THEN
        RAISE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO ragpipe_app;

-- The acting user of the current transaction, or NULL when none is set (then every policy
-- hides every row).
CREATE FUNCTION ragpipe_current_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('ragpipe.user_id', true), '')::uuid $$;

COMMENT ON FUNCTION ragpipe_current_user_id() IS
    'The user id set by store::UserTx with set_config(''ragpipe.user_id'', ..., true); NULL outside one.';
