#!/usr/bin/env python
"""What a newcomer waits for on a first run, as `make demo` and the README do
it: the sample corpus ingested and reindexed into a fresh data folder with
an empty measurement cache ($XDG_CACHE_HOME), then `recommender serve` on it,
timed until /readyz answers 200 and a first related list and a first search
each answer. Each step is a fresh process; the CPU flags are printed.

    python scripts/bench_first_run.py [--rounds 2] [--out docs/bench-first-run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recommender" / "data" / "sample_articles.jsonl"
sys.path.insert(0, str(ROOT))

from recommender.embedders.machine import cpu_info  # noqa: E402


def command(*args: str | Path, env: dict[str, str]) -> float:
    """Run `recommender ARGS` to its end; its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recommender.cli", *map(str, args)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, float]:
    """(status, seconds) of one GET."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.perf_counter() - started


def serve(data_dir: Path, env: dict[str, str]) -> dict[str, float]:
    """Start `recommender serve`; seconds until /readyz is 200, then the first related list and search."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--data-dir", str(data_dir),
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
            try:
                if get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - started
        related_status, related = get(base + "/v1/articles/hl-0020/related?k=5")
        search_status, search = get(base + "/v1/search?q=Irena+Kalvos&k=5")
        assert related_status == search_status == 200, (related_status, search_status)
        return {"ready_seconds": round(ready, 2), "first_related_seconds": round(related, 3),
                "first_search_seconds": round(search, 3),
                "answered_seconds": round(time.perf_counter() - started, 2)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def one_round() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        data_dir, cache = Path(folder) / "demo", Path(folder) / "cache"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "XDG_CACHE_HOME": str(cache)}
        env.pop("RECOMMENDER_BACKEND", None)  # the defaults, as a newcomer has them
        env.pop("RECOMMENDER_PRECISION", None)
        result: dict[str, Any] = {"ingest_seconds": round(command("ingest", SAMPLE, "--data-dir", data_dir, env=env), 2)}
        result["reindex_seconds"] = round(command("reindex", "--no-progress", "--data-dir", data_dir, env=env), 2)
        result["first_start"] = serve(data_dir, env)
        result["second_start"] = serve(data_dir, env)  # what the first start prepared is there now
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="fresh data folders, one after the other")
    parser.add_argument("--out", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    report = {"cpu": cpu_info(), "rounds": [one_round() for _ in range(args.rounds)]}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
