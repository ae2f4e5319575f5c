#!/usr/bin/env python
"""Copies in served lists: does the engine merge exactly what the copy rule
calls copies, and do lists stay free of one text shown twice?

    HF_HUB_OFFLINE=1 python scripts/copy_study.py --data ../shared/data [--out docs/copies.json]

gva_dev and BBC hold few copies of their own, so every 10th article gets one
copy, edited as newsrooms edit copies (the edit rotates): truncated to its
first 60%, a boilerplate paragraph added, retitled, one paragraph of a long
article replaced, syndicated under another id. Each copy keeps its original's
label. Then, through the served path (recommender eval related):

* merges: pairs of articles the engine puts in one story, against pairs the
  rule (recommender.evaluation.metrics.copy_clusters, an independent exact
  implementation) calls copies: precision and recall, and how many pairs of
  different reports of one event or incident (same label, not copies) the
  engine merged;
* dup@10 and story MAP of the engine and the baselines on the archive with
  its copies.

NewsWCL50 (five outlets per event) is checked as it is: its reports must stay apart.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devsets import DATA, named  # noqa: E402

from recommender.config import Settings  # noqa: E402
from recommender.evaluation.metrics import copy_clusters  # noqa: E402
from recommender.evaluation.runs import evaluate_related  # noqa: E402
from recommender.service import Engine  # noqa: E402

BOILERPLATE = ("Copyright 2024 The Daily Ledger. All rights reserved. This material may not be published, "
               "broadcast, rewritten or redistributed. Sign up for our newsletter to get the top stories every "
               "morning, and follow us for breaking news alerts.")
INJECT = {"gva_dev": True, "bbc_news": True, "newswcl50": False, "wikiref220": False}
"""The related sets studied (scripts/devsets.py), and whether each gets copies injected."""
EDITS = ["truncated to 60%", "boilerplate added", "retitled", "one paragraph rewritten", "syndicated under another id"]


def edited(record: dict, other: dict, kind: str) -> dict:
    copy = {**record, "id": record["id"] + "-copy", "edit": kind}
    words = record["body"].split(" ")
    if kind == "truncated to 60%":
        copy["body"] = " ".join(words[: max(1, int(len(words) * 0.6))])
    elif kind == "boilerplate added":
        copy["body"] = record["body"] + "\n\n" + BOILERPLATE
    elif kind == "retitled":
        copy["title"] = "UPDATED: " + " ".join(reversed(record["title"].split()))
    elif kind == "one paragraph rewritten":
        paragraphs = record["body"].split("\n\n")
        if len(paragraphs) >= 6:
            longest = max(range(len(paragraphs)), key=lambda i: len(paragraphs[i]))
            paragraphs[longest] = other["body"].split("\n\n")[0]
        copy["body"] = "\n\n".join(paragraphs)
    if "url" in copy and copy["url"]:
        copy["url"] = copy["url"].rstrip("/") + "-syndicated"
    return copy


def with_copies(rows: list[dict]) -> list[dict]:
    out = list(rows)
    for n, i in enumerate(range(0, len(rows), 10)):
        out.append(edited(rows[i], rows[(i + 1) % len(rows)], EDITS[n % len(EDITS)]))
    return out


def pairs(labels) -> set[tuple[int, int]]:
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return {p for rows in groups.values() for p in itertools.combinations(rows, 2)}


def merges(settings: Settings, rows: list[dict]) -> dict:
    with Engine.open(settings) as engine:
        version = engine.live.current
        by_doc = {s.doc_id: s.article.id for s in engine.stores.get().iter_articles()}
        story_of = {by_doc[int(d)]: int(s) for d, s in zip(version.doc_ids, version.story_ids)}
    ids = [r["id"] for r in rows]
    rule = pairs(copy_clusters([r["body"] for r in rows]))
    engine_pairs = pairs([story_of[i] for i in ids])
    same_label = {(a, b) for a, b in engine_pairs if rows[a].get("group") == rows[b].get("group")}
    return {
        "rule pairs": len(rule), "engine pairs": len(engine_pairs), "both": len(rule & engine_pairs),
        "precision": round(len(rule & engine_pairs) / len(engine_pairs), 4) if engine_pairs else 1.0,
        "recall": round(len(rule & engine_pairs) / len(rule), 4) if rule else 1.0,
        "merged same-label reports that are not copies": len(same_label - rule),
        "merged different-label pairs": len(engine_pairs - same_label),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for dev in named(INJECT, "related"):
        name, inject = dev.name, INJECT[dev.name]
        rows = [json.loads(line) for line in dev.path(args.data).open(encoding="utf-8")]
        if inject:
            rows = with_copies(rows)
        label = f"{name} + copies" if inject else name
        path = Path("indexes/eval") / f"{label.replace(' + ', '-')}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        settings = Settings.load({"data_dir": Path("indexes/eval") / path.stem})
        report = evaluate_related(settings, path)
        results[label] = {
            "articles": len(rows), "copies injected": len(rows) - sum(1 for r in rows if "edit" not in r),
            "merges": merges(settings, rows),
            "lists": {system: {m: v for m, v in metrics.items() if m in ("story map", "dup@10", "map")}
                      for system, metrics in report["systems"].items()},
        }
        print(label, json.dumps(results[label]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
