-- Quotas: a monthly token budget and a storage budget per plan, overridable per user; and the
-- service-wide usage report.
--
-- The API checks them before it takes work on for a user (store::quotas): an upload is refused
-- with 413 when the user's stored documents plus its new bytes would exceed the storage
-- budget, and an upload or a question with 429 once the tokens of the current calendar month
-- (UTC) have reached the token budget. Tokens are prompt plus completion tokens of the user's
-- usage_events with origin 'user': an operator's reprocessing run is reported, never charged.
-- Everywhere below, a NULL budget means unlimited.

CREATE TABLE plans (
    name           text PRIMARY KEY,
    monthly_tokens bigint CHECK (monthly_tokens >= 0),
    storage_bytes  bigint CHECK (storage_bytes >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE plans IS 'Budgets of each billing plan (users.plan); changed with `ragpipe plans set`.';
COMMENT ON COLUMN plans.monthly_tokens IS 'Prompt + completion tokens a user may use per calendar month (UTC); NULL: unlimited.';
COMMENT ON COLUMN plans.storage_bytes IS 'Bytes of uploaded documents a user may keep; NULL: unlimited.';

-- Defaults a laptop demo, the test suite and a real free tier all live with: a free account
-- can embed a few hundred documents and ask a few hundred questions a month.
INSERT INTO plans (name, monthly_tokens, storage_bytes) VALUES
    ('free',         1000000,    104857600),  --   1 M tokens, 100 MiB
    ('pro',         20000000,  10737418240),  --  20 M tokens,  10 GiB
    ('team',       100000000, 107374182400),  -- 100 M tokens, 100 GiB
    ('enterprise',      NULL,         NULL);

-- Every plan a user can be on has a row, so a missing row can never read as "unlimited".
ALTER TABLE users ADD CONSTRAINT users_plan_fkey FOREIGN KEY (plan) REFERENCES plans (name);

-- Budgets are not user data: every user may read them (the API reports the caller's), nobody
-- but the schema owner changes them.
GRANT SELECT ON plans TO ragpipe_app;

-- Per-user overrides, one row per overridden budget: no row means the plan's budget, a row with
-- a NULL budget means unlimited for that user. A table of its own rather than columns on
-- `users`, because ragpipe_app may update its own `users` row and must never raise its own
-- budget: here it may only read.
CREATE TABLE user_quotas (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    quota      text NOT NULL CHECK (quota IN ('monthly_tokens', 'storage_bytes')),
    budget     bigint CHECK (budget >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, quota)
);
COMMENT ON TABLE user_quotas IS 'A user''s own budget where it differs from the plan''s; set with `ragpipe users quota`.';
COMMENT ON COLUMN user_quotas.budget IS 'Tokens per calendar month or bytes, as `quota` says; NULL: unlimited.';

ALTER TABLE user_quotas ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_quotas FORCE ROW LEVEL SECURITY;
-- Operators write overrides as the schema owner in a transaction that sets the user
-- (store::quotas::set_user_quota), so this policy bounds their writes too; ragpipe_app has no
-- write privilege at all.
CREATE POLICY user_quotas_owner ON user_quotas
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
GRANT SELECT ON user_quotas TO ragpipe_app;

-- No new index: the month's tokens are read through usage_events_user_created_idx (user_id,
-- created_at), the stored bytes through the user's rows of documents_user_created_idx.

-- The all-users report (`ragpipe usage` without --user): aggregates per UTC day, model, kind
-- and origin over [from_time, to_time), never a user id or an event. The report groups these
-- rows further exactly as it groups a user's own events (store::usage), so both say the same
-- thing about the same events.
--
-- As with ragpipe_document_status_counts() (migration ..._metrics.sql), forced RLS hides every
-- row from the table owner too, so the function belongs to ragpipe_metrics, which reads the
-- accounting columns of usage_events (not user_id, not the subjects) through a policy of its own
-- that holds only while that role itself is in force.
GRANT SELECT (created_at, kind, model, origin, requests, prompt_tokens, completion_tokens, cached_tokens, cost)
    ON usage_events TO ragpipe_metrics;
CREATE POLICY usage_events_metrics ON usage_events FOR SELECT TO ragpipe_metrics
    USING (current_user = 'ragpipe_metrics');

CREATE FUNCTION ragpipe_usage_by_day(from_time timestamptz, to_time timestamptz)
    RETURNS TABLE (
        day               date,
        model             text,
        kind              text,
        origin            text,
        events            bigint,
        requests          bigint,
        prompt_tokens     bigint,
        completion_tokens bigint,
        cached_tokens     bigint,
        cost              numeric
    )
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    -- A SECURITY DEFINER function must not resolve names through the caller's search_path.
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- Only the operator's read (ragpipe_app with no acting user, store::usage::report_all):
    -- a user's transaction learns nothing about other users' usage, not even in aggregate.
    IF public.ragpipe_current_user_id() IS NOT NULL THEN
        RAISE EXCEPTION 'the all-users usage report cannot be read in a user''s transaction'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY
        SELECT (e.created_at AT TIME ZONE 'UTC')::date, e.model, e.kind, e.origin,
               count(*), sum(e.requests)::bigint, sum(e.prompt_tokens)::bigint,
               sum(e.completion_tokens)::bigint, sum(e.cached_tokens)::bigint, sum(e.cost)
        FROM public.usage_events AS e
        WHERE e.created_at >= from_time AND e.created_at < to_time
        GROUP BY 1, 2, 3, 4;
END
$$;

COMMENT ON FUNCTION ragpipe_usage_by_day(timestamptz, timestamptz) IS
    'Usage across all users per UTC day, model, kind and origin (aggregates only), for `ragpipe usage`. Runs as ragpipe_metrics; refuses inside a user transaction.';

REVOKE ALL ON FUNCTION ragpipe_usage_by_day(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpipe_usage_by_day(timestamptz, timestamptz) TO ragpipe_app;

-- Hand the function to ragpipe_metrics (CREATE on the schema lent for the one statement, as in
-- the metrics migration; the migrating role is already a member of ragpipe_metrics).
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION ragpipe_usage_by_day(timestamptz, timestamptz) OWNER TO ragpipe_metrics;
    ELSE
        GRANT CREATE ON SCHEMA public TO ragpipe_metrics;
        ALTER FUNCTION ragpipe_usage_by_day(timestamptz, timestamptz) OWNER TO ragpipe_metrics;
        REVOKE CREATE ON SCHEMA public FROM ragpipe_metrics;
    END IF;
END
$$;
