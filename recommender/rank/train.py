"""Fitting the related-list ranker: a logistic regression over the signals,
then an isotonic map from its score to a confidence. Used by
scripts/train_ranker.py (which gathers the development sets); scikit-learn
is needed here only, never on the request path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommender.evaluate import story_average_precision
from recommender.rank.model import Ranker
from recommender.rank.signals import SIGNALS

DEPTH = 100
LIST = 10


@dataclass
class SetData:
    name: str
    x: np.ndarray  # all candidate rows of all queries
    y: np.ndarray
    query: np.ndarray  # query number of each row
    story: np.ndarray  # the candidate's engine story (one item per story in a list)
    cluster: np.ndarray  # the candidate's copy cluster (evaluation's, for story MAP)
    relevant_clusters: list[set[int]]

    def rows_of(self, q: int) -> np.ndarray:
        """The candidate rows of query ``q`` (rows are stored query by query)."""
        if not hasattr(self, "_bounds"):
            self._bounds = np.searchsorted(self.query, np.arange(int(self.query.max()) + 2))
        return np.arange(self._bounds[q], self._bounds[q + 1])


def fit(sets: list[SetData], names: list[str], c: float) -> Ranker:
    from sklearn.linear_model import LogisticRegression

    columns = [list(SIGNALS).index(n) for n in names]
    x = np.vstack([s.x[:, columns] for s in sets]).astype(np.float64)
    y = np.concatenate([s.y for s in sets])
    weight = np.concatenate([np.full(len(s.y), 1.0 / len(s.y)) for s in sets]) * len(y) / len(sets)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit((x - mean) / scale, y, sample_weight=weight)
    ranker = Ranker(tuple(names), mean, scale, model.coef_[0], float(model.intercept_[0]),
                    np.array([-50.0, 50.0]), np.array([0.0, 1.0]))
    return calibrate(ranker, sets)


def ranked(ranker: Ranker, data: SetData, q: int, depth: int):
    """One list: the pool by score, one item per story (as the served path)."""
    at = data.rows_of(q)
    columns = [list(SIGNALS).index(n) for n in ranker.names]
    score = ranker.score(data.x[at][:, columns].astype(np.float64))
    order = at[np.argsort(-score, kind="stable")]
    _, first = np.unique(data.story[order], return_index=True)
    keep = order[np.sort(first)][:depth]
    return keep, ranker.score(data.x[keep][:, columns].astype(np.float64))


def calibrate(ranker: Ranker, sets: list[SetData]) -> Ranker:
    """Isotonic map from the score to "related" on the items of k = 10 lists."""
    from sklearn.isotonic import IsotonicRegression

    scores, labels, weights = [], [], []
    for data in sets:
        n_queries = int(data.query.max()) + 1
        for q in range(n_queries):
            rows, score = ranked(ranker, data, q, LIST)
            scores.append(score)
            labels.append(data.y[rows])
            weights.append(np.full(len(rows), 1.0 / (n_queries * LIST)))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(np.concatenate(scores), np.concatenate(labels).astype(float), sample_weight=np.concatenate(weights))
    x, y = iso.X_thresholds_, iso.y_thresholds_
    return Ranker(ranker.names, ranker.mean, ranker.scale, ranker.weights, ranker.bias, x, y)


def story_map(ranker: Ranker, data: SetData, min_confidence: float = 0.0) -> dict[str, float]:
    aps, shown, related, short = [], 0, 0, 0
    for q, relevant in enumerate(data.relevant_clusters):
        rows, score = ranked(ranker, data, q, DEPTH)
        keep = ranker.confidence(score) >= min_confidence
        rows = rows[keep]
        aps.append(story_average_precision(list(range(len(rows))), relevant,
                                           dict(enumerate(data.cluster[rows].tolist())), DEPTH))
        top = rows[:LIST]
        shown += len(top)
        related += int(data.y[top].sum())
        short += len(top) < LIST
    n = len(data.relevant_clusters)
    return {"story map": round(float(np.mean(aps)), 4), "precision@shown": round(related / max(shown, 1), 4),
            "shorter than 10": round(short / n, 4), "items per list": round(shown / n, 2)}


