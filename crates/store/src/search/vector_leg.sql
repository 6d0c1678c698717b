    -- The vector leg of model {model} ({dim} dimensions), its query vector the {leg}th of $2.
    (SELECT n.id, n.distance, row_number() OVER (ORDER BY n.distance, n.id) AS rank
     FROM (
         SELECT c.id, c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe) AS distance
         FROM document_chunks AS c
         WHERE c.embedding_model = {model}
           AND ((SELECT ids FROM scope) IS NULL OR c.document_id = ANY ((SELECT ids FROM scope)::uuid[]))
         ORDER BY c.embedding::vector({dim}) <=> (SELECT v[{leg}]::vector({dim}) FROM probe)
         LIMIT $4
     ) AS n)
