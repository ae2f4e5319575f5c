"""Query -> ranked articles: stemmed BM25 blended with vector search over
passages. Exact names are found by the keyword side, paraphrases by the
vector side; each score is z-scored over the union of both candidate lists."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.config import Settings
from recommender.errors import InvalidInput
from recommender.rank.related import NO_POLICY, QUERY_TERMS, Hit, Policy, rank_candidates, strongest_terms
from recommender.view import View, in_sorted

MAX_QUERY_CHARS = 1000


def validate_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise InvalidInput("the query is empty", field="q")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"the query is longer than {MAX_QUERY_CHARS} characters", field="q")
    return query


def search(
    version: View,
    vector: np.ndarray,
    query: str,
    k: int,
    settings: Settings,
    *,
    allowed_rows: np.ndarray | None = None,
    policy: Policy = NO_POLICY,
) -> list[Hit]:
    """Rank articles for ``query``, whose embedding is ``vector``. The policy's
    exclusions (blocks, embargo), score adjustments (boosts, recency) and
    dedup apply; pins and diversity are for related lists."""
    n = len(version)
    if n == 0 or k <= 0 or (allowed_rows is not None and len(allowed_rows) == 0):
        return []
    columns = version.bm25.query_columns(query)
    w = settings.search_semantic_weight

    def shown(rows: np.ndarray) -> np.ndarray:
        """Rows less the dead ones and those the policy excludes (blocks, embargo)."""
        rows = version.live(rows)
        if policy.excluded_rows is not None and len(policy.excluded_rows):
            rows = rows[~np.isin(rows, policy.excluded_rows)]
        return rows

    def first_stage(rows: np.ndarray):
        lexical = version.bm25.row_scores(columns, rows)
        semantic = passage_scores(version, rows, vector)
        return w * _z(semantic) + (1 - w) * _z(lexical), semantic, lexical

    def rank(rows: np.ndarray) -> tuple[list[Hit], bool]:
        rows = shown(rows)  # rank_candidates has already applied the filters
        score, semantic, lexical = first_stage(rows)
        m, weight = settings.search_feedback_docs, settings.search_feedback_weight
        if m and weight and len(rows) > m:
            # Pseudo-relevance feedback: the best first-stage hits name the
            # story the query is about (its people, places); articles like
            # them, by words and by vectors, move up, and a few more that
            # share their distinctive terms join the candidates.
            top = rows[np.argsort(-score, kind="stable")[:m]]
            centroid = sp.csr_matrix(version.tfidf.matrix[top].sum(axis=0))
            centroid = centroid / max(float(np.sqrt(centroid.multiply(centroid).sum())), 1e-12)
            found = version.tfidf.top_rows(strongest_terms(sp.csr_matrix(centroid), QUERY_TERMS), settings.candidates)
            extra = shown(found)
            if allowed_rows is not None:  # new rows meet the request's filters too
                extra = extra[in_sorted(extra, allowed_rows)]
            extra = np.setdiff1d(extra, rows)
            if len(extra):
                rows = np.union1d(rows, extra)  # sorted, as pair_scores wants
                score, semantic, lexical = first_stage(rows)
            like = np.asarray(version.doc_vectors[top], dtype=np.float32).mean(axis=0)
            feedback = _z(version.tfidf.pair_scores(sp.csr_matrix(centroid), rows))
            feedback = feedback + _z(np.asarray(version.doc_vectors[rows] @ like, dtype=np.float32))
            score = score + weight * feedback / 2
        doc_ids = version.doc_ids[rows]
        if policy.adjust is not None:
            score = score + policy.adjust(rows)
        seen: set[int] = set()
        hits: list[Hit] = []
        for i in np.argsort(-score, kind="stable"):
            story = int(version.story_ids[rows[i]])
            if policy.dedup and story in seen:
                continue
            seen.add(story)
            hits.append(Hit(int(doc_ids[i]), float(score[i]), float(semantic[i]), float(lexical[i])))
            if len(hits) == k:
                break
        return hits, False

    def candidates(pool: int) -> np.ndarray:
        _, chunk_ids = version.chunks.search(vector.reshape(1, -1), min(len(version.chunks), 3 * pool))
        dense_rows = np.unique(version.chunk_owner(chunk_ids[0][chunk_ids[0] >= 0]))
        rows = np.union1d(dense_rows, version.bm25.top_rows(columns, pool)).astype(np.int64)
        return version.live(rows)

    return rank_candidates(n, k, settings, allowed_rows, candidates, rank)


PASSAGE_BLOCK_ARTICLES = 512
"""Articles whose passages are gathered and scored at a time: at most
512 x 16 passages (12 MiB at 384 dimensions), whatever a filter allows."""


def passage_scores(version: View, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Best passage plus mean passage similarity of each article to the query,
    scored in blocks of PASSAGE_BLOCK_ARTICLES articles."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), PASSAGE_BLOCK_ARTICLES):
        block = rows[start : start + PASSAGE_BLOCK_ARTICLES]
        starts = version.chunk_offsets[block]
        ends = version.chunk_offsets[block + 1]
        lengths = ends - starts
        bounds = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        positions = np.arange(int(lengths.sum())) + np.repeat(starts - bounds, lengths)  # each article's passages
        sims = np.asarray(version.chunk_vectors[positions] @ vector, dtype=np.float32)
        out[start : start + len(block)] = np.maximum.reduceat(sims, bounds) + np.add.reduceat(sims, bounds) / lengths
    return out


def _z(values: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return values
    std = float(values.std())
    return (values - float(values.mean())) / (std if std > 1e-9 else 1.0)
