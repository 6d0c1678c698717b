#!/usr/bin/env python3
"""Where the search statement's text leg spends its time, from EXPLAIN ANALYZE.

Runs the text-only form of crates/store/src/search/hybrid.sql (or a variant of it) on a corpus
that `ragpipe-bench search --keep` left, as ragpipe_app with the corpus's user and generic plans
(as store::Store::search_tx does), for 100 queries made like the benchmark's (3 to 8 consecutive
words of random chunks), and prints the medians of: execution time, time in the first pass's
scans of search_blocks and blocks read, time in the second pass's scans (the probes for
the other terms) and their number.

    pip install 'psycopg[binary]'
    scripts/explain-text-leg.py [--database ragpipe_bench_search] [--sql FILE]
        [--budget 1500] [--rescored 50] [--depth 50] [--warm] [--seed 11]

--warm runs each query once before explaining it (its pages in shared buffers); without it
each query is explained on first run, as in the benchmark where other queries ran in between.
Each run is a new connection, so its first query also pays loading the text search dictionary.
BENCHMARKS.md ("Search") has the figures and the variants measured with --sql.
"""

import argparse
import random
import statistics

import psycopg

from text_leg_corpus import SEARCH_SQL, prepare, queries


def nodes(plan, predicate):
    """Every node of the plan tree for which predicate holds."""
    found = [plan] if predicate(plan) else []
    for child in plan.get("Plans", []):
        found += nodes(child, predicate)
    return found


def postings_scan(probes):
    """Whether a node reads search_blocks: the second pass's probes (probes=True) look for the
    block at or below a candidate's chunk id (`first_chunk <=` in their index condition), the
    first pass's scans read a term's blocks whole."""
    return lambda n: n.get("Relation Name") == "search_blocks" and (
        ("first_chunk <=" in n.get("Index Cond", "")) == probes
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="ragpipe_bench_search")
    parser.add_argument("--sql", default=str(SEARCH_SQL))
    parser.add_argument("--budget", type=int, default=1500, help="postings budget (and per term)")
    parser.add_argument("--rescored", type=int, default=50, help="candidates completed (at least --depth)")
    parser.add_argument("--depth", type=int, default=50, help="text leg depth")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    with psycopg.connect(f"dbname={args.database}", autocommit=False) as conn:
        cur = prepare(conn, args.sql)
        rng = random.Random(args.seed)
        execute = (
            f"EXECUTE s(%s, NULL, 10, 0, {args.depth}, NULL, NULL, 1, 60, 2, 20, 1.2, 0.75, "
            f"{args.budget}, {args.budget}, {max(args.rescored, args.depth)}, '40', false, 5000)"
        )
        rows = []
        for _, query in queries(cur, rng, args.queries):
            if args.warm:
                cur.execute(execute, (query,))
                cur.fetchall()
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + execute, (query,))
            plan = cur.fetchone()[0][0]
            postings = nodes(plan["Plan"], postings_scan(False))
            probes = nodes(plan["Plan"], postings_scan(True))
            rows.append(
                (
                    plan["Execution Time"],
                    sum(n["Actual Total Time"] * n["Actual Loops"] for n in postings),
                    sum(n["Actual Rows"] * n["Actual Loops"] for n in postings),
                    sum(n["Actual Total Time"] * n["Actual Loops"] for n in probes),
                    sum(n["Actual Loops"] for n in probes),
                )
            )
        conn.rollback()

    def median(i):
        return statistics.median(r[i] for r in rows)

    print(
        f"execution p50 {median(0):.2f} ms; first pass {median(1):.2f} ms for {median(2):.0f} blocks; "
        f"second pass {median(3):.2f} ms in {median(4):.0f} index scans ({len(rows)} queries, "
        f"{'warm' if args.warm else 'first run'})"
    )


if __name__ == "__main__":
    main()
