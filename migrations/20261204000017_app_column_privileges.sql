-- Least privilege for the application role: it may write only the columns some path of ragpipe
-- writes, and delete only where a path deletes.
--
-- Why: the earlier migrations granted `SELECT, INSERT, UPDATE, DELETE` on whole tables, and
-- row-level security bounds which rows a user transaction reaches, not which columns. So a
-- user's own transaction could run `UPDATE users SET plan = 'enterprise'` (or rewrite its
-- messages' roles, its documents' owners and sizes, its requests' costs): one injection or bug
-- in any route would have let a user upgrade themselves. Privileges now say what the code does,
-- and anything else is refused with `permission denied` (42501) before a row is looked at.
--
-- How the lists were made: every INSERT, UPDATE and DELETE run as ragpipe_app (crates/store,
-- the ingest and agent workers through store::UserTx, the statistics triggers of
-- `..._search_term_stats.sql` and `..._search_postings_table.sql`, which run as the writing
-- role, and apalis' job insert). `crates/store/tests/privileges.rs` compares the role's actual
-- privileges on every table of `public` and `apalis` with an allow-list, so a new column or
-- path has to be granted here (in a new migration) on purpose.
--
-- Revoking a table-wide privilege also revokes it on every column; the column grants follow.
-- SELECT stays table-wide: reads are bounded by the policies, and UPDATE ... WHERE and
-- RETURNING need it. Deletes that cascade from `documents` (blobs, chunks) run as the table
-- owner, as foreign-key actions always do, and need no privilege of the app role.
-- `embedding_cache` and `usage_events` are left to their own migrations.

REVOKE INSERT, UPDATE, DELETE ON users, api_keys, documents, document_blobs, document_chunks,
    copilot_conversations, copilot_messages, agent_sessions, agent_requests,
    search_term_stats, search_corpus_stats FROM ragpipe_app;

-- users: created by store::users::create acting as the new user; nothing deletes one, and
-- nothing updates one as that user (plan and subscription are the operator's). But an upload
-- locks its user's row (`SELECT ... FOR NO KEY UPDATE`, store::quotas::check_upload) so that two
-- uploads are checked against the storage budget one after the other, and a row lock needs
-- UPDATE on at least one column: display_name, the one column a user may own outright.
GRANT INSERT (id, email, display_name, plan) ON users TO ragpipe_app;
GRANT UPDATE (display_name) ON users TO ragpipe_app;

-- api_keys: created by `ragpipe keys create`; authentication records the last use. Revoking a
-- key (revoked_at) is the operator's.
GRANT INSERT (user_id, name, prefix, key_sha256) ON api_keys TO ragpipe_app;
GRANT UPDATE (last_used_at) ON api_keys TO ragpipe_app;

-- documents: an upload inserts what it knows (store::documents::create); the pipeline and
-- reprocessing move its state (documents::set_stage and fail, chunks::replace and reembed,
-- reprocess::mark and fail); the owner deletes it. Its identity (id, user_id), what was
-- uploaded (filename, content_type, byte_size, sha256, metadata) and created_at never change.
GRANT INSERT (id, user_id, filename, content_type, byte_size, sha256, metadata) ON documents TO ragpipe_app;
GRANT UPDATE (status, progress, error, attempts, title, language, page_count, chunk_count, failed_pages,
              embedding_model, chunk_max_tokens, chunk_overlap_tokens, tokenizer, extractor_version,
              reprocess, last_reprocess_run, updated_at, ready_at)
    ON documents TO ragpipe_app;
GRANT DELETE ON documents TO ragpipe_app;

-- document_blobs: written once with the upload, gone with the document.
GRANT INSERT (document_id, user_id, bytes) ON document_blobs TO ragpipe_app;

-- document_chunks: a chunk set is inserted whole after deleting the previous one
-- (chunks::replace); re-embedding replaces only the vectors (chunks::reembed).
GRANT INSERT (document_id, user_id, chunk_index, content, token_count, page_first, page_last, heading_path,
              byte_start, byte_end, embedding, embedding_model)
    ON document_chunks TO ragpipe_app;
GRANT UPDATE (embedding, embedding_model) ON document_chunks TO ragpipe_app;
GRANT DELETE ON document_chunks TO ragpipe_app;

-- copilot_conversations: created with a title; a question locks it (FOR UPDATE), sets the title
-- if it has none and touches updated_at (store::conversations::create and ask).
GRANT INSERT (id, user_id, title) ON copilot_conversations TO ragpipe_app;
GRANT UPDATE (title, updated_at) ON copilot_conversations TO ragpipe_app;

-- copilot_messages: a question inserts its two messages; the agent streams into the answer and
-- ends it (append, complete, fail, give_up, cancel, settle_cancelled). Who wrote a message
-- (role), where it belongs and when it was created never change.
GRANT INSERT (id, conversation_id, user_id, role, content, status, model) ON copilot_messages TO ragpipe_app;
GRANT UPDATE (content, status, citations, model, prompt_tokens, completion_tokens, error, updated_at,
              completed_at)
    ON copilot_messages TO ragpipe_app;

-- agent_sessions: created by the first question with the model; each question moves the head
-- of the request chain. Retrieval settings and context state are not the user's to write.
GRANT INSERT (id, user_id, conversation_id, model) ON agent_sessions TO ragpipe_app;
GRANT UPDATE (last_request_id, updated_at) ON agent_sessions TO ragpipe_app;

-- agent_requests: a question inserts its request; the agent worker records its progress, what
-- it retrieved, its tokens and cost, and how it ended.
GRANT INSERT (id, user_id, session_id, conversation_id, user_message_id, assistant_message_id,
              previous_request_id, retrieval)
    ON agent_requests TO ragpipe_app;
GRANT UPDATE (status, progress, results, prompt_tokens, completion_tokens, cost, error, started_at,
              finished_at)
    ON agent_requests TO ragpipe_app;

-- Search statistics, written only by ragpipe_search_stats_apply (called by the chunk
-- triggers, as the writing role): counts are upserted and decremented, rows are never deleted
-- (a count of zero means absent). search_postings keeps its `SELECT, INSERT, DELETE`: the
-- triggers insert and remove whole rows.
GRANT INSERT (user_id, lexeme, chunks) ON search_term_stats TO ragpipe_app;
GRANT UPDATE (chunks) ON search_term_stats TO ragpipe_app;
GRANT INSERT (user_id, chunks, tokens) ON search_corpus_stats TO ragpipe_app;
GRANT UPDATE (chunks, tokens) ON search_corpus_stats TO ragpipe_app;

-- The job queue. Migration `..._queue_grants.sql` granted SELECT, INSERT and UPDATE on every
-- table of schema `apalis`, which included apalis' own migration records and its workers. The
-- app role inserts jobs with the rows they are about (store::jobs::enqueue, apalis'
-- push_tasks) and reads the queue for /metrics (store::stats); workers poll and update jobs
-- through the pool's own role, not this one.
REVOKE ALL ON apalis._sqlx_migrations FROM ragpipe_app;
REVOKE INSERT, UPDATE ON apalis.jobs, apalis.workers FROM ragpipe_app;
GRANT INSERT (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
    ON apalis.jobs TO ragpipe_app;
