#!/usr/bin/env python3
"""Builds and checks fixtures/eval-unseen/questions.jsonl from the hand-written question files.

The questions are written by hand in scripts/eval-corpus/questions/<source>.txt:

    # comment
    @ gold-document.html [other-gold-document.html ...]
    K: a keyword question                      (kind keyword)
    P: a paraphrase question                   (kind paraphrase)
    M: context sentence(s). The question?      (kind multi-sentence)
    F: the previous turn >> the follow-up      (kind follow-up)
    = the answer quote, verbatim from the first gold document
    U: a question the corpus does not answer   (kind unanswerable; no quote, no document)

This script numbers them (`<source>-NNN`), splits them into a tuning half and a test half
(deterministic, stratified by kind and source), writes questions.jsonl, and validates the set:

  - every gold document exists, and the quote occurs, whitespace-normalised, inside one chunk
    of the text ragpipe extracts from the first gold document (`ragpipe extract --chunks
    --json`, the same check `ragpipe eval` makes against the stored chunks);
  - kinds are known; unanswerable questions name no document; follow-ups carry `previous`;
  - paraphrases share no rare word with their quote: no word of the question whose document
    frequency over the corpus is below RARE_DF_FRACTION of the documents occurs in the quote;
  - at least a third of the questions are paraphrases; the split is within one question of
    half in every (kind, source) group.

It prints counts per kind, source, format, language and split. Exit status 1 on any failure.

Usage: scripts/eval-corpus/questions.py [--ragpipe PATH] [--check-only]
  --ragpipe     the ragpipe binary (default: target/release/ragpipe, else target/debug/ragpipe)
  --check-only  validate the committed questions.jsonl against the question files, write nothing
"""

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SET = REPO / "fixtures/eval-unseen"
DOCS = SET / "documents"
SOURCES_DIR = Path(__file__).resolve().parent / "questions"
KINDS = {"K": "keyword", "P": "paraphrase", "M": "multi-sentence", "F": "follow-up", "U": "unanswerable"}
# A word is rare when fewer than this fraction of the corpus's documents contain it.
RARE_DF_FRACTION = 0.05
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragpipe-eval-extract"


def parse_sources():
    questions = []
    for path in sorted(SOURCES_DIR.glob("*.txt")):
        source = path.stem
        gold, pending, n = None, None, 0
        for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            where = f"{path.name}:{lineno}"
            if not line or line.startswith("#"):
                continue
            if line.startswith("@ "):
                gold = line[2:].split()
                continue
            if line.startswith("= "):
                if pending is None or pending["quote"] is not None:
                    sys.exit(f"{where}: a quote without a question")
                pending["quote"] = line[2:].strip()
                continue
            tag, _, text = line.partition(": ")
            if tag not in KINDS or not text:
                sys.exit(f"{where}: cannot read {line!r}")
            if pending is not None and pending["kind"] != "unanswerable" and pending["quote"] is None:
                sys.exit(f"{where}: the previous question has no quote")
            n += 1
            kind = KINDS[tag]
            previous = None
            if kind == "follow-up":
                previous, sep, text = text.partition(" >> ")
                if not sep:
                    sys.exit(f"{where}: a follow-up needs 'previous >> question'")
            pending = {
                "id": f"{source}-{n:03d}",
                "kind": kind,
                "question": text.strip(),
                "documents": [] if kind == "unanswerable" else list(gold or []),
                "quote": None,
                "previous": previous.strip() if previous else None,
                "_where": where,
                "_source": source,
            }
            if kind != "unanswerable" and not gold:
                sys.exit(f"{where}: no gold document (@ line) before this question")
            questions.append(pending)
        if pending is not None and pending["kind"] != "unanswerable" and pending["quote"] is None:
            sys.exit(f"{path.name}: the last question has no quote")
    return questions


def assign_splits(questions):
    """Within each (kind, source) group, in an order fixed by a hash of the id, alternate tune
    and test; the group's first half starts on alternating sides so odd groups even out."""
    groups = collections.defaultdict(list)
    for q in questions:
        groups[(q["kind"], q["_source"])].append(q)
    flip = 0
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda q: hashlib.sha256(q["id"].encode()).hexdigest())
        for i, q in enumerate(members):
            q["split"] = ("tune", "test")[(i + flip) % 2]
        if len(members) % 2:
            flip ^= 1


def ragpipe_binary(arg):
    if arg:
        return Path(arg)
    for profile in ("release", "debug"):
        path = REPO / "target" / profile / "ragpipe"
        if path.exists():
            return path
    sys.exit("questions.py: no ragpipe binary; run `cargo build -p ragpipe-cli` or pass --ragpipe")


def extracted(binary, name):
    """ragpipe's extraction and chunks of a document, cached by the file's bytes, the binary's
    modification time and the RAGPIPE_* settings (which change the chunking)."""
    data = (DOCS / name).read_bytes()
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("RAGPIPE_"))
    key = hashlib.sha256(data + str(binary.stat().st_mtime_ns).encode() + repr(settings).encode()).hexdigest()
    cached = CACHE / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    out = subprocess.run([str(binary), "extract", "--chunks", "--json", str(DOCS / name)], capture_output=True)
    if out.returncode != 0:
        result = {"error": out.stderr.decode("utf-8", "replace").strip()}
    else:
        doc = json.loads(out.stdout)
        result = {
            "text": doc["document"]["text"],
            "format": doc["document"]["format"],
            "chunks": [c["content"] for c in doc["chunks"]],
        }
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result), encoding="utf-8")
    return result


