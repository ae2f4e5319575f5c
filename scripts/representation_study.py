#!/usr/bin/env python
"""How should a long article be represented? Compares, on the related task:

* lead:   the first passage (title + opening words),
* mean:   the mean of all passages,
* lead+mean: their sum (the shipped choice),

alone and blended with TF-IDF (scores z-scored per query, exhaustive ranking).
It reads the passage vectors cached by `recommender eval related` in
indexes/eval/<set>, so run scripts/eval_all.py (or the eval commands) first:

    python scripts/representation_study.py --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from devsets import DATA, named

from recommender.config import Settings
from recommender.embedders import resolve
from recommender.evaluation.metrics import average_precision
from recommender.evaluation.runs import load_dataset
from recommender.lexical import TfidfModel
from recommender.store import SqliteStore
from recommender.text import document_text

SETS = [s.name for s in named(("bbc_news", "newswcl50", "wikiref220"), "related")]


def z(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean(axis=1, keepdims=True)) / scores.std(axis=1, keepdims=True)


def mean_ap(scores: np.ndarray, ids: list[str], groups: dict) -> float:
    values = []
    label = np.array([str(groups[i]) for i in ids])
    for i, article_id in enumerate(ids):
        if groups[article_id] is None:
            continue
        relevant = set(np.array(ids)[label == label[i]]) - {article_id}
        if not relevant:
            continue
        row = scores[i].copy()
        row[i] = -np.inf
        values.append(average_precision([ids[j] for j in np.argsort(-row, kind="stable")[:-1]], relevant))
    return float(np.mean(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--weight", type=float, default=0.6, help="vector share of the blend")
    args = parser.parse_args()
    print("| representation | " + " | ".join(f"{s} alone | {s} blend {args.weight}" for s in SETS) + " |")
    print("|---|" + "---:|" * (2 * len(SETS)))
    rows: dict[str, list[str]] = {"lead": [], "mean": [], "lead+mean": []}
    for name in SETS:
        articles, groups = load_dataset(args.data / f"{name}.jsonl")
        settings = Settings.load({"data_dir": Path("indexes/eval") / name}, environ={})
        with SqliteStore.open(settings.store_path, create=False) as store:
            doc_ids = {s.article.id: s.doc_id for s in store.iter_articles()}
            cached = dict(store.iter_embeddings(resolve(settings).key))
        missing = [a.id for a in articles if doc_ids.get(a.id) not in cached]
        if missing:
            raise SystemExit(f"{name}: {len(missing)} articles have no cached vectors; run the eval first")
        ids = [a.id for a in articles]
        chunks = [cached[doc_ids[i]] for i in ids]
        lead = np.vstack([c[0] for c in chunks])
        mean = np.vstack([c.mean(axis=0) for c in chunks])
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        both = lead + mean
        both /= np.linalg.norm(both, axis=1, keepdims=True)
        tfidf = TfidfModel.build(document_text(a.title, a.body) for a in articles)
        lexical = z((tfidf.matrix @ tfidf.matrix.T).toarray())
        for label, vectors in (("lead", lead), ("mean", mean), ("lead+mean", both)):
            semantic = vectors @ vectors.T
            blend = args.weight * z(semantic) + (1 - args.weight) * lexical
            rows[label] += [f"{mean_ap(semantic, ids, groups):.4f}", f"{mean_ap(blend, ids, groups):.4f}"]
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
