    -- The vector leg of model {model} ({dim} dimensions), its query vector the {leg}th of $2.
    -- One of its two branches runs, as the scope says (the other's one-time filter is false):
    (SELECT n.id, n.distance, row_number() OVER (ORDER BY n.distance, n.id) AS rank
     FROM (
         -- through the model's partial HNSW index (no filter, or one that keeps many chunks);
         (SELECT c.id, c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe) AS distance
          FROM document_chunks AS c
          WHERE NOT (SELECT exact FROM scope)
            AND c.embedding_model = {model}
            AND ((SELECT ids FROM scope) IS NULL OR c.document_id = ANY ((SELECT ids FROM scope)::uuid[]))
          ORDER BY c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe)
          LIMIT $4)
         UNION ALL
         -- or exactly: every chunk of the few filtered documents, read by document (the
         -- `+ 0` keeps the planner from ordering through the index).
         (SELECT c.id, c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe) AS distance
          FROM document_chunks AS c
          WHERE (SELECT exact FROM scope)
            AND c.embedding_model = {model}
            AND c.document_id = ANY ((SELECT ids FROM scope)::uuid[])
          ORDER BY (c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe)) + 0, c.id
          LIMIT $4)
     ) AS n)
