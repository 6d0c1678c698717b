-- What a document's text is missing although the document has it, so that a user can see why
-- search does not find part of it (instead of guessing).
--
-- One entry per kind, as the extractor reports it (ragpipe_ingest::ExtractWarning):
-- `[{"code": "undecodable_text_layer", "pages": [3, 4]}]` says that pages 3 and 4 draw their
-- text in fonts that map glyphs to no characters (old TeX bitmap fonts, unnamed Type 3
-- glyphs), so their words are not in the chunks. Written with each chunk set, like
-- `failed_pages`, and replaced whole when the document is reprocessed.
ALTER TABLE documents ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]'::jsonb;

COMMENT ON COLUMN documents.warnings IS
    'Extraction warnings of the current chunk set: [{"code": "undecodable_text_layer", "pages": [n, ...]}]';

-- The pipeline writes it with the chunk set (store::chunks::replace), as it writes failed_pages.
GRANT UPDATE (warnings) ON documents TO ragpipe_app;
