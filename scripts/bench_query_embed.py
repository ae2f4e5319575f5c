#!/usr/bin/env python
"""One query's embedding on torch and on onnxruntime (query_backend), p50 and p99.

    python scripts/bench_query_embed.py --out docs/bench-query-embed.json

Embeds 200 typical search queries (2-8 words cut from the shipped sample
corpus) and 20 draft-length texts (whole sample articles) one at a time with
the torch embedder (float32, as queries run) and with the ONNX export
(recommender/embedders/query.py), one thread each, the two taking turns
text by text so that a neighbour's load falls on both. Drafts are timed twice:
as one text (truncated at the model's 256 word pieces, like a query) and as the
draft path embeds them (its passages, in one call). Prints the CPU, the
percentiles, the ONNX/torch ratio and the smallest cosine between the two
backends' vectors over every text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from recommender.embedders.machine import cpu_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu() -> tuple[str, str]:
    """The CPU's model name and the flags that decide kernels."""
    info = cpu_info()
    return info["model"], " ".join(info["flags"])


def workload(queries: int, drafts: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Queries of 2-8 consecutive words of sample articles, and whole articles as drafts."""
    path = resources.files("recommender") / "data" / "sample_articles.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    found = []
    for _ in range(queries):
        row = rng.choice(rows)
        words = (row["title"] + " " + row["body"]).split()
        n = rng.randint(2, 8)
        start = rng.randrange(0, max(1, len(words) - n))
        found.append(" ".join(words[start:start + n]).strip(".,;:\"'()"))
    return found, [(row["title"], row["body"]) for row in rng.sample(rows, min(drafts, len(rows)))]


def percentiles(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 3),
            "mean_ms": round(float(np.mean(seconds)) * 1e3, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the ONNX export is kept (models/onnx/); default: a temporary folder")
    parser.add_argument("--model", default=None, help="the model (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--drafts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1, help="times each text is embedded per backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()

    import numpy as np
    import torch

    from recommender.config import Settings
    from recommender.embedders import Embedder, resolve
    from recommender.embedders.query import open_query_model
    from recommender.embedders.torch_backend import SentenceTransformerEmbedder
    from recommender.passages import chunk_article

    torch.set_num_threads(1)
    overrides = {"data_dir": args.data_dir or Path(tempfile.mkdtemp(prefix="bench-query-")), "model": args.model}
    settings = Settings.load(overrides)
    name, flags = cpu()
    print(f"cpu: {name} ({os.cpu_count()} logical)\nflags: {flags}", flush=True)
    spec = resolve(settings)
    reference = SentenceTransformerEmbedder.of(spec, "float32")
    started = time.perf_counter()
    onnx = open_query_model(spec, reference)
    print(f"export and check: {time.perf_counter() - started:.1f} s; min cosine on the check's texts "
          f"{onnx.min_cosine:.6f}", flush=True)
    backends: dict[str, Embedder] = {"torch": reference, "onnx": onnx}
    queries, drafts = workload(args.queries, args.drafts, args.seed)
    cases = {
        "query": [[q] for q in queries],
        "draft_one_text": [[f"{title}\n\n{body}"] for title, body in drafts],
        "draft_passages": [chunk_article(title, body, settings.chunk_words, settings.max_chunks)
                           for title, body in drafts],
    }
    for texts in cases["query"][:10]:  # warm-up
        for embedder in backends.values():
            embedder.embed(texts)

    results: dict[str, dict] = {}
    min_cosine = 1.0
    for case, calls in cases.items():
        seconds: dict[str, list[float]] = {b: [] for b in backends}
        for texts in calls:
            vectors = {}
            for _ in range(args.repeat):
                for backend, embedder in backends.items():
                    t = time.perf_counter()
                    vectors[backend] = embedder.embed(texts)
                    seconds[backend].append(time.perf_counter() - t)
            min_cosine = min(min_cosine, float((vectors["torch"] * vectors["onnx"]).sum(axis=1).min()))
        results[case] = {b: percentiles(s) for b, s in seconds.items()}
        results[case]["ratio_p50"] = round(results[case]["torch"]["p50_ms"] / results[case]["onnx"]["p50_ms"], 2)
        results[case]["calls"] = len(calls)
        results[case]["texts_per_call"] = round(float(np.mean([len(t) for t in calls])), 1)

    print(f"\n{'case':<16} {'calls':>5} {'texts':>5}  {'torch p50':>9} {'p99':>8}  {'onnx p50':>9} {'p99':>8}"
          f"  {'torch/onnx':>10}")
    for case, r in results.items():
        print(f"{case:<16} {r['calls']:>5} {r['texts_per_call']:>5}  {r['torch']['p50_ms']:>9.2f} "
              f"{r['torch']['p99_ms']:>8.2f}  {r['onnx']['p50_ms']:>9.2f} {r['onnx']['p99_ms']:>8.2f}"
              f"  {r['ratio_p50']:>9.2f}x")
    print(f"min cosine torch vs onnx over all {sum(len(t) for c in cases.values() for t in c)} texts: {min_cosine:.6f}")
    if args.out:
        args.out.write_text(json.dumps({
            "cpu": name, "flags": flags, "logical_cpus": os.cpu_count(), "threads": 1, "model": settings.model,
            "onnx_min_cosine": min_cosine, "check_min_cosine": onnx.min_cosine, "results": results,
            "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
