"""The baselines the served lists are measured against: TF-IDF cosine (the
engine's own model, alone), Okapi BM25 and SQLite's FTS5 BM25 with Porter
stemming."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from recommender.lexical import Bm25Model
from recommender.text import tokenize


def plain_bm25(texts: Iterable[str]) -> Bm25Model:
    """The BM25 baseline: Okapi BM25 (k1=1.2, b=0.75) over the same tokens
    as the TF-IDF model, unstemmed (the served search stems)."""
    return Bm25Model.from_counts([Counter(tokenize(t)) for t in texts], stem=False)


FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"


def fts_query(text: str) -> str:
    """A safe FTS5 expression: each word quoted, OR-ed (BM25 ranks the overlap)."""
    words = tokenize(text) or [w for w in text.lower().split() if w.strip()]
    quoted = dict.fromkeys('"' + w.replace('"', '""') + '"' for w in words if any(c.isalnum() for c in w))
    return " OR ".join(quoted)


class Fts5Bm25:
    """The FTS5 baseline: SQLite's BM25 with Porter stemming, the title
    weighed 2 and the body 1, over an in-memory full-text table of the given
    articles (the store keeps none: it cost every upsert). ``rows`` are the
    keys search returns (the store's doc_ids, whose order breaks ties)."""

    def __init__(self, rows: Iterable[tuple[int, str, str]]):
        self.connection = sqlite3.connect(":memory:")
        self.connection.execute(f"CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='{FTS5_TOKENIZER}')")
        self.connection.executemany("INSERT INTO docs(rowid, title, body) VALUES (?, ?, ?)", rows)

    def search(self, match: str, limit: int) -> list[tuple[int, float]]:
        """(key, BM25 score) pairs, best first; higher is better. ``match`` is an FTS5 query."""
        sql = "SELECT rowid, -bm25(docs, 2.0, 1.0) AS score FROM docs WHERE docs MATCH ? ORDER BY score DESC LIMIT ?"
        return [(int(r), float(s)) for r, s in self.connection.execute(sql, (match, int(limit)))]


def ranking(scores: np.ndarray, ids: Sequence[str], depth: int, exclude: int | None = None) -> list[str]:
    scores = scores.astype(np.float64, copy=True)
    if exclude is not None:
        scores[exclude] = -np.inf
    top = np.argsort(-scores, kind="stable")[: depth + (exclude is not None)]
    return [ids[i] for i in top if i != exclude][:depth]
