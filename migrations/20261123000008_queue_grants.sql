-- The job queue (apalis, schema `apalis`, set up by `ragpipe migrate` before these migrations)
-- is written in the same transaction as the rows a job is about: an upload inserts the document
-- and its ingest job together, as ragpipe_app. Jobs are not user data and have no policies.
GRANT USAGE ON SCHEMA apalis TO ragpipe_app;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA apalis TO ragpipe_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA apalis TO ragpipe_app;
