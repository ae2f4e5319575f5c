#!/usr/bin/env python
"""What editorial rules cost a request: related and search p50/p99 with 0,
100, 1,000 and 10,000 rules of each kind, against no rules in the same run.

    python scripts/bench_rules.py --data-dir indexes/bench-rules --articles 100000 --out docs/bench-rules.json

Builds (once) an archive of N articles: titles and openings of the
development sets' records (../shared/data), 40 sections and 20 tags per
article out of 3,000 (a few common, most rare), dates over ten years, and
synthetic clustered vectors (embedding 100k articles on 2 cores takes over an
hour; latency does not depend on what the vectors mean). Search queries are
embedded for real.

The archive is copied once (``<data-dir>-no-rules``): the rules go into
one store, and every request is timed on both archives, one right after the
other (in turn first), so that the baseline shares the load of a noisy
machine. For each kind, from no rules: each count in turn. Kinds:
``pin`` (on the measured lists, spread over them),
``block`` (everywhere, of random articles), ``boost-article``,
``boost-section``, ``boost-tag``, ``bury-tag`` (everywhere) and
``list-boost-tag`` (tag boosts on the measured lists, spread over them).
Every measured list is computed (the list cache is off); the first request
after a change of the rules is timed apart (``first_ms``: the rules are
resolved for the view then). ``--budget`` bounds the seconds spent per
setting, so the same script can time an older release, whose requests scanned
the store once per rule (a git worktree of it, on the same data folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from devsets import DATA, named

from recommender.embedders.machine import cpu_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KINDS = ("pin", "block", "boost-article", "boost-section", "boost-tag", "bury-tag", "list-boost-tag")
SECTIONS = [f"section-{i:02d}" for i in range(40)]
TAGS = [f"tag-{i:04d}" for i in range(3000)]
SETS = [s.file for s in named(("reuters21578", "agnews_test", "bbc_news", "wikiref220", "time_docs", "newswcl50"))]


def settings_for(data_dir: Path):
    from recommender.config import Settings

    return Settings.load({"data_dir": data_dir, "backend": "torch", "precision": "float32", "related_cache_size": 0},
                         environ={})


def build(data_dir: Path, data: Path, n: int, dim: int = 384) -> None:
    """The archive, stored and published (once; a rerun finds it)."""
    from recommender.articles import parse_article
    from recommender.directory import read_current
    from recommender.embedders import Embedder, LazyEmbedder, resolve
    from recommender.pipeline import reindex
    from recommender.store import SqliteStore

    settings = settings_for(data_dir)
    if read_current(settings.index_root)[0] is not None:
        return

    def no_model() -> Embedder:
        raise RuntimeError("every vector is written before the reindex")

    records = []
    for name in SETS:
        with open(data / name, encoding="utf-8") as handle:
            records += [r for r in map(json.loads, handle) if r.get("title") and r.get("body")]
    rng = np.random.default_rng(0)
    tag_weights = 1.0 / np.arange(1, len(TAGS) + 1)  # Zipf: a few tags on many articles, most on few
    tag_weights /= tag_weights.sum()
    spec = resolve(settings)
    with SqliteStore.open(settings.store_path) as store:
        batch = []
        for i in range(store.count(), n):
            r = records[i % len(records)]
            batch.append(parse_article({
                "id": f"a{i}", "title": r["title"], "body": " ".join(r["body"].split()[:80]) + f" (item {i})",
                "section": SECTIONS[i % len(SECTIONS)], "published": f"{2015 + i % 11}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "tags": sorted({TAGS[t] for t in rng.choice(len(TAGS), 20, p=tag_weights)}), "lang": "en",
            }))
            if len(batch) == 5000:
                store.upsert(batch)
                batch = []
                print(f"  {i + 1} stored", file=sys.stderr)
        store.upsert(batch)
        centres = rng.standard_normal((2000, dim)).astype(np.float32)
        hashes = store.content_hashes()
        stale = store.stale_embeddings(spec.key)
        for start in range(0, len(stale), 10000):
            rows = []
            for d in stale[start : start + 10000]:
                v = centres[d % len(centres)] + 0.6 * rng.standard_normal((2, dim))
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                rows.append((d, hashes[d], v.astype(np.float32)))
            store.save_embeddings(spec.key, rows)
        started = time.perf_counter()
        report = reindex(settings, store, LazyEmbedder(spec, no_model), full=True)
        print(f"published {report.articles} articles in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def make_rules(kind: str, count: int, lists: list[str], n: int, rng: random.Random) -> list:
    from recommender.rules import Rule

    out = []
    for i in range(count):
        weight = round(0.01 + i * 0.0009, 4)  # distinct: an identical rule is stored once
        if kind == "pin":
            out.append(Rule("pin", f"a{rng.randrange(n)}", article=lists[i % len(lists)], position=1 + i % 10))
        elif kind == "block":
            out.append(Rule("block", f"a{rng.randrange(n)}"))
        elif kind == "boost-article":
            out.append(Rule("boost", f"a{rng.randrange(n)}", weight=weight))
        elif kind == "boost-section":
            out.append(Rule("boost", SECTIONS[i % len(SECTIONS)], target_type="section", weight=weight))
        elif kind in ("boost-tag", "bury-tag"):
            out.append(Rule(kind.split("-")[0], rng.choice(TAGS), target_type="tag", weight=weight))
        else:  # list-boost-tag
            out.append(Rule("boost", rng.choice(TAGS), article=lists[i % len(lists)], target_type="tag", weight=weight))
    return [r for r in out if r.target != r.article]


def clear(store) -> None:
    for rule in store.rules():
        store.delete_rule(rule.id)


def paired(calls: list, budget: float) -> dict:
    """Each (with rules, without) pair timed one after the other, in turn
    first; the first pair apart (the rules are resolved then); the rest as
    many as fit in the budget: ms, and the ratio of the p50s."""
    with_rules: list[float] = []
    without: list[float] = []
    started = time.perf_counter()
    for i, pair in enumerate(calls):
        for j in (0, 1) if i % 2 else (1, 0):
            t = time.perf_counter()
            pair[j]()
            (with_rules if j == 0 else without).append(time.perf_counter() - t)
        if time.perf_counter() - started > budget:
            break

    def summary(seconds: list[float]) -> dict:
        rest = np.array(seconds[1:] or seconds) * 1000
        return {"first_ms": round(seconds[0] * 1000, 2), "n": len(rest),
                "p50_ms": round(float(np.percentile(rest, 50)), 2), "p99_ms": round(float(np.percentile(rest, 99)), 2)}

    out = {"rules": summary(with_rules), "none": summary(without)}
    out["p50_ratio"] = round(out["rules"]["p50_ms"] / out["none"]["p50_ms"], 2)
    out["p99_ratio"] = round(out["rules"]["p99_ms"] / out["none"]["p99_ms"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="the development sets (default: %(default)s)")
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--lists", type=int, default=200, help="related lists per setting")
    parser.add_argument("--searches", type=int, default=60, help="searches per setting")
    parser.add_argument("--budget", type=float, default=120, help="seconds per setting and route, at most")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from recommender.service import Engine

    build(args.data_dir, args.data, args.articles)
    # The same archive twice: the rules go into the second one's store, and
    # each request is timed on both, one after the other, so that the load
    # of a noisy machine falls on both sides of every ratio.
    plain_dir = args.data_dir.with_name(args.data_dir.name + "-no-rules")
    if not plain_dir.exists():
        shutil.copytree(args.data_dir, plain_dir)
    info = cpu_info()
    result: dict = {"cpu": f"{info['model']}, {info['cores']} cores; {' '.join(info['flags'])}",
                    "articles": args.articles, "results": []}
    print(result["cpu"], file=sys.stderr)
    rng = random.Random(0)
    with Engine.open(settings_for(args.data_dir)) as engine, Engine.open(settings_for(plain_dir)) as plain:
        store = engine.stores.get()
        clear(store)  # rules a run that stopped left
        clear(plain.stores.get())
        lists = [f"a{i}" for i in rng.sample(range(args.articles), args.lists)]
        queries = [s.article.title for s in store.get_many(rng.sample(range(1, args.articles + 1), args.searches)).values()]
        engine.search(queries[0]), plain.search(queries[0])  # the query model loads once, outside the timings

        def measure(kind: str, count: int) -> None:
            related = paired([(lambda a=a: engine.related(a), lambda a=a: plain.related(a)) for a in lists], args.budget)
            search = paired([(lambda q=q: engine.search(q), lambda q=q: plain.search(q)) for q in queries], args.budget)
            row = {"kind": kind, "rules": count, "stored": len(store.rules()), "related": related, "search": search}
            result["results"].append(row)
            print(json.dumps(row), file=sys.stderr)

        for kind in args.kinds.split(","):
            clear(store)
            have = 0
            for count in map(int, args.counts.split(",")):
                for rule in make_rules(kind, count - have, lists, args.articles, rng):
                    store.add_rule(rule)
                have = count
                measure(kind, count)
        clear(store)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
