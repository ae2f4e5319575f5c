#!/usr/bin/env python
"""In-process cost of one computed related list (no cache hit), p50 and p99.

    python scripts/bench_related_latency.py --data-dir indexes/bench --lists 400 --out docs/bench-related-latency.json

Opens the data folder as the server does (Engine.open) and asks for the lists
of random articles, each once, so that every list is computed. Run it on the
same store with two releases (a git worktree of the older one, its own index
built by its own `recommender reindex`) to compare: the store and the
vectors are the same, the ranking differs. Prints the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from recommender.embedders.machine import cpu_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_flags() -> str:
    return " ".join(cpu_info()["flags"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--lists", type=int, default=400)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranking-only", action="store_true",
                        help="time only the ranking (related_to_row), without the store's filters and rules")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from recommender.config import Settings
    from recommender.service import Engine

    settings = Settings.load({"data_dir": args.data_dir})
    with Engine.open(settings) as engine:
        version = engine.live.current
        stored = list(engine.stores.get().get_many(
            [int(d) for d in random.Random(args.seed).sample(list(version.doc_ids), args.lists + 20)]).values())
        ids = [s.article.id for s in stored]
        if args.ranking_only:
            from recommender.rank.related import related_to_row

            found = [version.row_of(s.doc_id) for s in stored]
            rows = [r for r in found if r is not None]
            if len(rows) != len(found):
                raise SystemExit("an article sampled from the version has no row in it")

            def one(i: int) -> None:
                related_to_row(version, rows[i], args.k + 5, settings)
        else:
            def one(i: int) -> None:
                engine.related(ids[i], args.k)
        for i in range(20):  # warm up: threads, caches of the version
            one(i)
        times = []
        for i in range(20, len(ids)):
            start = time.perf_counter()
            one(i)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    result = {
        "articles": len(version), "lists": len(times), "k": args.k, "ranking only": args.ranking_only,
        "p50_ms": round(times[len(times) // 2], 2), "p99_ms": round(times[int(len(times) * 0.99)], 2),
        "mean_ms": round(sum(times) / len(times), 2), "cpu": cpu_flags(),
        "code": str(Path(str(sys.modules["recommender"].__file__)).resolve().parents[1]),
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
