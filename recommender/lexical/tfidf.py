"""TF-IDF: the lexical half of "related". Names, places and numbers carry
the identity of a news event better than a sentence embedding does; cosine
over sublinear TF-IDF captures them. The same model weighs the entity terms
(``recommender.lexical.entities``)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender import integrity
from recommender.lexical.counting import Tally, columns_of, counter_matrix, merge_columns, remap, term_index
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
    sparse_dot,
)
from recommender.stacked import Stacked
from recommender.text import tokenize


class TfidfModel:
    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, matrix: sp.csr_matrix):
        self.vocabulary = vocabulary
        self.idf = idf
        self.matrix = matrix  # rows: documents, L2-normalized
        self._postings: sp.csr_matrix | None = None
        self._impacts: sp.csr_matrix | None = None

    @classmethod
    def build(cls, texts: Iterable[str], *, min_df: int = 1) -> TfidfModel:
        tally = Tally(term_index())
        for text in texts:
            tally.add(tokenize(text))
        return cls.from_matrix(tally.counts(), list(tally.index), min_df=min_df)

    @classmethod
    def from_counts(cls, counts: Sequence[Counter], *, min_df: int = 1) -> TfidfModel:
        return cls.from_matrix(*counter_matrix(counts), min_df=min_df)

    @classmethod
    def from_matrix(cls, counts: sp.csr_matrix, terms: Sequence[str | None], *, min_df: int = 1) -> TfidfModel:
        """``counts``: documents x ``terms`` occurrences; columns whose term is
        None are left out, columns sharing a term are added together."""
        counts, vocabulary = merge_columns(counts, terms)
        df = np.bincount(counts.indices, minlength=len(vocabulary))
        if min_df > 1:
            counts, vocabulary = merge_columns(counts, [t if n >= min_df else None for t, n in zip(vocabulary, df.tolist())])
            df = np.bincount(counts.indices, minlength=len(vocabulary))
        idf = (np.log((1 + counts.shape[0]) / (1 + df)) + 1.0).astype(np.float32)
        return cls(vocabulary, idf, cls._weigh(counts, idf))

    @staticmethod
    def _weigh(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
        """Sublinear TF-IDF rows, L2-normalized, of canonical counts over the vocabulary's columns."""
        tf = (1.0 + np.log(counts.data.astype(np.float64))).astype(np.float32)
        matrix = sp.csr_matrix((tf, counts.indices, counts.indptr), shape=counts.shape)
        matrix = matrix.multiply(idf.reshape(1, -1)).tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix, dtype=np.float32)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows for texts outside the corpus (a draft, a query)."""
        tally = Tally(term_index())
        for text in texts:
            tally.add(tokenize(text))
        return self.rows(tally.counts(), list(tally.index))

    def transform_counts(self, counts: Sequence[Counter]) -> sp.csr_matrix:
        """Rows of documents outside the corpus with this vocabulary and idf; unknown terms are dropped."""
        return self.rows(*counter_matrix(counts))

    def rows(self, counts: sp.csr_matrix, terms: Sequence[str | None]) -> sp.csr_matrix:
        """:meth:`transform_counts` of a count matrix over ``terms`` (as :meth:`from_matrix` takes)."""
        return self._weigh(remap(counts, columns_of(terms, self.vocabulary), len(self.vocabulary)), self.idf)
    @cached_property
    def terms(self) -> list[str]:
        """Column -> term."""
        return sorted(self.vocabulary, key=self.vocabulary.__getitem__)

    @property
    def postings(self) -> sp.csr_matrix:
        """Term -> documents, for scoring one query against the whole corpus."""
        if self._postings is None:
            self._postings = self.matrix.T.tocsr()
        return self._postings

    def scores(self, query: sp.csr_matrix) -> np.ndarray:
        """Cosine of one query row against every document (dense, length n_docs).
        Costs the total length of the query terms' posting lists."""
        postings = self.postings
        return posting_sums(postings.indptr, postings.indices, postings.data, query.indices, query.data,
                            postings.shape[1])

    @property
    def impacts(self) -> sp.csr_matrix:
        """:attr:`postings`, each term's list cut to its ``IMPACT_DEPTH`` highest weights."""
        if self._impacts is None:
            self._impacts = impact_postings(self.postings)
        return self._impacts

    def impact_scores(self, query: sp.csr_matrix, *, exact: bool = False) -> Scores:
        """:meth:`scores` from the impact-ordered postings, held sparsely: the
        documents that pick a whole-archive candidate list, at a cost bounded
        by the query's terms, whatever the archive's size. ``exact``: from
        the full postings (for pools over ``IMPACT_POOL``)."""
        m = self.postings if exact else self.impacts
        return Scores.of(m.indptr, m.indices, m.data, query.indices, query.data, m.shape[1])

    def top_rows(self, query: sp.csr_matrix, k: int) -> np.ndarray:
        """The k whole-archive keyword candidates for a query row (sorted rows):
        from the impact-ordered postings up to ``IMPACT_POOL``, from the full
        ones beyond, which cut lists could not fill."""
        return self.impact_scores(query, exact=k > IMPACT_POOL).top(k)

    def pair_scores(self, query: sp.csr_matrix, rows: np.ndarray | None = None, matrix: sp.csr_matrix | None = None) -> np.ndarray:
        """Cosine of one query row against the documents at ``rows`` (sorted,
        unique), or against every row of a given ``matrix`` (e.g. a sample)."""
        matrix = self.matrix if matrix is None else matrix
        if rows is None:
            rows = np.arange(matrix.shape[0])
        return sparse_dot(matrix, np.asarray(rows, dtype=np.int64), query)

    def save(self, files: KeywordFiles) -> None:
        save_sparse(files.matrix, self.matrix.tocsr())
        if files.postings is not None:
            save_sparse(files.postings, self.postings)
            save_sparse(files.impacts, self.impacts)
        np.save(files.idf, self.idf)
        files.vocabulary.write_text(json.dumps(self.terms, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, files: KeywordFiles) -> TfidfModel:
        terms = read_json(files.vocabulary)
        matrix = load_sparse(files.matrix)
        idf = integrity.load_array(files.idf, f"version {files.idf.parent.name}")
        check_model(files, terms, idf, matrix.shape[1])
        model = cls({t: i for i, t in enumerate(terms)}, idf, matrix)
        if files.postings is not None:
            model._postings = load_sparse(files.postings)
            model._impacts = load_sparse(files.impacts)
            for part, prefix in ((model._postings, files.postings), (model._impacts, files.impacts)):
                if part.shape != (matrix.shape[1], matrix.shape[0]):
                    raise integrity.fail(f"version {prefix.parent.name}", f"{prefix.name}_shape.npy",
                                         f"holds {part.shape}, not the transpose of {matrix.shape}")
        return model


class StackedCsr(Stacked):
    """Sparse rows: the version's matrix, then the segments'."""

    def __init__(self, base: sp.csr_matrix, extra: sp.csr_matrix):
        super().__init__(base, extra.tocsr())

    def join_rows(self, rows: np.ndarray, later: np.ndarray) -> sp.csr_matrix:
        stacked = sp.vstack([self.base[rows[~later]], self.extra[rows[later] - self.split]], format="csr")
        order = np.concatenate([np.flatnonzero(~later), np.flatnonzero(later)])
        return stacked[np.argsort(order, kind="stable")]

    def __matmul__(self, other: Any) -> sp.csr_matrix:
        return sp.vstack([self.base @ other, self.extra @ other], format="csr")



class StackedTfidf(TfidfModel):
    """A TF-IDF model whose rows are the version's and the segments' (one vocabulary, one idf)."""

    def __init__(self, base: TfidfModel, rows: Sequence[sp.csr_matrix]):
        self.extra = sp.vstack(rows, format="csr")
        super().__init__(base.vocabulary, base.idf, StackedCsr(base.matrix, self.extra))
        self.base = base

    @property
    def postings(self) -> sp.csr_matrix:
        return self.base.postings

    @property
    def terms(self) -> list[str]:
        return self.base.terms

    def scores(self, query: sp.csr_matrix) -> np.ndarray:
        return np.concatenate([self.base.scores(query), (self.extra @ query.T).toarray().ravel()])

    @property
    def impacts(self) -> sp.csr_matrix:
        return self.base.impacts

    def impact_scores(self, query: sp.csr_matrix, *, exact: bool = False) -> Scores:
        return self.base.impact_scores(query, exact=exact).then((self.extra @ query.T).toarray().ravel())

    def pair_scores(self, query: sp.csr_matrix, rows: np.ndarray | None = None,
                    matrix: sp.csr_matrix | None = None) -> np.ndarray:
        if matrix is not None or rows is None:
            return super().pair_scores(query, rows, matrix)
        split = self.base.matrix.shape[0]
        later = rows >= split
        out = np.empty(len(rows), dtype=np.float32)
        out[~later] = self.base.pair_scores(query, rows[~later])
        if later.any():
            out[later] = (self.extra[rows[later] - split] @ query.T).toarray().ravel()
        return out

