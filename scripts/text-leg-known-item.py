#!/usr/bin/env python3
"""How often the text leg ranks a query's source chunk first or within 10, for several bounds.

Runs the text-only form of crates/store/src/search/hybrid.sql on a corpus that
`ragpipe-bench search --keep` left, as ragpipe_app with the corpus's user and generic plans (as
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

import psycopg

from text_leg_corpus import SEARCH_SQL, prepare, queries


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="ragpipe_bench_search")
    parser.add_argument("--sql", default=str(SEARCH_SQL))
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("bounds", nargs="+", help="BUDGET/RESCORED")
    args = parser.parse_args()
    bounds = [tuple(int(x) for x in b.split("/")) for b in args.bounds]

    with psycopg.connect(f"dbname={args.database}", autocommit=False) as conn:
        cur = prepare(conn, args.sql)
        made = queries(cur, random.Random(args.seed), args.queries)
        for budget, rescored in bounds:
            first = within = 0
            times = []
            for chunk, query in made:
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
                f"budget {budget} rescored {rescored}: source chunk first {first / len(made):.3f}, "
                f"within 10 {within / len(made):.3f}; p50 {statistics.median(times):.2f} ms "
                f"({len(made)} queries)"
            )
        conn.rollback()


if __name__ == "__main__":
    main()
