"""Fitting the related-list ranker (``recommender.ranker``): a linear score
over the signals, fitted to the story MAP of the lists it makes, then a
logistic confidence over the absolute similarities. Used by
scripts/train_ranker.py, which gathers the development sets; scipy's
optimizers run here only, never on the request path."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from recommender.evaluation.metrics import story_average_precision
from recommender.rank.signals import SIGNALS
from recommender.ranker import Ranker

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


def fit(sets: list[SetData], names: list[str], *, calibration_sets: list[SetData] | None = None,
        queries_per_set: int = 300, seed: int = 0, calibrate_to: bool = True) -> Ranker:
    """A linear score over the signals (in their own units: z-scores,
    cosines, log days), fitted to what is judged: the story MAP of the lists
    it makes. A pairwise logistic regression (within each list, a related
    candidate above an unrelated one) gives the start; Powell's method then
    maximizes the mean story MAP over the sets (every set weighs the same,
    ``queries_per_set`` lists of each), with each weight kept to its sign
    (``SIGN``). Then the isotonic confidence, on ``calibration_sets``
    (default: the same sets)."""
    from scipy.optimize import minimize

    columns = [list(SIGNALS).index(n) for n in names]
    signs = np.array([SIGN.get(n, 0) for n in names])
    rng = np.random.default_rng(seed)
    start = _pairwise_start(sets, columns, signs, rng)
    samples = [rng.choice(len(d.relevant_clusters), min(queries_per_set, len(d.relevant_clusters)), replace=False)
               for d in sets]

    def signed(w: np.ndarray) -> np.ndarray:
        return np.where(signs > 0, np.abs(w), np.where(signs < 0, -np.abs(w), w))

    def objective(w: np.ndarray) -> float:
        return -float(np.mean([_story_map(d, columns, signed(w), q) for d, q in zip(sets, samples)]))

    result = minimize(objective, start, method="Powell", options={"maxfev": 400, "xtol": 1e-2, "ftol": 1e-4})
    ranker = Ranker(tuple(names), np.zeros(len(names)), np.ones(len(names)), signed(result.x), 0.0,
                    np.array([-50.0, 50.0]), np.array([0.0, 1.0]))
    return calibrate(ranker, calibration_sets or sets) if calibrate_to else ranker


def _story_map(data: SetData, columns: list[int], weights: np.ndarray, queries) -> float:
    aps = []
    for q in queries:
        at = data.rows_of(q)
        keep = at[_one_per_story(data, at, data.x[at][:, columns] @ weights, DEPTH)]
        aps.append(_average_precision(data, q, keep))
    return float(np.mean(aps)) if aps else 0.0


def _one_per_story(data: SetData, at: np.ndarray, score: np.ndarray, depth: int) -> np.ndarray:
    """Positions (in ``at``) of a list as the served path makes it: best
    score first, one item per story, ``depth`` items."""
    order = np.argsort(-score, kind="stable")
    _, first = np.unique(data.story[at[order]], return_index=True)
    return order[np.sort(first)][:depth]


def _average_precision(data: SetData, q: int, rows: np.ndarray) -> float:
    """Story average precision of the list ``rows`` of query ``q``."""
    return story_average_precision(list(range(len(rows))), data.relevant_clusters[q],
                                   dict(enumerate(data.cluster[rows].tolist())), DEPTH)


def _pairwise_start(sets: list[SetData], columns: list[int], signs: np.ndarray, rng) -> np.ndarray:
    """Weights of a pairwise logistic regression (a linear RankNet), every set
    and every list within a set weighing the same."""
    diffs, weights = [], []
    for data in sets:
        x = data.x[:, columns].astype(np.float64)
        set_diffs = []
        for q in range(int(data.query.max()) + 1):
            rows = data.rows_of(q)
            pos, neg = rows[data.y[rows]], rows[~data.y[rows]]
            if len(pos) == 0 or len(neg) == 0:
                continue
            pos = rng.choice(pos, min(len(pos), 10), replace=False)
            neg = rng.choice(neg, min(len(neg), 30), replace=False)
            d = (x[pos][:, None, :] - x[neg][None, :, :]).reshape(-1, len(columns))
            set_diffs.append((d, np.full(len(d), 1.0 / len(d))))
        w = np.concatenate([sw for _, sw in set_diffs])
        diffs.append(np.vstack([d for d, _ in set_diffs]))
        weights.append(w / w.sum())
    d, w = np.vstack(diffs), np.concatenate(weights)
    return _pairwise_logistic(d, w / w.sum(), list(signs), l2=1e-4)


SIGN = {"semantic": 1, "semantic_z": 1, "lexical": 1, "lexical_z": 1, "entities": 1, "lead": 1, "days_apart": -1}
"""The direction each signal may push: more alike is never less related, and
further apart in time never more. Without these bounds, correlated signals
(a raw cosine and its z-score) take weights of opposite sign that fit one
set and fail on the next."""


def _pairwise_logistic(d: np.ndarray, w: np.ndarray, signs: list[int], l2: float) -> np.ndarray:
    """Minimize sum_i w_i log(1 + exp(-d_i . beta)) + l2 / 2 |beta|^2, with
    beta_j >= 0 where signs[j] = 1 and <= 0 where it is -1 (L-BFGS-B)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss(beta: np.ndarray):
        margin = d @ beta
        value = float(w @ np.logaddexp(0.0, -margin)) + 0.5 * l2 * float(beta @ beta)
        grad = -(d.T @ (w * expit(-margin))) + l2 * beta
        return value, grad

    bounds = [(0, None) if s > 0 else (None, 0) if s < 0 else (None, None) for s in signs]
    start = np.array([0.1 * s for s in signs], dtype=np.float64)
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500})
    return result.x


