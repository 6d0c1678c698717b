-- Copilot conversations and their messages.

CREATE TABLE copilot_conversations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, user_id)
);
COMMENT ON TABLE copilot_conversations IS 'A chat thread between a user and the agent.';
CREATE INDEX copilot_conversations_user_idx ON copilot_conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE copilot_messages (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id   uuid NOT NULL,
    user_id           uuid NOT NULL,
    role              text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content           text NOT NULL DEFAULT '',
    status            text NOT NULL DEFAULT 'complete'
                      CHECK (status IN ('streaming', 'complete', 'failed', 'cancelled')),
    citations         jsonb NOT NULL DEFAULT '[]',
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    UNIQUE (id, user_id),
    FOREIGN KEY (conversation_id, user_id) REFERENCES copilot_conversations (id, user_id) ON DELETE CASCADE,
    CHECK (role = 'assistant' OR status = 'complete'),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
COMMENT ON TABLE copilot_messages IS 'Messages of a conversation. An assistant answer is written while it streams.';
COMMENT ON COLUMN copilot_messages.content IS 'While streaming: the text so far, flushed at a bounded interval; its byte length is the resume point for SSE.';
COMMENT ON COLUMN copilot_messages.citations IS 'Sources the answer referenced: [{"n", "chunk_id", "document_id", "filename", "pages"}].';
CREATE INDEX copilot_messages_conversation_idx ON copilot_messages (conversation_id, created_at, id);

ALTER TABLE copilot_conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot_conversations FORCE ROW LEVEL SECURITY;
ALTER TABLE copilot_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY copilot_conversations_owner ON copilot_conversations
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));
CREATE POLICY copilot_messages_owner ON copilot_messages
    USING (user_id = (SELECT ragpipe_current_user_id()))
    WITH CHECK (user_id = (SELECT ragpipe_current_user_id()));

GRANT SELECT, INSERT, UPDATE, DELETE ON copilot_conversations, copilot_messages TO ragpipe_app;
