"""Article -> related articles.

The score blends two views of each candidate, each z-scored against the
query's own distribution (estimated on a fixed sample of the archive):

* cosine of the article vectors (paraphrase, topic), and
* cosine of the TF-IDF vectors (names, places, numbers: event identity).

Candidates are the union of the nearest article vectors (FAISS) and the
articles sharing the query's most distinctive terms; each is then scored
exactly. The article itself, its near duplicates and second copies of one
story are never returned. With a filter, the list still holds k articles
whenever k matching ones exist: a selective filter is scored exactly over the
articles it allows, a broad one widens the candidate pool until k are found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from recommender.config import Settings
from recommender.version import IndexVersion

QUERY_TERMS = 32
"""Distinctive terms of the query article used to gather lexical candidates."""
EXACT_FILTER_LIMIT = 20_000
"""A filter allowing at most this many articles is scored exhaustively."""


@dataclass(frozen=True)
class Hit:
    doc_id: int
    score: float
    semantic: float
    lexical: float


def related_to_row(
    version: IndexVersion, row: int, k: int, settings: Settings, *, allowed_rows: np.ndarray | None = None
) -> list[Hit]:
    """The k articles most related to the indexed article at ``row``."""
    return rank_related(
        version,
        np.asarray(version.doc_vectors[row], dtype=np.float32),
        version.tfidf.matrix[row],
        k,
        settings,
        exclude_row=row,
        allowed_rows=allowed_rows,
    )


def rank_related(
    version: IndexVersion,
    vector: np.ndarray,
    terms: sp.csr_matrix,
    k: int,
    settings: Settings,
    *,
    exclude_row: int | None = None,
    allowed_rows: np.ndarray | None = None,
) -> list[Hit]:
    """Rank the archive against an article given by its vector and TF-IDF row
    (an indexed article, or a draft that is not in the index)."""
    n = len(version)
    if n == 0 or k <= 0 or (allowed_rows is not None and len(allowed_rows) == 0):
        return []
    semantic_stats = _stats(version.sample_vectors @ vector)
    lexical_stats = _stats(version.tfidf.pair_scores(terms, matrix=version.sample_tfidf))

    def rank(rows: np.ndarray) -> list[Hit]:
        semantic = np.asarray(version.doc_vectors[rows] @ vector, dtype=np.float32)
        lexical = version.tfidf.pair_scores(terms, rows)
        w = settings.related_semantic_weight
        score = w * _z(semantic, semantic_stats) + (1 - w) * _z(lexical, lexical_stats)
        return _select(version, rows, score, semantic, lexical, k, settings, exclude_row)

    return rank_candidates(n, k, settings, allowed_rows, lambda pool: _candidates(version, vector, terms, pool), rank)


def rank_candidates(
    n: int,
    k: int,
    settings: Settings,
    allowed_rows: np.ndarray | None,
    candidates: Callable[[int], np.ndarray],
    rank: Callable[[np.ndarray], list[Hit]],
) -> list[Hit]:
    """Rank the rows a selective filter allows exactly; otherwise rank a pool
    of candidates, widened 4x at a time until k hits survive filters and dedup."""
    if allowed_rows is not None and len(allowed_rows) <= EXACT_FILTER_LIMIT:
        return rank(np.asarray(allowed_rows, dtype=np.int64))
    pool = min(n, max(settings.candidates, 4 * k))
    while True:
        rows = candidates(pool)
        if allowed_rows is not None:
            rows = rows[np.isin(rows, allowed_rows, assume_unique=True)]
        hits = rank(rows)
        if len(hits) >= k or pool >= n:
            return hits
        pool = min(n, pool * 4)


def _candidates(version: IndexVersion, vector: np.ndarray, terms: sp.csr_matrix, pool: int) -> np.ndarray:
    n = len(version)
    if pool >= n:
        return np.arange(n)
    _, ids = version.docs.search(vector.reshape(1, -1), pool + 1)
    dense_rows = version.rows_of(ids[0][ids[0] >= 0])
    lexical = version.tfidf.scores(_strongest_terms(terms, QUERY_TERMS))
    lexical_rows = np.argpartition(-lexical, pool - 1)[:pool]
    return np.union1d(dense_rows, lexical_rows[lexical[lexical_rows] > 0])


def _strongest_terms(terms: sp.csr_matrix, m: int) -> sp.csr_matrix:
    if terms.nnz <= m:
        return terms
    keep = np.argpartition(-terms.data, m - 1)[:m]
    return sp.csr_matrix((terms.data[keep], terms.indices[keep], [0, m]), shape=terms.shape)


def _select(
    version: IndexVersion,
    rows: np.ndarray,
    score: np.ndarray,
    semantic: np.ndarray,
    lexical: np.ndarray,
    k: int,
    settings: Settings,
    exclude_row: int | None,
) -> list[Hit]:
    excluded_story = int(version.story_ids[exclude_row]) if exclude_row is not None else None
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


def _stats(values: np.ndarray) -> tuple[float, float]:
    std = float(np.std(values))
    return float(np.mean(values)), (std if std > 1e-9 else 1.0)


def _z(values: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    return (values - stats[0]) / stats[1]
