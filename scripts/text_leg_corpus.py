"""Shared by the text-leg scripts (explain-text-leg.py, text-leg-known-item.py): the text-only
search statement prepared on a corpus that `ragpipe-bench search --keep` left, in a transaction
as ragpipe_app with the corpus's user and generic plans (as store::Store::search_tx does), and
queries made like the benchmark's (3 to 8 consecutive words of a random chunk)."""

from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SEARCH_SQL = ROOT / "crates/store/src/search/hybrid.sql"
NO_VECTOR_LEG = "    SELECT NULL::int8 AS id, NULL::float8 AS distance, NULL::int8 AS rank WHERE false"
PARAMETER_TYPES = (
    "text, vector[], int, int, int, uuid[], jsonb, float8, float8, float8, float8, "
    "float8, float8, int8, int, int, text, bool"
)


def prepare(conn, sql_path):
    """A cursor on conn in the corpus user's transaction, with statement `s` prepared from the
    search statement at sql_path (its vector legs left out)."""
    sql = Path(sql_path).read_text().replace("{vector_legs}", NO_VECTOR_LEG)
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT user_id FROM search_corpus_stats ORDER BY chunks DESC LIMIT 1")
    (user,) = cur.fetchone()
    cur.execute(
        "SELECT set_config('role', 'ragpipe_app', true), set_config('ragpipe.user_id', %s, true), "
        "set_config('plan_cache_mode', 'force_generic_plan', true)",
        (str(user),),
    )
    cur.execute(f"PREPARE s({PARAMETER_TYPES}) AS {sql}")
    return cur


def queries(cur, rng, count):
    """count (chunk id, query) pairs: the query is 3 to 8 consecutive words of that chunk."""
    cur.execute("SELECT max(id) FROM document_chunks")
    (max_id,) = cur.fetchone()
    made = []
    while len(made) < count:
        chunk = rng.randint(1, max_id)
        cur.execute("SELECT content FROM document_chunks WHERE id = %s", (chunk,))
        found = cur.fetchone()
        if not found:
            continue
        words = [w for w in found[0].replace(".", " ").split(" ") if w]
        n = min(3 + rng.randint(0, 5), len(words))
        start = rng.randint(0, len(words) - n)
        made.append((chunk, " ".join(words[start : start + n])))
    return made
