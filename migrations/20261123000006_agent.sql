-- The agent: one session per conversation and one request per question.

CREATE TABLE agent_sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL,
    conversation_id uuid NOT NULL UNIQUE,
    model           text,
    retrieval_mode  text NOT NULL DEFAULT 'hybrid' CHECK (retrieval_mode IN ('hybrid', 'vector', 'text')),
    k               integer NOT NULL DEFAULT 8 CHECK (k BETWEEN 1 AND 100),
    context_state   jsonb NOT NULL DEFAULT '{}',
    last_request_id uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, user_id),
    FOREIGN KEY (conversation_id, user_id) REFERENCES copilot_conversations (id, user_id) ON DELETE CASCADE
);
COMMENT ON TABLE agent_sessions IS 'The agent''s settings and state for one conversation.';
COMMENT ON COLUMN agent_sessions.context_state IS 'What the agent carries between turns (e.g. summarised history).';
COMMENT ON COLUMN agent_sessions.last_request_id IS 'Head of the chain of requests (each points at its previous_request_id).';

CREATE TABLE agent_requests (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              uuid NOT NULL,
    session_id           uuid NOT NULL,
    conversation_id      uuid NOT NULL,
    user_message_id      uuid NOT NULL,
    assistant_message_id uuid NOT NULL,
    previous_request_id  uuid REFERENCES agent_requests (id) ON DELETE SET NULL,
    agent_type           text NOT NULL DEFAULT 'rag_answer' CHECK (agent_type IN ('rag_answer')),
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    progress             real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    retrieval            jsonb NOT NULL DEFAULT '{}',
    results              jsonb NOT NULL DEFAULT '{}',
    prompt_tokens        integer,
    completion_tokens    integer,
    cost                 numeric(14, 8),
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    FOREIGN KEY (session_id, user_id) REFERENCES agent_sessions (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (conversation_id, user_id) REFERENCES copilot_conversations (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (user_message_id, user_id) REFERENCES copilot_messages (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (assistant_message_id, user_id) REFERENCES copilot_messages (id, user_id) ON DELETE CASCADE,
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
COMMENT ON TABLE agent_requests IS 'One question handled by the agent: what it retrieved, what it cost, how it ended.';
COMMENT ON COLUMN agent_requests.retrieval IS 'Retrieval settings used: {"mode", "k", "filters"}.';
COMMENT ON COLUMN agent_requests.results IS 'What the agent produced besides the message, e.g. the context chunk ids.';
CREATE INDEX agent_requests_conversation_idx ON agent_requests (conversation_id, created_at);
CREATE INDEX agent_requests_user_status_idx ON agent_requests (user_id, status, created_at DESC);
CREATE UNIQUE INDEX agent_requests_assistant_message_key ON agent_requests (assistant_message_id);

ALTER TABLE agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE agent_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY agent_sessions_owner ON agent_sessions
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY agent_requests_owner ON agent_requests
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

GRANT SELECT, INSERT, UPDATE, DELETE ON agent_sessions, agent_requests TO ragpipe_app;
