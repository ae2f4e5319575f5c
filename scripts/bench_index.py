#!/usr/bin/env python
"""Index types side by side on clustered (real-shaped) vectors: build time,
memory, recall@10 against exact search, and query latency p50/p99 with one
FAISS thread, as the serving path runs it; then the same after re-scoring a
pool of 200 candidates exactly, which is what the engine does with them.

    python scripts/bench_index.py --sizes 100000 1000000 --out docs/bench-index.json
    python scripts/bench_index.py --sizes 2700000 --passages --pool 600 --queries 300

``--passages`` builds indexes as the passage index is built (ids are row
numbers, so no id map; the engine's choice uses product-quantized codes,
``choose_factory(n, candidates_only=True)``) and re-scores a pool of 600, as
search does (3 x its candidates). Memory is measured twice: the serialized
file, and the growth of the process's resident memory when the file is
loaded (what a worker holds, including the id map's hash table).

Vectors are 384-d (MiniLM), drawn around 5,000 centres with noise, then
normalized; queries are held-out vectors of the same shape. Each index is
built with recommender.index.VectorIndex, the class the engine uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommender.index import VectorIndex, choose_factory, set_query_threads  # noqa: E402


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, d), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


LOAD_AND_MEASURE = """
import os, sys, faiss
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss()
index = faiss.read_index(sys.argv[1])
print(rss() - before)
"""


def loaded_mb(path: Path) -> float:
    """Growth of a fresh process's resident memory when it reads the index
    (as a worker does): codes, ids, and an id map's hash table."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=None,
                        help="FAISS factory strings (default: Flat, the engine's choice by size, IVF-SQ8, HNSW32)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--pool", type=int, default=200,
                        help="candidates re-scored exactly, as the engine does (its `candidates` setting)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--passages", action="store_true",
                        help="build as the passage index: row-number ids, no id map, compact codes by default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5000, args.dim)).astype(np.float32)
    rows = []
    for n in args.sizes:
        data = clustered(n, args.dim, rng, centres)
        queries = clustered(args.queries, args.dim, rng, centres)
        ids = np.arange(n, dtype=np.int64)
        set_query_threads(os.cpu_count() or 1)
        exact = VectorIndex.build(data, ids, "Flat").search(queries, 10)[1]
        chosen = choose_factory(n, args.dim, candidates_only=args.passages)
        nlist = chosen.split(",")[0] if chosen.startswith("IVF") else f"IVF{int(4 * n ** 0.5)}"
        factories = args.factories or list(dict.fromkeys(["Flat", chosen, f"{nlist},SQ8", "HNSW32"]))
        for factory in factories:
            set_query_threads(os.cpu_count() or 1)
            start = time.perf_counter()
            index = VectorIndex.build(data, None if args.passages else ids, factory)
            build = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                index.save(Path(tmp) / "i.faiss")
                memory = (Path(tmp) / "i.faiss").stat().st_size / 2**20
                resident = loaded_mb(Path(tmp) / "i.faiss")
            print(f"built {factory} in {build:.1f}s; measuring queries", file=sys.stderr, flush=True)
            set_query_threads(1)
            found = np.empty((len(queries), 10), dtype=np.int64)
            reranked = np.empty((len(queries), 10), dtype=np.int64)
            latency, rerank_latency = [], []
            for i in range(len(queries)):
                q = queries[i : i + 1]
                t = time.perf_counter()
                found[i] = index.search(q, 10)[1][0]
                latency.append((time.perf_counter() - t) * 1000)
                # What the engine does: a pool of candidates from the index, scored
                # exactly against the stored float32 vectors (memory-mapped there).
                t = time.perf_counter()
                pool = index.search(q, args.pool)[1][0]
                pool = pool[pool >= 0]
                exact_scores = data[pool] @ q[0]
                reranked[i] = pool[np.argsort(-exact_scores)[:10]]
                rerank_latency.append((time.perf_counter() - t) * 1000)
            recall = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))
            recall_rr = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(reranked, exact)]))
            row = {"vectors": n, "factory": factory, "type": index.type_name, "build_s": round(build, 1),
                   "memory_mb": round(memory), "resident_mb": round(resident), "id_map": not args.passages,
                   "recall@10": round(recall, 4),
                   "p50_ms": round(float(np.percentile(latency, 50)), 3),
                   "p99_ms": round(float(np.percentile(latency, 99)), 3),
                   "pool": args.pool, "recall@10_reranked": round(recall_rr, 4),
                   "reranked_p50_ms": round(float(np.percentile(rerank_latency, 50)), 3),
                   "reranked_p99_ms": round(float(np.percentile(rerank_latency, 99)), 3)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            del index
        del data
    print(f"| vectors | factory | build s | file MB | loaded MB | recall@10 | p50 ms | p99 ms | "
          f"recall@10, top {args.pool} re-scored | p50 ms | p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['vectors']:,} | {r['factory']} | {r['build_s']} | {r['memory_mb']} | {r['resident_mb']} | "
              f"{r['recall@10']:.4f} | "
              f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['recall@10_reranked']:.4f} | "
              f"{r['reranked_p50_ms']:.3f} | {r['reranked_p99_ms']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