def ranked(ranker: Ranker, data: SetData, q: int, depth: int):
    """One list: the pool by score, one item per story (as the served path):
    its rows, scores and confidences."""
    at = data.rows_of(q)
    columns = [list(SIGNALS).index(n) for n in ranker.names]
    values = data.x[at][:, columns].astype(np.float64)
    score = ranker.score(values)
    keep = _one_per_story(data, at, score, depth)
    return at[keep], score[keep], ranker.confidence(score[keep], values[keep])


CALIBRATION_INPUTS = ("semantic", "lexical", "entities", "lead")
"""Absolute similarities only: a list's score also weighs the dates, which tell
one incident from the next in local news (gva_dev) but would mark every
long-running story (a bridge, a trial) as unrelated months later."""


def calibrate(ranker: Ranker, sets: list[SetData]) -> Ranker:
    """Platt scaling on the items of k = 10 lists: a logistic regression from
    the absolute similarities (``CALIBRATION_INPUTS``) to "related", every set
    weighing the same."""
    inputs = [n for n in CALIBRATION_INPUTS if n == "score" or n in ranker.names]
    uncalibrated = replace(ranker, calibration_names=(), calibration_weights=np.zeros(0))
    columns = [list(SIGNALS).index(n) for n in ranker.names]
    xs, labels, weights = [], [], []
    for data in sets:
        n_queries = int(data.query.max()) + 1
        for q in range(n_queries):
            rows, score, _ = ranked(uncalibrated, data, q, LIST)
            values = data.x[rows][:, columns].astype(np.float64)
            xs.append(np.column_stack([score if n == "score" else values[:, ranker.names.index(n)] for n in inputs]))
            labels.append(data.y[rows])
            weights.append(np.full(len(rows), 1.0 / (n_queries * LIST)))
    x, y, w = np.vstack(xs), np.concatenate(labels), np.concatenate(weights)
    coef, bias = _monotone_logistic(x, y.astype(np.float64), w / w.sum())
    return replace(ranker, calibration_names=tuple(inputs), calibration_weights=coef, calibration_bias=bias)


def _monotone_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-4) -> tuple[np.ndarray, float]:
    """Weighted logistic regression whose weights are all >= 0: the more alike
    two articles are, by any measure, the more confident, never the less
    (left free, the weight of one cosine turns negative to fit one set)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss(theta: np.ndarray):
        beta, b = theta[:-1], theta[-1]
        z = x @ beta + b
        value = float(w @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(beta @ beta)
        residual = w * (expit(z) - y)
        return value, np.concatenate([x.T @ residual + l2 * beta, [residual.sum()]])

    bounds = [(0, None)] * x.shape[1] + [(None, None)]
    result = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"maxiter": 1000})
    return result.x[:-1], float(result.x[-1])


def story_map(ranker: Ranker, data: SetData, min_confidence: float = 0.0) -> dict[str, float]:
    aps, shown, related, short = [], 0, 0, 0
    for q in range(len(data.relevant_clusters)):
        rows, _, confidence = ranked(ranker, data, q, DEPTH)
        rows = rows[confidence >= min_confidence]
        aps.append(_average_precision(data, q, rows))
        top = rows[:LIST]
        shown += len(top)
        related += int(data.y[top].sum())
        short += len(top) < LIST
    n = len(data.relevant_clusters)
    return {"story map": round(float(np.mean(aps)), 4), "precision@shown": round(related / max(shown, 1), 4),
            "shorter than 10": round(short / n, 4), "items per list": round(shown / n, 2)}


