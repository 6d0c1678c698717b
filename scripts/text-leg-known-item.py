#!/usr/bin/env python3
"""How often the text leg ranks a query's source chunk first or within 10, for several bounds.

Runs the text-only form of crates/store/src/search/hybrid.sql on a corpus that
`ragpipe bench search --keep` left, as ragpipe_app with the corpus's user and generic plans (as
store::Store::search_tx does), for 150 queries made like the benchmark's (3 to 8 consecutive
words of a random chunk: that chunk is the one to find), once per BUDGET/RESCORED pair given,
and prints the share found first, the share found within 10 and the median latency. A pair of
huge bounds (1000000/1000000) is exhaustive BM25 over every posting of every query term.

    pip install 'psycopg[binary]'
    scripts/text-leg-known-item.py [--database ragpipe_bench_search] [--sql FILE] 1500/50 1000/100 ...

BENCHMARKS.md ("Search") has the figures.
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
NO_VECTOR_LEG = "    SELECT NULL::int8 AS id, NULL::float8 AS distance, NULL::int8 AS rank WHERE false"
PARAMETER_TYPES = (
    "text, vector[], int, int, int, uuid[], jsonb, float8, float8, float8, float8, "
    "float8, float8, int8, int, int, text, bool"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="ragpipe_bench_search")
    parser.add_argument("--sql", default=str(ROOT / "crates/store/src/search/hybrid.sql"))
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("bounds", nargs="+", help="BUDGET/RESCORED")
    args = parser.parse_args()
    bounds = [tuple(int(x) for x in b.split("/")) for b in args.bounds]

    sql = Path(args.sql).read_text().replace("{vector_legs}", NO_VECTOR_LEG)
    with psycopg.connect(f"dbname={args.database}", autocommit=False) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT user_id FROM search_corpus_stats ORDER BY chunks DESC LIMIT 1")
        (user,) = cur.fetchone()
        cur.execute(
            "SELECT set_config('role', 'ragpipe_app', true), set_config('ragpipe.user_id', %s, true), "
            "set_config('plan_cache_mode', 'force_generic_plan', true)",
            (str(user),),
        )
        cur.execute(f"PREPARE s({PARAMETER_TYPES}) AS {sql}")
        cur.execute("SELECT max(id) FROM document_chunks")
        (max_id,) = cur.fetchone()
        rng = random.Random(args.seed)
        queries = []
        while len(queries) < args.queries:
            chunk = rng.randint(1, max_id)
            cur.execute("SELECT content FROM document_chunks WHERE id = %s", (chunk,))
            found = cur.fetchone()
            if not found:
                continue
            words = [w for w in found[0].replace(".", " ").split(" ") if w]
            n = min(3 + rng.randint(0, 5), len(words))
            start = rng.randint(0, len(words) - n)
            queries.append((chunk, " ".join(words[start : start + n])))
        for budget, rescored in bounds:
            first = within = 0
            times = []
            for chunk, query in queries:
                started = time.perf_counter()
                cur.execute(
                    f"EXECUTE s(%s, NULL, 10, 0, 50, NULL, NULL, 1, 60, 2, 20, 1.2, 0.75, "
                    f"{budget}, {budget}, {max(rescored, 50)}, '40', false)",
                    (query,),
                )
                ids = [row[0] for row in cur.fetchall()]
                times.append((time.perf_counter() - started) * 1000)
                first += ids[:1] == [chunk]
                within += chunk in ids
            print(
                f"budget {budget} rescored {rescored}: source chunk first {first / len(queries):.3f}, "
                f"within 10 {within / len(queries):.3f}; p50 {statistics.median(times):.2f} ms "
                f"({len(queries)} queries)"
            )
        conn.rollback()


if __name__ == "__main__":
    main()
