-- Keys between user tables include user_id, the column the schema is distributed by on Citus
-- (ARCHITECTURE.md, "Sharding path (Citus)"): there a foreign key between distributed tables
-- must include the distribution column on both sides, and a unique index must include it, since
-- each is checked inside one shard. On one PostgreSQL the same keys say what the other child
-- tables already say: a row never hangs under another user's row.
--
-- What is left for the cut-over (primary keys on id alone, globally unique emails, key hashes
-- and usage keys) is listed there with the reason it waits; the schema test
-- `keys_between_user_tables_include_user_id` holds the list.

-- A request's previous request is the same user's request. The chain's key was on id alone,
-- the one foreign key between user tables without user_id. Deleting a request still only
-- unlinks its successor: SET NULL names the one column, so user_id stays.
ALTER TABLE agent_requests ADD CONSTRAINT agent_requests_id_user_id_key UNIQUE (id, user_id);
ALTER TABLE agent_requests DROP CONSTRAINT agent_requests_previous_request_id_fkey;
ALTER TABLE agent_requests ADD CONSTRAINT agent_requests_previous_request_fkey
    FOREIGN KEY (previous_request_id, user_id) REFERENCES agent_requests (id, user_id)
    ON DELETE SET NULL (previous_request_id);

-- One request per answer. The answer is the same user's message (its foreign key includes
-- user_id), so adding user_id allows nothing new; lookups by the message still use the index.
DROP INDEX agent_requests_assistant_message_key;
CREATE UNIQUE INDEX agent_requests_assistant_message_key ON agent_requests (assistant_message_id, user_id);

-- One session per conversation, keyed with its owner as well. The key on conversation_id alone
-- stays until the cut-over: released binaries name it in `ON CONFLICT (conversation_id)`, and a
-- fleet upgraded one process at a time runs them against this schema. This release's statement
-- names the new key.
ALTER TABLE agent_sessions
    ADD CONSTRAINT agent_sessions_conversation_id_user_id_key UNIQUE (conversation_id, user_id);
