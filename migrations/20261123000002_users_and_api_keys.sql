-- Users and their API keys.

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL,
    display_name        text,
    plan                text NOT NULL DEFAULT 'free'
                        CHECK (plan IN ('free', 'pro', 'team', 'enterprise')),
    subscription_status text NOT NULL DEFAULT 'none'
                        CHECK (subscription_status IN ('none', 'trialing', 'active', 'past_due', 'canceled')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (email LIKE '%_@_%')
);
COMMENT ON TABLE users IS 'Account owners; every other user-data row points here by user_id.';
COMMENT ON COLUMN users.plan IS 'Billing plan; quotas are looked up by plan.';

-- Emails compare case-insensitively.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text,
    prefix       text NOT NULL,
    key_sha256   bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
COMMENT ON TABLE api_keys IS 'Bearer keys. The key itself is shown once at creation; only its sha256 is kept.';
COMMENT ON COLUMN api_keys.prefix IS 'The first characters of the key, to tell keys apart in listings.';

CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;

-- A user sees and edits only their own row. Creating a user means acting as the new id.
CREATE POLICY users_owner ON users
    USING (id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (id = (SELECT ragpipe_current_user_id()));

CREATE POLICY api_keys_owner ON api_keys
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

-- Authentication happens before the user is known: a transaction that presents a key's hash in
-- `ragpipe.api_key_sha256` may read the one key row with that hash, and nothing else.
CREATE POLICY api_keys_by_presented_hash ON api_keys FOR SELECT
    USING (key_sha256 = decode(nullif(current_setting('ragpipe.api_key_sha256', true), ''), 'hex'));

GRANT SELECT, INSERT, UPDATE, DELETE ON users, api_keys TO ragpipe_app;
