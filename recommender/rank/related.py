"""Article -> related articles.

Candidates are the union of the nearest article vectors (FAISS) and the
articles sharing the query's most distinctive terms. Each is then scored
exactly by the version's ranker (``recommender.rank``): a logistic
regression over event signals (names and numbers shared, days apart,
headline and opening, distinctive words) and topical ones (the article
vectors), with a calibrated confidence. Items below the policy's confidence
floor are not shown. The article itself and copies of one text (see
``recommender.copies``) are never shown twice. With a filter, the list still
holds k articles whenever k matching ones pass the floor: a selective filter
is scored exactly over the articles it allows, a broad one widens the
candidate pool until k are found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recommender.config import Settings
from recommender.rank.signals import Query, Raw, features, query_for_row
from recommender.ranker import Ranker
from recommender.view import View, in_sorted

QUERY_TERMS = 32
"""Distinctive terms of the query article used to gather lexical candidates."""
EXACT_FILTER_LIMIT = 20_000
"""A filter allowing at most this many articles is scored exhaustively."""
MMR_WINDOW = 50
"""Diversity chooses among this many of the best candidates."""


@dataclass(frozen=True)
class Hit:
    doc_id: int
    score: float
    semantic: float = 0.0
    lexical: float = 0.0
    source: str = "auto"
    """"auto" (ranked), "manual" (an editor's pin) or "fallback" (filler the
    request asked for when fewer than k items pass the floor)."""
    confidence: float | None = None
    """The calibrated chance that a reader calls the item related (ranked items)."""

    @property
    def manual(self) -> bool:
        return self.source == "manual"


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
    dedup: bool = True
    """One item per story, never a copy of the article itself (the earliest
    published copy of a story is shown); off, only the article itself is left out."""
    min_confidence: float = 0.0
    """Ranked items below this confidence are not shown."""


NO_POLICY = Policy()


def related_to_row(
    version: View, row: int, k: int, settings: Settings, *, allowed_rows: np.ndarray | None = None,
    policy: Policy = NO_POLICY, ranker: Ranker | None = None,
) -> list[Hit]:
    """The k articles most related to the indexed article at ``row``."""
    return rank_related(version, query_for_row(version, row), k, settings, exclude_row=row,
                        allowed_rows=allowed_rows, policy=policy, ranker=ranker)


def rank_related(
    version: View,
    query: Query,
    k: int,
    settings: Settings,
    *,
    exclude_row: int | None = None,
    allowed_rows: np.ndarray | None = None,
    policy: Policy = NO_POLICY,
    ranker: Ranker | None = None,
) -> list[Hit]:
    """Rank the archive against an article (an indexed one, or a draft that is
    not in the index) with the version's ranker, or ``ranker``."""
    n = len(version)
    if n == 0 or k <= 0 or (allowed_rows is not None and len(allowed_rows) == 0):
        return []
    ranker = ranker or version.ranker

    def rank(rows: np.ndarray) -> tuple[list[Hit], bool]:
        values, raw = features(version, query, rows, list(ranker.names))
        score = ranker.score(values)
        confidence = ranker.confidence(score, values)
        if policy.adjust is not None:
            # Boosts, buries and recency are in standard deviations of the
            # list's score, whatever the ranker's scale.
            score = score + policy.adjust(rows) * max(float(np.std(score)), 1e-9)
        return _select(version, rows, score, confidence, raw, k, exclude_row, policy)

    return rank_candidates(n, k, settings, allowed_rows, lambda pool: candidate_rows(version, query, pool), rank)


def rank_candidates(
    n: int,
    k: int,
    settings: Settings,
    allowed_rows: np.ndarray | None,
    candidates: Callable[[int], np.ndarray],
    rank: Callable[[np.ndarray], tuple[list[Hit], bool]],
) -> list[Hit]:
    """Rank the rows a selective filter allows exactly; otherwise rank a pool
    of candidates, widened 4x at a time until k hits survive filters and
    dedup. ``rank`` also says when widening cannot help: the confidence floor
    already turned candidates away, and those further out are less alike."""
    if allowed_rows is not None and len(allowed_rows) <= EXACT_FILTER_LIMIT:
        # Rows that exist in this version and are allowed, all scored: a rare
        # section still fills the list.
        return rank(np.asarray(allowed_rows, dtype=np.int64))[0]
    pool = min(n, max(settings.candidates, 4 * k))
    while True:
        rows = candidates(pool)
        if allowed_rows is not None:
            rows = rows[in_sorted(rows, allowed_rows)]
        hits, floored = rank(rows)
        if len(hits) >= k or floored or pool >= n:
            return hits
        pool = min(n, pool * 4)