def norm(text):
    return " ".join(text.split())


WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)


def words(text):
    return {w.lower() for w in WORD.findall(text)}


def stem(word):
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ragpipe")
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args()
    binary = ragpipe_binary(args.ragpipe)
    questions = parse_sources()
    assign_splits(questions)
    sources = {}
    for line in (SET / "SOURCES.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        name, package, version, _origin, fmt, lang = line.split("\t")
        sources[name] = (package, version, fmt, lang)
    names = sorted(p.name for p in DOCS.iterdir() if p.is_file())
    failures = []
    if sorted(sources) != names:
        failures.append("SOURCES.tsv does not list exactly the files in documents/")

    # Document frequencies over ragpipe's extracted text of the whole corpus.
    df = collections.Counter()
    texts = {}
    for name in names:
        ex = extracted(binary, name)
        if "error" in ex:
            failures.append(f"{name}: ragpipe cannot extract it: {ex['error']}")
            continue
        texts[name] = ex
        df.update({stem(w) for w in words(ex["text"])})
    rare_below = RARE_DF_FRACTION * len(names)

    for q in questions:
        where = f"{q['id']} ({q['_where']})"
        if q["kind"] == "unanswerable":
            continue
        for d in q["documents"]:
            if d not in sources:
                failures.append(f"{where}: gold document {d} is not in documents/")
        gold = q["documents"][0]
        ex = texts.get(gold)
        if ex is None:
            continue
        quote = norm(q["quote"])
        if not any(quote in norm(c) for c in ex["chunks"]):
            if quote in norm(ex["text"]):
                failures.append(f"{where}: the quote spans two chunks of {gold}: {quote!r}")
            else:
                failures.append(f"{where}: the quote is not in the text of {gold}: {quote!r}")
        if q["kind"] == "paraphrase":
            quote_words = {stem(w) for w in words(q["quote"])}
            shared = sorted(w for w in {stem(w) for w in words(q["question"])} if df[w] < rare_below and w in quote_words)
            if shared:
                failures.append(f"{where}: paraphrase shares rare words with its quote: {shared}")

    total = len(questions)
    paraphrases = sum(q["kind"] == "paraphrase" for q in questions)
    if paraphrases * 3 < total:
        failures.append(f"only {paraphrases} of {total} questions are paraphrases (need a third)")
    groups = collections.defaultdict(collections.Counter)
    for q in questions:
        groups[(q["kind"], q["_source"])][q["split"]] += 1
    for key, c in groups.items():
        if abs(c["tune"] - c["test"]) > 1:
            failures.append(f"split unbalanced in {key}: {dict(c)}")

    jsonl = ["// Unseen evaluation set for `ragpipe eval --fixtures fixtures/eval-unseen`: generated by",
             "// scripts/eval-corpus/questions.py from scripts/eval-corpus/questions/*.txt (edit those).",
             "// `documents` are gold filenames in documents/ (any counts); `quote` is verbatim from the",
             "// first (whitespace aside); `split` is tune or test; `previous` is a follow-up's previous turn."]
    for q in questions:
        row = {k: q[k] for k in ("id", "kind", "question", "documents", "quote", "split")}
        if q["previous"]:
            row["previous"] = q["previous"]
        jsonl.append(json.dumps(row, ensure_ascii=False))
    text = "\n".join(jsonl) + "\n"
    target = SET / "questions.jsonl"
    if args.check_only:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            failures.append("questions.jsonl is not what the question files generate; run without --check-only")
    else:
        target.write_text(text, encoding="utf-8")

    def table(title, counter):
        print(f"{title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())))

    print(f"{total} questions over {len(names)} documents; rare word: document frequency < {rare_below:.1f} "
          f"({RARE_DF_FRACTION:.0%} of the documents)")
    table("questions per kind", collections.Counter(q["kind"] for q in questions))
    table("questions per split", collections.Counter(q["split"] for q in questions))
    table("questions per source", collections.Counter(q["_source"] for q in questions))
    table("test questions per kind", collections.Counter(q["kind"] for q in questions if q["split"] == "test"))
    gold_fmt = collections.Counter(sources[q["documents"][0]][2] for q in questions if q["documents"] and q["documents"][0] in sources)
    table("answerable questions per gold format", gold_fmt)
    gold_lang = collections.Counter(sources[q["documents"][0]][3] for q in questions if q["documents"] and q["documents"][0] in sources)
    table("answerable questions per language", gold_lang)
    table("documents per package", collections.Counter(v[0] for v in sources.values()))
    table("documents per format", collections.Counter(v[2] for v in sources.values()))
    table("documents per language", collections.Counter(v[3] for v in sources.values()))
    table("ragpipe's detected formats", collections.Counter(t["format"] for t in texts.values()))
    for f in failures:
        print("FAIL", f)
    print(f"{len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
