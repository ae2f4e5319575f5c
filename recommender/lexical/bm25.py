"""Okapi BM25, the keyword half of search: Snowball-stemmed terms with the
title counted twice, scored with sparse column sums (a query costs the
length of its terms' posting lists, nothing more)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recommender import integrity
from recommender.lexical.counting import columns_of, counter_matrix, merge_columns, remap, row_lengths
from recommender.lexical.sparse import (
    IMPACT_POOL,
    KeywordFiles,
    Scores,
    check_model,
    impact_postings,
    load_sparse,
    posting_sums,
    read_json,
    save_sparse,
)
from recommender.text import tokenize

_local = threading.local()


def stem_words(words: Sequence[str]) -> list[str]:
    """Snowball (Porter 2) English stems; one stemmer per thread (they are not thread-safe)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer.stemWords(list(words))


class Bm25Model:
    """``idf`` (per column), ``avgdl``, ``k1`` and ``b`` are the statistics the
    build weighed its documents with; new documents are weighed with them
    (:meth:`transform_counts`), so their rows score as the build's own do."""

    def __init__(self, vocabulary: dict[str, int], matrix: sp.csc_matrix, idf: np.ndarray, *, avgdl: float,
                 k1: float = 1.2, b: float = 0.75, stem: bool = True):
        self.vocabulary = vocabulary  # stem (or term) -> column
        self.matrix = matrix  # documents x stems, BM25 term weights
        self.idf = idf  # float64, per column
        self.avgdl = avgdl
        self.k1 = k1
        self.b = b
        self.stem = stem
        self._impacts: sp.csc_matrix | None = None

    @classmethod
    def from_counts(cls, counts: Sequence[Counter], *, k1: float = 1.2, b: float = 0.75, stem: bool = True) -> Bm25Model:
        """``stem``: Snowball stems (the served search); off, the tokens as
        they are (the evaluation's plain BM25 baseline)."""
        return cls.from_matrix(*counter_matrix(counts), k1=k1, b=b, stem=stem)

    @classmethod
    def from_matrix(cls, counts: sp.csr_matrix, terms: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
                    stem: bool = True) -> Bm25Model:
        """``counts``: documents x ``terms`` occurrences (distinct terms); each
        distinct term is stemmed once."""
        merged, vocabulary = merge_columns(counts, stem_words(terms) if stem else terms)
        lengths = row_lengths(counts)
        n = counts.shape[0]
        df = np.bincount(merged.indices, minlength=len(vocabulary))
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avgdl = max(float(lengths.mean()) if n else 1.0, 1e-9)
        weights = _bm25_weights(merged, lengths, idf, avgdl, k1, b)
        return cls(vocabulary, weights.tocsc(), idf, avgdl=avgdl, k1=k1, b=b, stem=stem)

    def transform_counts(self, counts: Sequence[Counter]) -> sp.csr_matrix:
        """BM25 rows of documents outside the corpus, weighed with this model's
        vocabulary, idf and average length; unknown stems are dropped, but a
        document's length counts all its tokens, as the build's does."""
        return self.rows(*counter_matrix(counts))

    def rows(self, counts: sp.csr_matrix, terms: Sequence[str]) -> sp.csr_matrix:
        """:meth:`transform_counts` of a count matrix over distinct ``terms``."""
        stems = stem_words(terms) if self.stem else terms
        merged = remap(counts, columns_of(stems, self.vocabulary), len(self.vocabulary))
        return _bm25_weights(merged, row_lengths(counts), self.idf, self.avgdl, self.k1, self.b)

    def query_columns(self, text: str) -> np.ndarray:
        stems = stem_words(tokenize(text)) if self.stem else tokenize(text)
        return np.array(sorted({self.vocabulary[s] for s in stems if s in self.vocabulary}), dtype=np.int64)

    @property
    def impacts(self) -> sp.csc_matrix:
        """The matrix, each stem's documents cut to its ``IMPACT_DEPTH`` highest weights."""
        if self._impacts is None:
            self._impacts = impact_postings(self.matrix)
        return self._impacts

    def impact_scores(self, columns: np.ndarray, *, exact: bool = False) -> Scores:
        """BM25 of a query's ``columns`` (:meth:`query_columns`) from the
        impact-ordered postings: what picks the keyword candidates (``exact``:
        from the full ones, for pools over ``IMPACT_POOL``)."""
        m = self.matrix if exact else self.impacts
        return Scores.of(m.indptr, m.indices, m.data, columns, np.ones(len(columns)), m.shape[0])

    def top_rows(self, columns: np.ndarray, k: int) -> np.ndarray:
        """The k keyword candidates for a query's ``columns``, as :meth:`TfidfModel.top_rows`."""
        return self.impact_scores(columns, exact=k > IMPACT_POOL).top(k)

    def row_scores(self, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact BM25 of a query's ``columns`` for the given ``rows``: a binary
        search of each column's (sorted) documents per row."""
        out = np.zeros(len(rows), dtype=np.float64)
        matrix = self.matrix
        for column in columns:
            start, end = int(matrix.indptr[column]), int(matrix.indptr[column + 1])
            if start == end:
                continue
            documents = matrix.indices[start:end]
            at = np.minimum(np.searchsorted(documents, rows), end - start - 1)
            hit = documents[at] == rows
            out[hit] += matrix.data[start:end][at[hit]]
        return out.astype(np.float32)

    def scores(self, text: str) -> np.ndarray:
        """BM25 of the query against every document (0 where no term matches)."""
        columns = self.query_columns(text)
        matrix = self.matrix
        return posting_sums(matrix.indptr, matrix.indices, matrix.data, columns, np.ones(len(columns)),
                            matrix.shape[0])

    def save(self, files: KeywordFiles) -> None:
        save_sparse(files.matrix, self.matrix.tocsc())
        save_sparse(files.impacts, self.impacts)
        np.save(files.idf, self.idf)
        stems = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        files.vocabulary.write_text(json.dumps(stems, ensure_ascii=False), encoding="utf-8")
        parameters = {"avgdl": self.avgdl, "k1": self.k1, "b": self.b, "stem": self.stem}
        files.parameters.write_text(json.dumps(parameters), encoding="utf-8")

    @classmethod
    def load(cls, files: KeywordFiles) -> Bm25Model:
        matrix = load_sparse(files.matrix).tocsc()  # saved as CSC: no copy
        stems = read_json(files.vocabulary)
        what = f"version {files.idf.parent.name}"
        idf = integrity.load_array(files.idf, what)
        check_model(files, stems, idf, matrix.shape[1])
        p = read_json(files.parameters)
        with integrity.reading(what, files.parameters.name):
            model = cls({s: i for i, s in enumerate(stems)}, matrix, idf,
                        avgdl=float(p["avgdl"]), k1=float(p["k1"]), b=float(p["b"]), stem=bool(p["stem"]))
        if not all(np.isfinite([model.avgdl, model.k1, model.b])) or model.avgdl <= 0:
            raise integrity.fail(what, files.parameters.name, f"holds impossible parameters {p}")
        model._impacts = load_sparse(files.impacts)
        if model._impacts.shape != matrix.shape:
            raise integrity.fail(what, f"{files.impacts.name}_shape.npy", f"holds {model._impacts.shape}, not {matrix.shape}")
        return model


def _bm25_weights(counts: sp.csr_matrix, lengths: np.ndarray, idf: np.ndarray, avgdl: float, k1: float,
                  b: float) -> sp.csr_matrix:
    """Okapi BM25 term weights of canonical counts over the model's columns."""
    tf = counts.data.astype(np.float64)
    row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    norm = k1 * (1 - b + b * lengths[row] / avgdl)
    weights = (idf[counts.indices] * tf * (k1 + 1) / (tf + norm)).astype(np.float32)
    return sp.csr_matrix((weights, counts.indices, counts.indptr), shape=counts.shape)


class StackedBm25(Bm25Model):
    def __init__(self, base: Bm25Model, rows: Sequence[sp.csr_matrix]):
        super().__init__(base.vocabulary, base.matrix, base.idf, avgdl=base.avgdl, k1=base.k1, b=base.b, stem=base.stem)
        self.base = base
        self.extra = sp.vstack(rows, format="csc")

    def _extra_scores(self, columns: np.ndarray) -> np.ndarray:
        return (np.asarray(self.extra[:, columns].sum(axis=1), dtype=np.float32).ravel() if len(columns)
                else np.zeros(self.extra.shape[0], dtype=np.float32))

    @property
    def impacts(self) -> sp.csc_matrix:
        return self.base.impacts

    def scores(self, text: str) -> np.ndarray:
        return np.concatenate([self.base.scores(text), self._extra_scores(self.query_columns(text))])

    def impact_scores(self, columns: np.ndarray, *, exact: bool = False) -> Scores:
        return self.base.impact_scores(columns, exact=exact).then(self._extra_scores(columns))

    def row_scores(self, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        split = self.base.matrix.shape[0]
        later = rows >= split
        out = np.empty(len(rows), dtype=np.float32)
        out[~later] = self.base.row_scores(columns, rows[~later])
        if later.any():
            out[later] = self._extra_scores(columns)[rows[later] - split]
        return out
