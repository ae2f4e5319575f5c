#!/usr/bin/env python
"""Run `recommender eval` on every development set and print one Markdown table.

    python scripts/eval_all.py --data ../shared/data [--out docs/eval-results.json]

Each set is indexed into indexes/eval/<name> (vectors are cached there, so a
rerun only re-ranks). The table is what docs/evaluation.md quotes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RUNS = [
    ("related", "bbc_news.jsonl", None),
    ("related", "newswcl50.jsonl", None),
    ("related", "wikiref220.jsonl", None),
    ("search", "time_docs.jsonl", "time_queries.jsonl"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with the JSONL sets")
    parser.add_argument("--out", type=Path, help="also write all reports to this JSON file")
    parser.add_argument("--ablation", action="store_true",
                        help="also print the ablation table (dedup, recency, MMR, hybrid each switched)")
    args = parser.parse_args()
    reports = []
    for task, dataset, queries in RUNS:
        command = [sys.executable, "-m", "recommender.cli", "eval", task, "--dataset", str(args.data / dataset), "--json"]
        if queries:
            command += ["--queries", str(args.data / queries)]
        if args.ablation:
            command.append("--ablation")
        print("$", " ".join(command[2:]).replace("recommender.cli", "recommender"), file=sys.stderr, flush=True)
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        reports.append(json.loads(result.stdout))
    print("| set | task | metric | recommender | tfidf | bm25 | best baseline | margin |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for report in reports:
        systems = report["systems"]
        for metric in systems["tfidf"]:
            baselines = {name: m[metric] for name, m in systems.items() if not name.startswith("recommender")}
            best = max(baselines.values())
            ours = systems["recommender"][metric]
            print(
                f"| {report['dataset']} | {report['task']} | {metric} | **{ours:.4f}** | "
                f"{systems['tfidf'][metric]:.4f} | {systems['bm25'][metric]:.4f} | {best:.4f} | {ours - best:+.4f} |"
            )
    if args.ablation:
        print("\n| set | variant | MAP | change | nDCG@10 | change | MAP, one per story | change |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        story = "map, one per story"
        for report in reports:
            systems = report["systems"]
            base = systems["recommender"]
            base_story = f"{base[story]:.4f}" if story in base else "–"
            print(f"| {report['dataset']} | **defaults** | {base['map']:.4f} | | {base['ndcg@10']:.4f} | | {base_story} | |")
            for name, m in systems.items():
                if name.startswith("recommender, "):
                    by_story = (f"{m[story]:.4f} | {m[story] - base[story]:+.4f}" if story in m else "– | –")
                    print(f"| {report['dataset']} | {name.removeprefix('recommender, ')} | {m['map']:.4f} | "
                          f"{m['map'] - base['map']:+.4f} | {m['ndcg@10']:.4f} | {m['ndcg@10'] - base['ndcg@10']:+.4f} | "
                          f"{by_story} |")
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