def candidate_rows(version: View, query: Query, pool: int) -> np.ndarray:
    """The live rows of the ``pool`` nearest article vectors and of the
    ``pool`` best keyword matches of the query's strongest terms."""
    n = len(version)
    if pool >= n:
        return version.live(np.arange(n))
    _, ids = version.docs.search(query.vector.reshape(1, -1), pool + 1)
    dense_rows = version.rows_of(ids[0][ids[0] >= 0])
    lexical_rows = version.tfidf.top_rows(strongest_terms(query.terms, QUERY_TERMS), pool)
    return np.union1d(dense_rows, version.live(lexical_rows))


def strongest_terms(terms: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """A TF-IDF row cut to its ``m`` highest weights."""
    if terms.nnz <= m:
        return terms
    keep = np.argpartition(-terms.data, m - 1)[:m]
    return sp.csr_matrix((terms.data[keep], terms.indices[keep], [0, m]), shape=terms.shape)


def _select(
    version: View,
    rows: np.ndarray,
    score: np.ndarray,
    confidence: np.ndarray,
    raw: Raw,
    k: int,
    exclude_row: int | None,
    policy: Policy = NO_POLICY,
) -> tuple[list[Hit], bool]:
    """Best first, one article per story, never the article itself or a copy
    of it, nothing below the confidence floor. Also says whether the floor
    turned a candidate away."""
    keep = np.ones(len(rows), dtype=bool) if version.alive is None else version.alive[rows]
    if policy.excluded_rows is not None and len(policy.excluded_rows):
        keep &= ~np.isin(rows, policy.excluded_rows)
    floored = False
    if policy.min_confidence > 0:
        passing = confidence >= policy.min_confidence
        floored = bool((keep & ~passing).any())
        keep &= passing
    excluded_story = int(version.story_ids[exclude_row]) if exclude_row is not None else None
    seen: set[int] = set()
    picked: list[int] = []
    for i in np.flatnonzero(keep)[np.argsort(-score[keep], kind="stable")]:
        row = int(rows[i])
        story = int(version.story_ids[row])
        if row == exclude_row:
            continue
        if policy.dedup:
            if story == excluded_story or story in seen:
                continue  # a copy of the article asked about, or of an item already listed
            seen.add(story)
        picked.append(int(i))
        if len(picked) == (k if policy.mmr_lambda >= 1.0 else max(k, MMR_WINDOW)):
            break
    if policy.mmr_lambda < 1.0:
        # Diversity re-orders the head of the list (the part readers see).
        head = mmr(version, rows, score, picked[:MMR_WINDOW], min(k, MMR_WINDOW), policy.mmr_lambda)
        picked = head + [i for i in picked if i not in set(head)]
    shown = set(rows[keep].tolist()) if policy.dedup else set()
    hits = []
    for i in picked[:k]:
        row = int(rows[i])
        # A story is shown by its original (its earliest published copy, see
        # copies.story_labels) when that copy is among the rows allowed here.
        original = int(version.story_ids[row])
        if original != row and original in shown and original != exclude_row:
            row = original
        hits.append(Hit(int(version.doc_ids[row]), float(score[i]), float(raw.semantic[i]), float(raw.lexical[i]),
                        confidence=round(float(confidence[i]), 4)))
    return hits, floored


def recency_adjust(
    version: View, half_life_days: float, weight: float, today: float
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

    def total(rows: np.ndarray) -> np.ndarray:
        out = active[0](rows)
        for adjust in active[1:]:
            out = out + adjust(rows)
        return out

    return total


def mmr(version: View, rows: np.ndarray, score: np.ndarray, order: list[int], k: int, lam: float) -> list[int]:
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
