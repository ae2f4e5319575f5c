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
MMR_WINDOW = 50
"""Diversity chooses among this many of the best candidates."""
"""A filter allowing at most this many articles is scored exhaustively."""


@dataclass(frozen=True)
class Hit:
    doc_id: int
    score: float
    semantic: float
    lexical: float
    manual: bool = False
    """Placed by an editor's pin rather than ranked."""


@dataclass(frozen=True)
class Policy:
    """What a list needs beyond similarity, decided per request."""

    excluded_rows: np.ndarray | None = None
    """Sorted rows never shown: blocked, embargoed."""
    adjust: Callable[[np.ndarray], np.ndarray] | None = None
    """Added to the blended score of the given rows: boosts, buries, recency."""
    mmr_lambda: float = 1.0
    """Maximal marginal relevance: 1 ranks by relevance alone; lower values
    trade relevance for lists that do not repeat one angle."""
    prefer_original: bool = True
    """Show the earliest published copy of a story (see ``story_ids``)."""
    dedup: bool = True
    """One item per story; off, only the article itself is left out."""


NO_POLICY = Policy()


def related_to_row(
    version: IndexVersion, row: int, k: int, settings: Settings, *, allowed_rows: np.ndarray | None = None,
    policy: Policy = NO_POLICY,
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
        policy=policy,
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
    policy: Policy = NO_POLICY,
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
        if policy.adjust is not None:
            score = score + policy.adjust(rows)
        return _select(version, rows, score, semantic, lexical, k, settings, exclude_row, policy)

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
        # Rows that exist in this version and are allowed, all scored: a rare
        # section still fills the list.
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
    policy: Policy = NO_POLICY,
) -> list[Hit]:
    """Best first, one article per story, never the article itself or a copy of it."""
    if policy.excluded_rows is not None and len(policy.excluded_rows):
        keep = ~np.isin(rows, policy.excluded_rows)
        rows, score, semantic, lexical = rows[keep], score[keep], semantic[keep], lexical[keep]
    excluded_story = int(version.story_ids[exclude_row]) if exclude_row is not None else None
    seen: set[int] = set()
    picked: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        row = int(rows[i])
        story = int(version.story_ids[row])
        if row == exclude_row:
            continue
        if policy.dedup:
            if story == excluded_story or story in seen:
                continue
            if is_near_duplicate(semantic[i], lexical[i], settings):
                continue  # a copy of the article asked about
            seen.add(story)
        picked.append(int(i))
        if len(picked) == (k if policy.mmr_lambda >= 1.0 else max(k, MMR_WINDOW)):
            break
    if policy.mmr_lambda < 1.0:
        # Diversity re-orders the head of the list (the part readers see).
        head = mmr(version, rows, score, picked[:MMR_WINDOW], min(k, MMR_WINDOW), policy.mmr_lambda)
        picked = head + [i for i in picked if i not in set(head)]
    shown = set(rows.tolist()) if policy.prefer_original and policy.dedup else set()
    hits = []
    for i in picked[:k]:
        row = int(rows[i])
        # A story is shown by its original (its earliest published copy, see
        # near_duplicate_clusters) when that copy is among the rows allowed here.
        original = int(version.story_ids[row])
        if original != row and original in shown and original != exclude_row:
            row = original
        hits.append(Hit(int(version.doc_ids[row]), float(score[i]), float(semantic[i]), float(lexical[i])))
    return hits


def recency_adjust(
    version: IndexVersion, half_life_days: float, weight: float, today: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Score change by age: 0 for an article published ``today``, -weight/2 at
    one half-life, tending to -weight; none for undated articles."""

    def adjust(rows: np.ndarray) -> np.ndarray:
        age = np.maximum(today - version.published_days[rows], 0.0)
        return np.nan_to_num(weight * (0.5 ** (age / half_life_days) - 1.0))

    return adjust


def combine(*adjustments: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray], np.ndarray] | None:
    active = [a for a in adjustments if a is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda rows: sum(a(rows) for a in active)


def mmr(version: IndexVersion, rows: np.ndarray, score: np.ndarray, order: list[int], k: int, lam: float) -> list[int]:
    """Greedy maximal marginal relevance over the best candidates: each step
    takes the one with the best ``lam * relevance - (1 - lam) * similarity to
    those already taken`` (relevance scaled to [0, 1])."""
    if len(order) <= 1:
        return order
    idx = np.asarray(order)
    rel = score[idx]
    rel = (rel - rel.min()) / max(float(rel.max() - rel.min()), 1e-9)
    vectors = np.asarray(version.doc_vectors[rows[idx]], dtype=np.float32)
    similarity = vectors @ vectors.T
    taken = [0]
    closest = similarity[0].copy()
    available = np.ones(len(idx), dtype=bool)
    available[0] = False
    while len(taken) < min(k, len(idx)):
        value = lam * rel - (1 - lam) * closest
        value[~available] = -np.inf
        j = int(np.argmax(value))
        taken.append(j)
        available[j] = False
        closest = np.maximum(closest, similarity[j])
    return [int(idx[j]) for j in taken]


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
