#!/usr/bin/env python3
"""Where the search statement's text leg spends its time, from EXPLAIN ANALYZE.

Runs the text-only form of crates/store/src/search/hybrid.sql (or a variant of it) on a corpus
that `ragpipe bench search --keep` left, as ragpipe_app with the corpus's user and generic plans
(as store::Store::search_tx does), for 100 queries made like the benchmark's (3 to 8 consecutive
words of random chunks), and prints the medians of: execution time, time in the postings
index (first pass) and postings read, time in the rescoring probes and candidates rescored.

    pip install 'psycopg[binary]'
    scripts/explain-text-leg.py [--database ragpipe_bench_search] [--sql FILE]
        [--budget 1000] [--rescored 100] [--depth 50] [--warm] [--seed 11]

--warm runs each query once before explaining it (its pages in shared buffers); without it
each query is explained on first run, as in the benchmark where other queries ran in between.
Each run is a new connection, so its first query also pays loading the text search dictionary.
BENCHMARKS.md ("Search") has the figures and the variants measured with --sql.
"""

import argparse
import random
import statistics
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
NO_VECTOR_LEG = "    SELECT NULL::int8 AS id, NULL::float8 AS distance, NULL::int8 AS rank WHERE false"
PARAMETER_TYPES = (
    "text, vector[], int, int, int, uuid[], jsonb, float8, float8, float8, float8, "
    "float8, float8, int8, int, int, text, bool"
)


def nodes(plan, predicate, in_subplan=False):
    """Every node of the plan tree for which predicate(node, in_subplan) holds; in_subplan says
    whether the node is under a SubPlan (the rescoring probes are)."""
    found = [plan] if predicate(plan, in_subplan) else []
    for child in plan.get("Plans", []):
        below = in_subplan or child.get("Subplan Name", "").startswith("SubPlan")
        found += nodes(child, predicate, below)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="ragpipe_bench_search")
    parser.add_argument("--sql", default=str(ROOT / "crates/store/src/search/hybrid.sql"))
    parser.add_argument("--budget", type=int, default=1000, help="postings budget (and per term)")
    parser.add_argument("--rescored", type=int, default=100, help="candidates rescored (at least --depth)")
    parser.add_argument("--depth", type=int, default=50, help="text leg depth")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    sql = Path(args.sql).read_text().replace("{vector_legs}", NO_VECTOR_LEG)
    with psycopg.connect(f"dbname={args.database}", autocommit=False) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT user_id FROM search_corpus_stats ORDER BY chunks DESC LIMIT 1")
        (user,) = cur.fetchone()
        cur.execute("SELECT max(id) FROM document_chunks")
        (max_id,) = cur.fetchone()
        cur.execute(
            "SELECT set_config('role', 'ragpipe_app', true), set_config('ragpipe.user_id', %s, true), "
            "set_config('plan_cache_mode', 'force_generic_plan', true)",
            (str(user),),
        )
        cur.execute(f"PREPARE s({PARAMETER_TYPES}) AS {sql}")
        rng = random.Random(args.seed)
        execute = (
            f"EXECUTE s(%s, NULL, 10, 0, {args.depth}, NULL, NULL, 1, 60, 2, 20, 1.2, 0.75, "
            f"{args.budget}, {args.budget}, {max(args.rescored, args.depth)}, '40', false)"
        )
        rows = []
        while len(rows) < args.queries:
            cur.execute("SELECT content FROM document_chunks WHERE id = %s", (rng.randint(1, max_id),))
            found = cur.fetchone()
            if not found:
                continue
            words = [w for w in found[0].replace(".", " ").split(" ") if w]
            n = min(3 + rng.randint(0, 5), len(words))
            start = rng.randint(0, len(words) - n)
            query = " ".join(words[start : start + n])
            if args.warm:
                cur.execute(execute, (query,))
                cur.fetchall()
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + execute, (query,))
            plan = cur.fetchone()[0][0]
            postings = nodes(
                plan["Plan"], lambda n, sub: n.get("Relation Name") == "search_postings" and not sub
            )
            rescoring = nodes(plan["Plan"], lambda n, sub: n.get("Subplan Name", "").startswith("SubPlan"))
            rows.append(
                (
                    plan["Execution Time"],
                    sum(n["Actual Total Time"] for n in postings),
                    sum(n["Actual Rows"] for n in postings),
                    sum(n["Actual Total Time"] * n["Actual Loops"] for n in rescoring),
                    sum(n["Actual Loops"] for n in rescoring),
                )
            )
        conn.rollback()

    def median(i):
        return statistics.median(r[i] for r in rows)

    print(
        f"execution p50 {median(0):.2f} ms; postings {median(1):.2f} ms for {median(2):.0f} postings; "
        f"rescoring {median(3):.2f} ms for {median(4):.0f} candidates ({len(rows)} queries, "
        f"{'warm' if args.warm else 'first run'})"
    )


if __name__ == "__main__":
    main()
