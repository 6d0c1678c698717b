-- Hybrid search in one statement: the vector leg (HNSW), the text leg (BM25 over term
-- statistics), fused with weighted Reciprocal Rank Fusion. Runs as ragpipe_app in a UserTx, so
-- row-level security scopes every read of user data to the acting user.
--
-- The placeholder in vector_leg below is replaced before the statement is prepared
-- (store::search) by one leg per embedding model searched (vector_leg.sql; two while chunks
-- move from one model to another, each ranked by its own model): the partial HNSW index of a
-- model is used only when the query repeats its expression and predicate exactly, with the
-- model as a literal.
--
--  $1 query text            $2 query vectors, one per leg, in leg order
--  $3 fused rows returned (3k: store::search keeps the first k distinct passages of them)
--  $4 vector leg depth      $5 text leg depth (0 turns a leg off)
--  $6 document ids (NULL: all)                 $7 metadata containment (NULL: any)
--  $8 vector weight  $9 vector RRF k  $10 text weight  $11 text RRF k
--  $12 BM25 k1  $13 BM25 b  $14 postings budget  $15 postings per term  $16 rescored candidates
--  $17 hnsw.ef_search  $18 highlight
--  $19 most chunks a filter may keep for the vector legs to compute every distance exactly

WITH
-- The documents searched; NULL when there is no filter (the common case costs nothing), and
-- whether the vector legs compute the distance of each of their chunks exactly (a filter that
-- keeps at most $19 chunks) instead of reading the HNSW index. The index finds the nearest
-- chunks of the whole corpus and drops those outside the filter as it goes, so a filter that
-- keeps a few documents out of thousands makes it walk most of the graph (hundreds of ms);
-- computing a few thousand distances takes a few.
scope AS MATERIALIZED (
    SELECT f.ids,
           f.ids IS NOT NULL
               AND (SELECT coalesce(sum(d.chunk_count), 0) FROM documents AS d WHERE d.id = ANY (f.ids)) <= $19
               AS exact
    FROM (SELECT CASE WHEN $6::uuid[] IS NULL AND $7::jsonb IS NULL THEN NULL
                      -- by primary key: a generic plan cannot use the index under `$6 IS NULL OR`
                      WHEN $6::uuid[] IS NOT NULL
                      THEN ARRAY(SELECT d.id FROM documents AS d
                                 WHERE d.id = ANY ($6::uuid[])
                                   AND ($7::jsonb IS NULL OR d.metadata @> $7::jsonb))
                      ELSE ARRAY(SELECT d.id FROM documents AS d WHERE d.metadata @> $7::jsonb)
                 END AS ids
          -- computed once: without it the subquery is pulled up, and each use of f.ids below
          -- evaluates the ARRAY(...) again
          OFFSET 0) AS f
),

-- The query vectors. Each is read through a scalar subquery (an InitPlan), which PostgreSQL
-- evaluates when the index scan computes its ORDER BY argument, before pgvector reads its
-- settings at the first tuple: so the settings below apply to this statement's scans without a
-- round trip of their own, and end with the transaction (set_config(..., true)).
--   hnsw.iterative_scan: row-level security and the document filters drop rows after the index
--   returns them; without an iterative scan a user owning 1% of the chunks would get ~1% of
--   ef_search candidates (often none). relaxed_order keeps scanning until enough rows pass; the
--   leg is re-sorted by distance below.
--   hnsw.ef_search: at least the leg's depth, or the index cannot return that many.
probe AS MATERIALIZED (
    SELECT $2::vector[] AS v,
           set_config('hnsw.iterative_scan', 'relaxed_order', true) AS iterative_scan,
           set_config('hnsw.ef_search', $17::text, true) AS ef_search
),
vector_leg AS (
{vector_legs}
),

