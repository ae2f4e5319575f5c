"""The signals of a related list: each is one function over (version, query,
candidate rows) that returns one score per row. A new signal is a function
here, its name in ``SIGNALS`` and, when it needs stored inputs, the build
step that writes them (``recommender.lexical.build_keyword_models``).

Event identity comes from what two reports of one incident share: names,
places and numbers (``entities``), the dates (``days_apart``), the headline
and opening (``lead``), the distinctive words (``lexical``). The article
vectors give the topical fallback (``semantic``). Each cosine is given raw
(how close, in absolute terms: the floor reads it) and z-scored against the
query's own distribution over a fixed sample of the archive (how close
compared with the rest of this archive)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from recommender.lexical import posting_sums

if TYPE_CHECKING:
    from recommender.view import View


@dataclass
class Query:
    """What is known of the article a list is for (indexed, or a draft)."""

    vector: np.ndarray
    """Its article vector (see ``passages.article_vectors``)."""
    lead: np.ndarray
    """The vector of its first passage: title and opening."""
    terms: sp.csr_matrix
    """Its TF-IDF row."""
    entities: sp.csr_matrix
    """Its names, places and numbers, weighted like TF-IDF."""
    day: float = float("nan")
    """Days since 1970-01-01 of its publication (``clock.epoch_days``); NaN when unknown."""
    _stats: dict | None = None

    def stats(self, version: View) -> dict[str, tuple[float, float]]:
        """Mean and spread of the query's similarities over the version's sample."""
        if self._stats is None:
            self._stats = {
                "semantic": _mean_std(version.sample_vectors @ self.vector),
                "lexical": _mean_std(_sample_scores(version.sample_postings, self.terms)),
            }
        return self._stats


def query_for_row(version: View, row: int) -> Query:
    return Query(
        vector=np.asarray(version.doc_vectors[row], dtype=np.float32),
        lead=np.asarray(version.chunk_vectors[int(version.chunk_offsets[row])], dtype=np.float32),
        terms=version.tfidf.matrix[row],
        entities=version.entities.matrix[row],
        day=float(version.published_days[row]),
    )


@dataclass
class Raw:
    """Per-row similarities computed once and shared by the signals."""

    semantic: np.ndarray
    lexical: np.ndarray


def raw_scores(version: View, query: Query, rows: np.ndarray) -> Raw:
    return Raw(
        semantic=np.asarray(version.doc_vectors[rows] @ query.vector, dtype=np.float32),
        lexical=version.tfidf.pair_scores(query.terms, rows),
    )


Signal = Callable[["View", Query, np.ndarray, Raw], np.ndarray]


def semantic(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """Cosine of the article vectors."""
    return raw.semantic


def semantic_z(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    mean, std = query.stats(version)["semantic"]
    return (raw.semantic - mean) / std


def lexical(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """Cosine of the TF-IDF rows (title and body)."""
    return raw.lexical


def lexical_z(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    mean, std = query.stats(version)["lexical"]
    return (raw.lexical - mean) / std


def entities(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """Cosine of the names, places and numbers (idf-weighted)."""
    if query.entities.nnz == 0:
        return np.zeros(len(rows), dtype=np.float32)
    return version.entities.pair_scores(query.entities, rows)


def lead(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """Cosine of the first passages: headline and opening."""
    leads = version.chunk_vectors[version.chunk_offsets[rows]]
    return np.asarray(leads @ query.lead, dtype=np.float32)


def days_apart(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """log(1 + days between the publication dates); 0 when either is unknown."""
    days = np.abs(version.published_days[rows] - query.day)
    return np.nan_to_num(np.log1p(days), nan=0.0).astype(np.float32)


def dated(version: View, query: Query, rows: np.ndarray, raw: Raw) -> np.ndarray:
    """1 where both dates are known (so ``days_apart`` means something)."""
    return (~np.isnan(version.published_days[rows] - query.day)).astype(np.float32)


SIGNALS: dict[str, Signal] = {
    "semantic": semantic,
    "semantic_z": semantic_z,
    "lexical": lexical,
    "lexical_z": lexical_z,
    "entities": entities,
    "lead": lead,
    "days_apart": days_apart,
    "dated": dated,
}


def features(version: View, query: Query, rows: np.ndarray, names: list[str]) -> tuple[np.ndarray, Raw]:
    """The (len(rows), len(names)) matrix of the named signals."""
    raw = raw_scores(version, query, rows)
    out = np.empty((len(rows), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = SIGNALS[name](version, query, rows, raw)
    return out, raw


def _sample_scores(postings: sp.csr_matrix, terms: sp.csr_matrix) -> np.ndarray:
    """Cosine of a TF-IDF row against each sampled row, from the sample's posting lists."""
    return posting_sums(postings.indptr, postings.indices, postings.data, terms.indices, terms.data, postings.shape[1])


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    std = float(np.std(values))
    return float(np.mean(values)), (std if std > 1e-9 else 1.0)
