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

from devsets import DATA, EVALUATED


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with the JSONL sets")
    parser.add_argument("--out", type=Path, help="also write all reports to this JSON file")
    parser.add_argument("--ablation", action="store_true",
                        help="also print the ablation table (dedup, floor, recency, MMR, hybrid each switched)")
    args = parser.parse_args()
    reports = []
    for dev in EVALUATED:
        assert dev.task is not None
        command = [sys.executable, "-m", "recommender.cli", "eval", dev.task, "--dataset", str(dev.path(args.data)),
                   "--json"]
        queries = dev.queries_path(args.data)
        if queries:
            command += ["--queries", str(queries)]
        if args.ablation:
            command.append("--ablation")
        print("$", " ".join(command[2:]).replace("recommender.cli", "recommender"), file=sys.stderr, flush=True)
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        reports.append(json.loads(result.stdout))
    print(related_table([r for r in reports if r["task"] == "related"]))
    print()
    print(search_table([r for r in reports if r["task"] == "search"]))
    if args.ablation:
        print()
        print(ablation_table(reports))
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return 0


def related_table(reports: list[dict]) -> str:
    lines = ["| set | system | story MAP | raw MAP | dup@10 | lists shorter than 10 |", "|---|---|---:|---:|---:|---:|"]
    averages: dict[str, list[dict]] = {}
    for report in reports:
        systems = {n: m for n, m in report["systems"].items() if not n.startswith("recommender, ")}
        best = max(m["story map"] for n, m in systems.items() if n != "recommender")
        for name, m in systems.items():
            averages.setdefault(name, []).append(m)
            mark = f" (**{m['story map'] - best:+.4f}** on the best baseline)" if name == "recommender" else ""
            lines.append(f"| {report['dataset']} | {name} | {m['story map']:.4f}{mark} | {m['map']:.4f} | "
                         f"{m['dup@10']:.4f} | {m['shorter than 10']:.4f} |")
    for name, rows in averages.items():
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("story map", "map", "dup@10", "shorter than 10")}
        lines.append(f"| **average** | {name} | {mean['story map']:.4f} | {mean['map']:.4f} | {mean['dup@10']:.4f} | "
                     f"{mean['shorter than 10']:.4f} |")
    return "\n".join(lines)


def search_table(reports: list[dict]) -> str:
    lines = ["| set | system | MAP | nDCG@10 | MRR | recall@100 |", "|---|---|---:|---:|---:|---:|"]
    for report in reports:
        systems = {n: m for n, m in report["systems"].items() if not n.startswith("recommender, ")}
        best = max(m["map"] for n, m in systems.items() if n != "recommender")
        for name, m in systems.items():
            mark = f" (**{m['map'] - best:+.4f}** on the best baseline)" if name == "recommender" else ""
            lines.append(f"| {report['dataset']} | {name} | {m['map']:.4f}{mark} | {m['ndcg@10']:.4f} | "
                         f"{m['mrr']:.4f} | {m['recall@100']:.4f} |")
    return "\n".join(lines)


def ablation_table(reports: list[dict]) -> str:
    lines = ["| set | task | variant | headline metric | change | dup@10 |", "|---|---|---|---:|---:|---:|"]
    for report in reports:
        metric = "story map" if report["task"] == "related" else "map"
        base = report["systems"]["recommender"]
        dup = f"{base['dup@10']:.4f}" if "dup@10" in base else "–"
        lines.append(f"| {report['dataset']} | {report['task']} | **defaults** | {base[metric]:.4f} | | {dup} |")
        for name, m in report["systems"].items():
            if name.startswith("recommender, "):
                dup = f"{m['dup@10']:.4f}" if "dup@10" in m else "–"
                lines.append(f"| {report['dataset']} | {report['task']} | {name.removeprefix('recommender, ')} | "
                             f"{m[metric]:.4f} | {m[metric] - base[metric]:+.4f} | {dup} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