-- The text leg. Any query term may match (natural questions rarely contain every term), and
-- each term weighs by its rarity among the user's chunks (BM25).
corpus AS (
    SELECT greatest(s.chunks, 1)::float8 AS n,
           greatest(s.tokens::float8 / greatest(s.chunks, 1), 1) AS avg_tokens
    FROM search_corpus_stats AS s
    WHERE s.user_id = ragpipe_current_user_id() AND $5 > 0
),
terms AS (
    SELECT t.lexeme COLLATE "C" AS lexeme, t.df,
           ln(1 + (c.n - t.df + 0.5) / (t.df + 0.5)) AS idf,
           -- One lexeme as a tsquery, quoted so that any lexeme ("c++", "it's", "a:b") stays one
           -- (for the highlight).
           ('''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || '''')::tsquery AS query,
           -- Candidates come from the rarest terms, as long as their postings together stay
           -- within the budget (the rarest always, up to $15 of its postings). Common terms
           -- still count in the score of every candidate; they only do not bring in candidates
           -- of their own, which at 100,000 chunks would mean reading and aggregating tens of
           -- thousands of postings for little idf.
           (sum(t.df) OVER (ORDER BY t.df, t.lexeme) <= $14
            OR row_number() OVER (ORDER BY t.df, t.lexeme) = 1) AS generates
    FROM corpus AS c,
         (SELECT s.lexeme, s.chunks AS df
          FROM search_term_stats AS s
          WHERE s.user_id = ragpipe_current_user_id()
            AND s.lexeme = ANY (tsvector_to_array(to_tsvector('english', $1)))
            AND s.chunks > 0) AS t
),
-- The chunks of the searched documents, read only when there is a filter.
scope_chunks AS MATERIALIZED (
    SELECT c.id FROM document_chunks AS c
    WHERE (SELECT ids FROM scope) IS NOT NULL AND c.document_id = ANY ((SELECT ids FROM scope)::uuid[])
),
-- Under a selective filter (the scope the vector legs score exactly), the runs of consecutive
-- ids those chunks form: a chunk set is written by one statement, so a document's chunks are
-- mostly one run. The text leg then reads, for each term, only the blocks that overlap a run.
scope_runs AS MATERIALIZED (
    SELECT min(r.id) AS low, max(r.id) AS high
    FROM (SELECT s.id, s.id - row_number() OVER (ORDER BY s.id) AS run
          FROM scope_chunks AS s
          WHERE (SELECT exact FROM scope)) AS r
    GROUP BY r.run
),
-- First pass, over the generating terms' postings alone (search_blocks: a term's postings are
-- its blocks in key order, each unnested at once, carrying the term frequency and the chunk
-- length; no chunk row is read): their exact BM25 share. One of two branches runs:
prescored AS (
    SELECT p.chunk_id,
           sum(t.idf * p.tf * ($12 + 1)
               / (p.tf + $12 * (1 - $13 + $13 * p.token_count / (SELECT avg_tokens FROM corpus)))) AS score
    FROM terms AS t
    CROSS JOIN LATERAL (
        -- no filter, or a broad one: the term's postings in key order, the filter tested on
        -- each, up to $15 kept;
        (SELECT b.first_chunk + u.o AS chunk_id, u.s >> 22 AS tf, u.s & 4194303 AS token_count
         FROM search_blocks AS b, unnest(b.offsets, b.stats) AS u(o, s)
         WHERE NOT (SELECT exact FROM scope)
           AND b.lexeme = t.lexeme
           AND ((SELECT ids FROM scope) IS NULL OR b.first_chunk + u.o IN (SELECT id FROM scope_chunks))
         LIMIT $15)
        UNION ALL
        -- or a selective filter: every term's postings within the runs, from the blocks that
        -- overlap each run (the one whose base is at or below its first id, and those based
        -- inside it). Scanning a frequent term's postings for the few in the filter read every
        -- block of the term (3,313 blocks for 126 postings at 500,000 chunks: 130 ms).
        SELECT b.first_chunk + u.o, u.s >> 22, u.s & 4194303
        FROM scope_runs AS r
        CROSS JOIN LATERAL (
            SELECT coalesce((SELECT f.first_chunk FROM search_blocks AS f
                             WHERE f.lexeme = t.lexeme AND f.first_chunk <= r.low
                             ORDER BY f.first_chunk DESC
                             LIMIT 1),
                            r.low) AS first_block
            -- each kept a subquery of its own (here and below), so that the range scan's
            -- bounds are plain values and both go into its key condition
            OFFSET 0
        ) AS lo
        CROSS JOIN LATERAL (
            SELECT b.first_chunk, b.offsets, b.stats
            FROM search_blocks AS b
            WHERE b.lexeme = t.lexeme AND b.first_chunk BETWEEN lo.first_block AND r.high
            OFFSET 0
        ) AS b,
        unnest(b.offsets, b.stats) AS u(o, s)
        WHERE b.first_chunk + u.o BETWEEN r.low AND r.high
    ) AS p
    -- Within a selective filter every term generates: its postings there are few, and the
    -- score is BM25 over every query term.
    WHERE t.generates OR (SELECT exact FROM scope)
    GROUP BY p.chunk_id
    ORDER BY score DESC, p.chunk_id
    LIMIT $16
),
-- Second pass, on the best first-pass candidates: the other query terms' shares, one probe a
-- term and candidate (the block whose base is at or below the candidate's id, then its offsets
-- searched in C: ~5 us), so that the score is BM25 over every query term. Except a term in
-- more than half of the chunks: its idf is under ln 2 (a tenth of a rare term's), and at
-- 100,000 chunks its probes were a quarter of the text leg's time (BENCHMARKS.md, "Search").
-- It is still scored wherever it generates candidates, which below the budget is always.
candidates AS MATERIALIZED (
    SELECT array_agg(chunk_id ORDER BY chunk_id) AS ids FROM prescored
),
completed AS (
    SELECT q.chunk_id,
           sum(t.idf * q.tf * ($12 + 1)
               / (q.tf + $12 * (1 - $13 + $13 * q.token_count / (SELECT avg_tokens FROM corpus)))) AS score
    FROM terms AS t
    CROSS JOIN LATERAL (
        SELECT c.id AS chunk_id, b.stats[b.i] >> 22 AS tf, b.stats[b.i] & 4194303 AS token_count
        FROM unnest((SELECT ids FROM candidates)::bigint[]) AS c(id)
        CROSS JOIN LATERAL (
            SELECT b.stats,
                   CASE WHEN c.id - b.first_chunk < 2147483648
                        THEN array_position(b.offsets, (c.id - b.first_chunk)::integer) END AS i
            FROM search_blocks AS b
            WHERE b.lexeme = t.lexeme AND b.first_chunk <= c.id
            ORDER BY b.first_chunk DESC
            LIMIT 1
        ) AS b
        WHERE b.i IS NOT NULL
    ) AS q
    WHERE NOT (t.generates OR (SELECT exact FROM scope)) AND t.df <= (SELECT n FROM corpus) / 2
    GROUP BY q.chunk_id
),
text_leg AS (
    SELECT r.id, r.score, row_number() OVER (ORDER BY r.score DESC, r.id) AS rank
    FROM (
        SELECT p.chunk_id AS id, p.score + coalesce(c.score, 0) AS score
        FROM prescored AS p
        LEFT JOIN completed AS c USING (chunk_id)
        ORDER BY score DESC, id
        LIMIT $5
    ) AS r
),

-- Weighted Reciprocal Rank Fusion: a leg contributes weight / (k + rank) for each chunk it
-- ranked; a chunk ranked by both legs adds both.
fused AS (
    SELECT coalesce(v.id, t.id) AS id,
           coalesce($8 / ($9 + v.rank), 0) + coalesce($10 / ($11 + t.rank), 0) AS score,
           v.rank AS vector_rank, t.rank AS text_rank,
           1 - v.distance AS vector_similarity, t.score AS text_score
    FROM vector_leg AS v
    FULL JOIN text_leg AS t ON t.id = v.id
    ORDER BY score DESC, id
    LIMIT $3
)
SELECT f.id AS chunk_id, c.document_id, d.filename, c.chunk_index, c.page_first, c.page_last,
       c.heading_path, f.score, f.vector_rank, f.text_rank, f.vector_similarity, f.text_score,
       c.content,
       CASE WHEN $18 THEN ts_headline('english', c.content,
                 (SELECT string_agg(query::text, ' | ')::tsquery FROM terms),
                 'MaxFragments=2, MinWords=8, MaxWords=30, StartSel=**, StopSel=**')
       END AS highlight
FROM fused AS f
JOIN document_chunks AS c ON c.id = f.id
JOIN documents AS d ON d.id = c.document_id
ORDER BY f.score DESC, f.id
