"""Query -> ranked articles: BM25 over SQLite FTS5 blended with vector search
over passages. Exact names are found by the keyword side, paraphrases by the
vector side; each score is z-scored over the union of both candidate lists."""

from __future__ import annotations

import numpy as np

from recommender.config import Settings
from recommender.embed import Embedder
from recommender.errors import InvalidInput
from recommender.related import Hit
from recommender.store import Store
from recommender.text import tokenize
from recommender.version import IndexVersion

MAX_QUERY_CHARS = 1000


def fts_query(text: str) -> str:
    """A safe FTS5 expression: each word quoted, OR-ed (BM25 ranks the overlap)."""
    words = tokenize(text) or [w for w in text.lower().split() if w.strip()]
    quoted = dict.fromkeys('"' + w.replace('"', '""') + '"' for w in words if any(c.isalnum() for c in w))
    return " OR ".join(quoted)


def validate_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise InvalidInput("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"the query is longer than {MAX_QUERY_CHARS} characters")
    return query


def search(
    version: IndexVersion, store: Store, embedder: Embedder, query: str, k: int, settings: Settings
) -> list[Hit]:
    query = validate_query(query)
    n = len(version)
    if n == 0 or k <= 0:
        return []
    pool = min(n, max(settings.candidates, 4 * k))
    vector = embedder.embed([query])[0]

    _, chunk_ids = version.chunks.search(vector.reshape(1, -1), min(len(version.chunks), 3 * pool))
    dense_rows = np.unique(version.chunk_owner(chunk_ids[0][chunk_ids[0] >= 0]))
    expression = fts_query(query)
    keyword = dict(store.keyword_search(expression, pool)) if expression else {}
    keyword_rows = version.rows_of(np.fromiter(keyword, dtype=np.int64, count=len(keyword)))
    rows = np.union1d(dense_rows, keyword_rows).astype(np.int64)
    doc_ids = version.doc_ids[rows]

    missing = [int(d) for d in doc_ids if int(d) not in keyword]
    if expression and missing:
        keyword.update(store.keyword_search(expression, len(missing), doc_ids=missing))
    lexical = np.array([keyword.get(int(d), 0.0) for d in doc_ids], dtype=np.float32)
    semantic = passage_scores(version, rows, vector)

    w = settings.search_semantic_weight
    score = w * _z(semantic) + (1 - w) * _z(lexical)
    seen: set[int] = set()
    hits: list[Hit] = []
    for i in np.argsort(-score, kind="stable"):
        story = int(version.story_ids[rows[i]])
        if story in seen:
            continue
        seen.add(story)
        hits.append(Hit(int(doc_ids[i]), float(score[i]), float(semantic[i]), float(lexical[i])))
        if len(hits) == k:
            break
    return hits


def passage_scores(version: IndexVersion, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Best passage plus mean passage similarity of each article to the query."""
    starts = version.chunk_offsets[rows]
    ends = version.chunk_offsets[rows + 1]
    positions = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
    sims = np.asarray(version.chunk_vectors[positions] @ vector, dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(ends - starts)[:-1]])
    best = np.maximum.reduceat(sims, bounds)
    mean = np.add.reduceat(sims, bounds) / (ends - starts)
    return best + mean


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - float(values.mean())) / (std if std > 1e-9 else 1.0)
