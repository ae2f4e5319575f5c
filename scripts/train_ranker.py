#!/usr/bin/env python
"""Fit the related-list ranker (recommender/rank/related.json) on the development sets.

    python scripts/train_ranker.py --data ../shared/data [--ablation] [--out docs/ranker-training.json]

For every set, each labelled article's candidate pool is gathered exactly as
the served path gathers it (recommender.related._candidates, 4 x k deep for
k = 100), and every signal of recommender.rank.signals is computed for it.
"Related" is the set's label: the same incident or event (gva_dev,
NewsWCL50), the same story or topic (WikiRef220), the same topic (BBC, AG
News). Candidates of the article's own story (its copies) are left out: a
list never shows them.

* The combiner is a logistic regression on standardized signals; every set
  weighs the same in the fit, whatever its size.
* Leave-one-set-out: for each set, a model fitted on the others ranks it;
  the story MAP of those lists (to depth 100) is the figure that counts.
* The confidence is an isotonic regression from the score to "related", on
  the items of k = 10 lists, every set weighing the same.
* The default floor is the lowest confidence at which, on every set, at
  least 90% of the items shown (of k = 10 lists) are related, with the
  leave-one-set-out models (so the check is on sets the model did not see).

Only article fields are signals; labels are used only as the target.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recommender.config import Settings  # noqa: E402
from recommender.evaluate import load_dataset, related_queries  # noqa: E402
from recommender.rank import SIGNALS, Ranker, features, query_for_row  # noqa: E402
from recommender.rank.train import DEPTH, SetData, fit, story_map  # noqa: E402

SETS = ["gva_dev.jsonl", "newswcl50.jsonl", "wikiref220.jsonl", "bbc_news.jsonl", "agnews_test.jsonl"]
PRECISION_TARGET = 0.90


def gather(settings: Settings, path: Path, limit: int | None) -> SetData:
    from recommender.evaluate import _prepare_engine
    from recommender.related import _candidates

    articles, groups = load_dataset(path)
    queries, cluster_of = related_queries(articles, groups)
    if limit:
        queries = queries[:: max(1, len(queries) // limit)]
    engine = _prepare_engine(settings, articles, progress=True)
    version = engine.live.current
    by_doc = {s.doc_id: s.article.id for s in engine.store.iter_articles()}
    row_ids = [by_doc[int(d)] for d in version.doc_ids]
    row_of = {a: r for r, a in enumerate(row_ids)}
    group_of_row = np.array([hash(groups.get(a)) if groups.get(a) is not None else -r - 1
                             for r, a in enumerate(row_ids)])
    cluster_of_row = np.array([cluster_of[a] for a in row_ids])
    names = list(SIGNALS)
    xs, ys, qs, stories, clusters, relevant = [], [], [], [], [], []
    pool = max(settings.candidates, 4 * (DEPTH + 5))
    for number, (article_id, _, relevant_clusters) in enumerate(queries):
        row = row_of[article_id]
        query = query_for_row(version, row)
        rows = _candidates(version, query, pool)
        rows = rows[version.story_ids[rows] != version.story_ids[row]]
        values, _ = features(version, query, rows, names)
        xs.append(values)
        ys.append(group_of_row[rows] == group_of_row[row])
        qs.append(np.full(len(rows), number))
        stories.append(version.story_ids[rows])
        clusters.append(cluster_of_row[rows])
        relevant.append(relevant_clusters)
    engine.close()
    return SetData(path.stem, np.vstack(xs), np.concatenate(ys), np.concatenate(qs), np.concatenate(stories),
                   np.concatenate(clusters), relevant)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="*", default=SETS)
    parser.add_argument("--limit", type=int, default=1500, help="at most this many query articles per set")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the regression")
    parser.add_argument("--ablation", action="store_true", help="also refit with each signal left out")
    parser.add_argument("--model", type=Path, default=Path("recommender/rank/related.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/ranker-training.json"))
    parser.add_argument("--cache", type=Path, help="keep the gathered candidates here (pickles) for reruns")
    args = parser.parse_args()

    started = time.time()
    settings = Settings.load({"min_confidence": 0.0})
    sets = []
    for name in args.sets:
        data_dir = Path("indexes/eval") / Path(name).stem
        cached = args.cache / f"{Path(name).stem}.pickle" if args.cache else None
        if cached and cached.exists():
            sets.append(pickle.loads(cached.read_bytes()))
        else:
            sets.append(gather(settings.replace(data_dir=data_dir), args.data / name, args.limit))
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(pickle.dumps(sets[-1]))
        print(f"{name}: {len(sets[-1].relevant_clusters)} queries, {len(sets[-1].y)} candidates, "
              f"{sets[-1].y.mean():.3f} related", file=sys.stderr)
    names = list(SIGNALS)

    def loso(names: list[str]) -> dict[str, dict]:
        out = {}
        for i, held in enumerate(sets):
            model = fit([s for j, s in enumerate(sets) if j != i], names, args.c)
            out[held.name] = {"model": model, **story_map(model, held)}
        return out

    held_out = loso(names)
    # The floor: the lowest confidence where every set's shown items are >= 90% related (held-out models).
    floors = np.round(np.arange(0.0, 0.96, 0.05), 2)
    floor_table = {}
    for f in floors:
        floor_table[float(f)] = {s.name: story_map(held_out[s.name]["model"], s, float(f)) for s in sets}
    chosen = next((f for f, rows in floor_table.items()
                   if all(r["precision@shown"] >= PRECISION_TARGET for r in rows.values())), None)
    final = fit(sets, names, args.c)
    report = {
        "trained": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "sets": {s.name: {"queries": len(s.relevant_clusters), "candidates": int(len(s.y)),
                          "related share": round(float(s.y.mean()), 4)} for s in sets},
        "signals": names,
        "leave one set out": {k: {m: v for m, v in r.items() if m != "model"} for k, r in held_out.items()},
        "all sets (in sample)": {s.name: story_map(final, s) for s in sets},
        "floor": chosen,
        "floor table (held-out models)": floor_table,
        "weights": dict(zip(names, np.round(final.weights, 4).tolist())),
    }
    if args.ablation:
        report["ablation (leave one set out, story map)"] = {
            f"without {name}": {k: r["story map"] for k, r in loso([n for n in names if n != name]).items()}
            for name in names
        }
    info = {"trained": report["trained"], "sets": list(report["sets"]), "floor": chosen,
            "leave one set out story map": {k: r["story map"] for k, r in report["leave one set out"].items()}}
    Ranker(final.names, final.mean, final.scale, final.weights, final.bias, final.calibration_x,
           final.calibration_y, info).save(args.model)
    report["seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "floor table (held-out models)"}, indent=1))
    if chosen is not None:
        print(f"floor {chosen}:", json.dumps(floor_table[chosen], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
