#!/usr/bin/env python
"""Publish costs on a benchmark archive, new code against an earlier release, in one run.

On a copy of a data folder's store (vectors cached, so nothing is embedded):

1. the earlier release (a git revision, checked out into a temporary worktree)
   publishes one new article: before segments that is a full build;
2. this tree publishes one new article: a segment beside the live version;
3. this tree runs a full build (``reindex --full``).

    python scripts/bench_rebuild.py --data-dir indexes/bench-100000 --baseline 00aa390 --out docs/bench-rebuild.json

Prints the seconds of each and their ratios, with the CPU's model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import cpu_line  # noqa: E402

ARTICLE = {"id": "bench-rebuild-new", "title": "Council approves the harbour bridge budget",
           "body": "The city council approved the harbour bridge budget on Monday after engineers warned of "
                   "further cost overruns. Work on the crossing resumes next month, the mayor said."}


def run(tree: Path, data_dir: Path, *args: str) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recommender.cli", "reindex", "--json", "--no-progress",
                           "--data-dir", str(data_dir), *args], env=env, capture_output=True, text=True, cwd=tree)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"reindex failed in {tree}:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


def ingest_one(tree: Path, data_dir: Path, suffix: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.write(json.dumps({**ARTICLE, "id": ARTICLE["id"] + suffix}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "recommender.cli", "ingest", handle.name, "--data-dir", str(data_dir)],
                   env=env, check=True, capture_output=True, cwd=tree)
    os.unlink(handle.name)


def copy_store(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    with sqlite3.connect(source / "store.sqlite") as src, sqlite3.connect(target / "store.sqlite") as dst:
        src.backup(dst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a benchmark archive (scripts/bench_serve.py)")
    parser.add_argument("--baseline", default="00aa390", help="the earlier release's git revision")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", file=sys.stderr)
    results: dict = {"cpu": cpu_line(), "baseline": args.baseline}
    with tempfile.TemporaryDirectory(dir=ROOT / "indexes") as tmp:
        tmp_path = Path(tmp)
        old_tree = tmp_path / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.baseline],
                       check=True, capture_output=True)
        try:
            old_data, new_data = tmp_path / "old", tmp_path / "new"
            for data in (old_data, new_data):
                copy_store(args.data_dir, data)
            print("earlier release: first build, then one new article ...", file=sys.stderr)
            run(old_tree, old_data)
            ingest_one(old_tree, old_data, "-1")
            seconds, report = run(old_tree, old_data)
            results["baseline_one_article_s"] = round(seconds, 2)
            results["baseline_articles"] = report["articles"]
            print("this tree: first build, one new article (a segment), a full build ...", file=sys.stderr)
            run(ROOT, new_data)
            ingest_one(ROOT, new_data, "-1")
            seconds, report = run(ROOT, new_data)
            assert report["segment"], report
            results["segment_one_article_s"] = round(seconds, 2)
            seconds, report = run(ROOT, new_data, "--full")
            assert report["published"] and not report["segment"], report
            results["full_build_s"] = round(seconds, 2)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
            shutil.rmtree(tmp_path, ignore_errors=True)
    results["one_article_speedup"] = round(results["baseline_one_article_s"] / results["segment_one_article_s"], 1)
    results["full_build_vs_baseline"] = round(results["baseline_one_article_s"] / results["full_build_s"], 2)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
