"""Article -> related articles.

The score blends two views of each candidate, each z-scored against the
query's own distribution (estimated on a fixed sample of the archive):

* cosine of the article vectors (paraphrase, topic), and
* cosine of the TF-IDF vectors (names, places, numbers: event identity).

The article itself, its near duplicates and second copies of one story are
never returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recommender.config import Settings
from recommender.version import IndexVersion

STATS_SAMPLE = 2048


@dataclass(frozen=True)
class Hit:
    doc_id: int
    score: float
    semantic: float
    lexical: float


def related_to_row(version: IndexVersion, row: int, k: int, settings: Settings) -> list[Hit]:
    """The k articles most related to the indexed article at ``row``."""
    return rank_related(
        version,
        np.asarray(version.doc_vectors[row], dtype=np.float32),
        version.tfidf.matrix[row],
        k,
        settings,
        exclude_row=row,
    )


def rank_related(
    version: IndexVersion,
    vector: np.ndarray,
    terms: sp.csr_matrix,
    k: int,
    settings: Settings,
    *,
    exclude_row: int | None = None,
) -> list[Hit]:
    """Rank the archive against an article given by its vector and TF-IDF row
    (an indexed article, or a draft that is not in the index)."""
    n = len(version)
    if n == 0 or k <= 0:
        return []
    pool = min(n, max(settings.candidates, 4 * k))
    lexical_all = version.tfidf.scores(terms)
    _, dense_ids = version.docs.search(vector.reshape(1, -1), pool + 1)
    dense_rows = version.rows_of(dense_ids[0][dense_ids[0] >= 0])
    lexical_rows = np.argpartition(-lexical_all, pool - 1)[:pool] if pool < n else np.arange(n)
    rows = np.union1d(dense_rows, lexical_rows)

    semantic = np.asarray(version.doc_vectors[rows] @ vector, dtype=np.float32)
    lexical = lexical_all[rows]
    sample = _sample_rows(n)
    semantic_sample = np.asarray(version.doc_vectors[sample] @ vector)
    w = settings.related_semantic_weight
    score = w * _standardize(semantic, semantic_sample) + (1 - w) * _standardize(lexical, lexical_all[sample])

    excluded_story = version.story_ids[exclude_row] if exclude_row is not None else None
    seen: set[int] = set()
    hits: list[Hit] = []
    for i in np.argsort(-score, kind="stable"):
        row = int(rows[i])
        story = int(version.story_ids[row])
        if row == exclude_row or story == excluded_story or story in seen:
            continue
        if is_near_duplicate(semantic[i], lexical[i], settings):
            continue  # a copy of the article asked about
        seen.add(story)
        hits.append(Hit(int(version.doc_ids[row]), float(score[i]), float(semantic[i]), float(lexical[i])))
        if len(hits) == k:
            break
    return hits


def is_near_duplicate(semantic: float, lexical: float, settings: Settings) -> bool:
    """One story told twice: syndicated, re-published or lightly updated."""
    return semantic >= settings.duplicate_threshold or (
        lexical >= settings.lexical_duplicate_threshold and semantic >= settings.duplicate_floor
    )


def _sample_rows(n: int) -> np.ndarray:
    if n <= STATS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))


def _standardize(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    std = float(np.std(reference))
    return (values - float(np.mean(reference))) / (std if std > 1e-9 else 1.0)
