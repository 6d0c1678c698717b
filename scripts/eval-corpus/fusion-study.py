#!/usr/bin/env python3
"""Compare ways of fusing the vector and text legs, choosing on the tuning half only.

Input: the JSON lines `ragpipe eval --fixtures DIR --split all --dump-legs FILE` writes (each
answerable question with its vector leg's and text leg's top 100 chunks, similarity and BM25
score), and the database it searched (for the query terms' document frequencies, read from
`search_term_stats` as the eval user: what the text leg's idf uses).

For every method family it picks the parameters with the largest tuning-half margin over the
better leg (the smaller of hybrid's recall@5 and MRR@10 gains over the best leg's, document
level, as `ragpipe eval` counts them; ties go to the larger recall@5 + MRR@10, then to the
first setting listed), then prints that setting's figures on both halves, per kind. Only the
test half is to be reported.

    scripts/eval-corpus/fusion-study.py legs.jsonl --database postgres://.../db [--email E]
"""

import argparse
import json
import math
import subprocess
import sys
from collections import defaultdict

K1, B = 1.2, 0.75
RECALL_K, MRR_CUTOFF = 5, 10
FETCH = 10  # what `ragpipe eval` reads per question: max(k, 10)


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def psql(database, sql):
    out = subprocess.run(
        ["psql", database, "-AtF", "\t", "-c", sql], check=True, capture_output=True, text=True
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def query_idfs(database, email, questions):
    """Per question: the idf of each query lexeme the user's chunks contain (as the SQL)."""
    user = psql(database, f"SELECT id FROM users WHERE email = '{email}'")[0][0]
    n = float(psql(database, f"SELECT chunks FROM search_corpus_stats WHERE user_id = '{user}'")[0][0])
    idfs = {}
    for q in questions:
        text = q["question"].replace("'", "''")
        rows = psql(
            database,
            "SELECT s.lexeme, s.chunks FROM search_term_stats s WHERE s.user_id = '%s' AND s.chunks > 0 "
            "AND s.lexeme = ANY (tsvector_to_array(to_tsvector('english', '%s')))" % (user, text),
        )
        idfs[q["id"]] = [math.log(1 + (n - int(df) + 0.5) / (int(df) + 0.5)) for _, df in rows]
    return idfs, n


def doc_rank(ranked, gold):
    """1-based rank of the first gold document among the first FETCH chunks."""
    for i, filename in enumerate(ranked[:FETCH]):
        if filename in gold:
            return i + 1
    return None


def figures(ranks):
    n = len(ranks) or 1
    recall = sum(1 for r in ranks if r is not None and r <= RECALL_K) / n
    mrr = sum(1.0 / r for r in ranks if r is not None and r <= MRR_CUTOFF) / n
    return recall, mrr


def rank_lists(q):
    return q["legs"]["vector"], q["legs"]["text"]


def fuse(q, score_fn):
    """Fused order of filenames: score_fn(vector_entry_or_None, text_entry_or_None, ctx)."""
    vector, text = rank_lists(q)
    by_id = {}
    for rank, (cid, fname, sim, _also) in enumerate(vector, 1):
        by_id.setdefault(cid, [fname, None, None])[1] = (rank, sim)
    for rank, (cid, fname, score, _also) in enumerate(text, 1):
        by_id.setdefault(cid, [fname, None, None])[2] = (rank, score)
    ctx = q["_ctx"]
    scored = [(score_fn(v, t, ctx), cid, fname) for cid, (fname, v, t) in by_id.items()]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [fname for _, _, fname in scored]


def rrf(wv, kv, wt, kt, depth=None):
    def score(v, t, ctx):
        s = 0.0
        if v and (depth is None or v[0] <= depth):
            s += wv / (kv + v[0])
        if t and (depth is None or t[0] <= depth):
            s += wt / (kt + t[0])
        return s

    return score


def convex(alpha, norm_v, norm_t):
    """alpha * normalised vector similarity + (1 - alpha) * normalised BM25; a leg that did
    not rank the chunk contributes its normalised floor (0)."""

    def score(v, t, ctx):
        sv = norm_v(v[1], ctx) if v else 0.0
        st = norm_t(t[1], ctx) if t else 0.0
        return alpha * sv + (1 - alpha) * st

    return score


def minmax_v(sim, ctx):
    lo, hi = ctx["v_min"], ctx["v_max"]
    return (sim - lo) / (hi - lo) if hi > lo else 1.0


def minmax_t(score, ctx):
    lo, hi = ctx["t_min"], ctx["t_max"]
    return (score - lo) / (hi - lo) if hi > lo else 1.0


def max_t(score, ctx):
    return score / ctx["t_max"] if ctx["t_max"] > 0 else 0.0


def theoretical_t(score, ctx):
    """BM25 over the most the query could score (every term at saturation): how much of the
    query's rarity a chunk matches, comparable across queries."""
    top = ctx["t_bound"]
    return min(score / top, 1.0) if top > 0 else 0.0


def raw_v(sim, ctx):
    return sim


def prepare(questions, idfs):
    for q in questions:
        vector, text = rank_lists(q)
        sims = [h[2] for h in vector] or [0.0]
        scores = [h[2] for h in text] or [0.0]
        q["_ctx"] = {
            "v_min": min(sims),
            "v_max": max(sims),
            "t_min": min(scores),
            "t_max": max(scores),
            "t_bound": sum(i * (K1 + 1) for i in idfs.get(q["id"], [])),
        }


def evaluate(questions, score_fn):
    ranks = [doc_rank(fuse(q, score_fn), set(q["documents"])) for q in questions]
    return ranks


def leg_ranks(questions, leg):
    return [doc_rank([h[1] for h in q["legs"][leg]], set(q["documents"])) for q in questions]


def objective(ranks, legs):
    """(margin over the better leg, recall + MRR): what a setting is chosen by."""
    r, m = figures(ranks)
    best_r = max(leg[0] for leg in legs)
    best_m = max(leg[1] for leg in legs)
    return (min(r - best_r, m - best_m), r + m)


def report(name, half_questions, ranks_of):
    parts = []
    for half, qs in half_questions:
        ranks = ranks_of(qs)
        r, m = figures(ranks)
        kinds = defaultdict(list)
        for q, rank in zip(qs, ranks):
            kinds[q["kind"]].append(rank)
        per_kind = "  ".join(
            "%s %.3f/%.3f" % (k[:5], *figures(v)) for k, v in sorted(kinds.items())
        )
        parts.append("%s %.3f / %.3f  [%s]" % (half, r, m, per_kind))
    print("%-34s %s" % (name, ("\n" + " " * 35).join(parts)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump")
    ap.add_argument("--database", required=True)
    ap.add_argument("--email", default="eval+eval-unseen@ragpipe.invalid")
    args = ap.parse_args()
    questions = load(args.dump)
    idfs, _n = query_idfs(args.database, args.email, questions)
    prepare(questions, idfs)
    tune = [q for q in questions if q.get("split") in (None, "tune")]
    test = [q for q in questions if q.get("split") in (None, "test")]
    halves = [("tune", tune), ("test", test)]

    report("vector leg", halves, lambda qs: leg_ranks(qs, "vector"))
    report("text leg", halves, lambda qs: leg_ranks(qs, "text"))

    families = {
        "rrf": [
            (f"rrf v{wv}/k{kv} t{wt}/k{kt}", rrf(wv, kv, wt, kt))
            for wv in (1.0,)
            for wt in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
            for kv in (5, 10, 20, 40, 60, 100)
            for kt in (5, 10, 20, 40, 60)
        ],
        "convex minmax": [
            (f"convex minmax a={a:.2f}", convex(a, minmax_v, minmax_t)) for a in [i / 20 for i in range(21)]
        ],
        "convex raw-sim / max-bm25": [
            (f"convex sim/max a={a:.2f}", convex(a, raw_v, max_t)) for a in [i / 20 for i in range(21)]
        ],
        "convex raw-sim / bm25-bound": [
            (f"convex sim/bound a={a:.2f}", convex(a, raw_v, theoretical_t)) for a in [i / 20 for i in range(21)]
        ],
        "convex minmax-sim / bm25-bound": [
            (f"convex minmax/bound a={a:.2f}", convex(a, minmax_v, theoretical_t))
            for a in [i / 20 for i in range(21)]
        ],
    }
    tune_legs = [figures(leg_ranks(tune, leg)) for leg in ("vector", "text")]
    for family, settings in families.items():
        best = max(settings, key=lambda s: objective(evaluate(tune, s[1]), tune_legs))
        report(best[0], halves, lambda qs, fn=best[1]: evaluate(qs, fn))


if __name__ == "__main__":
    sys.exit(main())
