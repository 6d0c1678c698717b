-- Reranking: a cross-encoder call over a search's fused top N is a model call like the
-- others, billed by its tokens and requests, so usage events get a third kind.

ALTER TABLE usage_events DROP CONSTRAINT usage_events_kind_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_kind_check
    CHECK (kind IN ('embedding', 'chat', 'rerank'));
COMMENT ON COLUMN usage_events.kind IS 'embedding, chat or rerank (a /rerank call over a search''s fused top N).';
