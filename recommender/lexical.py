"""Keyword models over the published articles, rebuilt with each index
version and saved beside it.

* TfidfModel: the lexical half of "related". Names, places and numbers carry
  the identity of a news event better than a sentence embedding does; cosine
  over sublinear TF-IDF captures them.
* Bm25Model: the keyword half of search, Okapi BM25 over Snowball-stemmed
  terms with the title counted twice, scored with sparse column sums (so a
  query costs the length of its terms' posting lists, nothing more).
"""

from __future__ import annotations

import json
import re
import threading
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, repeat
from pathlib import Path
from typing import cast

import numpy as np
import scipy.sparse as sp

from recommender.text import STOPWORDS, keyword_text, tokenize


@dataclass(frozen=True)
class KeywordFiles:
    """Where one keyword model is saved; the names are the index layout's
    (``recommender.version.Layout``). Only BM25 writes ``parameters``; only a
    model given ``postings`` saves its term -> documents matrix (TF-IDF, which
    scores whole-archive candidates), instead of transposing at each load."""

    matrix: Path
    """A prefix: the sparse matrix is saved as ``<prefix>_{data,indices,indptr,shape}.npy``."""
    vocabulary: Path
    idf: Path
    parameters: Path
    postings: Path | None = None
    """A prefix too, like ``matrix``."""

    @property
    def impacts(self) -> Path:
        """The prefix of the impact-ordered postings (:func:`impact_postings`)."""
        return self.matrix.with_name(f"{self.matrix.name}_impacts")


IMPACT_DEPTH = 2000
"""Candidates from the whole archive read at most this many entries per term:
its highest weights. Search engines prune postings the same way (impact
ordering); the exact scores of the candidates are then computed from the
full rows. In a small archive no list is this long, and nothing changes."""

IMPACT_POOL = IMPACT_DEPTH // 4
"""Candidate pools up to this size come from the impact-ordered postings;
a larger pool (a list widened past a filter or dedup) reads the full ones,
which a cut list could not fill."""

SPARSE_PARTS = ("data", "indices", "indptr", "shape")


def sparse_files(prefix: Path) -> list[Path]:
    return [prefix.with_name(f"{prefix.name}_{part}.npy") for part in SPARSE_PARTS]


def save_sparse(prefix: Path, matrix: sp.csr_matrix | sp.csc_matrix) -> None:
    """A CSR or CSC matrix as plain ``.npy`` arrays, which load memory-mapped:
    workers then share the pages, and a load reads nothing up front."""
    data, indices, indptr, shape = sparse_files(prefix)
    np.save(data, matrix.data)
    np.save(indices, matrix.indices)
    np.save(indptr, matrix.indptr)
    np.save(shape, np.array([*matrix.shape, 0 if matrix.format == "csr" else 1], dtype=np.int64))


def impact_postings(matrix: sp.csr_matrix | sp.csc_matrix, depth: int = IMPACT_DEPTH) -> sp.csr_matrix | sp.csc_matrix:
    """The matrix with each compressed-axis list (a term's documents) cut to
    its ``depth`` largest entries, in their order."""
    lengths = np.diff(matrix.indptr)
    long = np.flatnonzero(lengths > depth)
    if not len(long):
        return matrix
    keep = np.ones(matrix.nnz, dtype=bool)
    for term in long:
        start, end = int(matrix.indptr[term]), int(matrix.indptr[term + 1])
        drop = end - start - depth
        keep[start + np.argpartition(matrix.data[start:end], drop)[:drop]] = False
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lengths, depth))]).astype(matrix.indptr.dtype)
    return type(matrix)((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


def load_sparse(prefix: Path) -> sp.csr_matrix | sp.csc_matrix:
    """A matrix saved by :func:`save_sparse`, its arrays memory-mapped (read-only)."""
    data, indices, indptr, shape = sparse_files(prefix)
    rows, columns, csc = (int(x) for x in np.load(shape))
    kind = sp.csc_matrix if csc else sp.csr_matrix
    arrays = (np.load(data, mmap_mode="r"), np.load(indices, mmap_mode="r"), np.load(indptr, mmap_mode="r"))
    return kind(arrays, shape=(rows, columns), copy=False)


# -- counting ------------------------------------------------------------------
# Documents are counted without a Python step per token: each document's terms
# become ids through ``map`` over a dict (a C loop), the ids of all documents
# go into one array, and scipy sums them into a sparse count matrix. Whatever
# depends on a term alone (its stem, its column, whether it is kept) is then
# worked out once per distinct term, not once per occurrence.


def _term_index() -> defaultdict[str, int]:
    """Term -> id in order of first sight: looking up a new term gives it the next id."""
    index: defaultdict[str, int] = defaultdict()
    index.default_factory = index.__len__
    return index


class _Tally:
    """The term ids of documents, added one document at a time."""

    def __init__(self, index: defaultdict[str, int]):
        self.index = index
        self.ids = array("q")
        self.lengths = array("q")

    def add(self, terms: Iterable[str]) -> None:
        size = len(self.ids)
        self.ids.extend(map(self.index.__getitem__, terms))
        self.lengths.append(len(self.ids) - size)

    def counts(self) -> sp.csr_matrix:
        """Documents x term ids (all of ``index``, shared tallies agree): occurrences."""
        ids = np.frombuffer(self.ids, dtype=np.int64) if self.ids else np.zeros(0, np.int64)
        lengths = np.frombuffer(self.lengths, dtype=np.int64) if self.lengths else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        return _csr(np.ones(len(ids), np.int64), rows, ids, (len(lengths), len(self.index)))


def _csr(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Canonical CSR (indices sorted in each row, duplicates summed)."""
    matrix = sp.csr_matrix((data, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def _counter_matrix(counts: Sequence[Counter]) -> tuple[sp.csr_matrix, list[str]]:
    """Counters as a count matrix over their terms (column i: the i-th term)."""
    index = _term_index()
    ids = np.fromiter(map(index.__getitem__, chain.from_iterable(counts)), dtype=np.int64)
    data = np.fromiter(chain.from_iterable(c.values() for c in counts), dtype=np.int64, count=len(ids))
    rows = np.repeat(np.arange(len(counts)), np.fromiter(map(len, counts), dtype=np.int64, count=len(counts)))
    return _csr(data, rows, ids, (len(counts), len(index))), list(index)


def _remap(counts: sp.csr_matrix, columns: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """Counts over new columns: column i of ``counts`` adds to ``columns[i]``, or is dropped where that is -1."""
    cols = columns[counts.indices]
    keep = cols >= 0
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    return _csr(counts.data[keep], rows[keep], cols[keep], (counts.shape[0], n_columns))


def _columns(terms: Sequence[str | None], vocabulary: dict[str, int]) -> np.ndarray:
    """The vocabulary column of each term; -1 for a term outside it (or None)."""
    column = cast("Callable[[str | None, int], int]", vocabulary.get)  # None is never a key
    return np.fromiter(map(column, terms, repeat(-1)), dtype=np.int64, count=len(terms))


def _merge(counts: sp.csr_matrix, terms: Sequence[str | None]) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Counts over the sorted distinct ``terms`` (several columns may share a
    term, e.g. a stem; a None term is dropped), and that vocabulary."""
    distinct = sorted({t for t in terms if t is not None})
    vocabulary = dict(zip(distinct, range(len(distinct))))
    return _remap(counts, _columns(terms, vocabulary), len(vocabulary)), vocabulary


def _lengths(counts: sp.csr_matrix) -> np.ndarray:
    """Tokens per document (float64)."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


class TfidfModel:
    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, matrix: sp.csr_matrix):
        self.vocabulary = vocabulary
        self.idf = idf
        self.matrix = matrix  # rows: documents, L2-normalized
        self._postings: sp.csr_matrix | None = None
        self._impacts: sp.csr_matrix | None = None

    @classmethod
    def build(cls, texts: Iterable[str], *, min_df: int = 1) -> TfidfModel:
        tally = _Tally(_term_index())
        for text in texts:
            tally.add(tokenize(text))
        return cls.from_matrix(tally.counts(), list(tally.index), min_df=min_df)

    @classmethod
    def from_counts(cls, counts: Sequence[Counter], *, min_df: int = 1) -> TfidfModel:
        return cls.from_matrix(*_counter_matrix(counts), min_df=min_df)

    @classmethod
    def from_matrix(cls, counts: sp.csr_matrix, terms: Sequence[str | None], *, min_df: int = 1) -> TfidfModel:
        """``counts``: documents x ``terms`` occurrences; columns whose term is
        None are left out, columns sharing a term are added together."""
        counts, vocabulary = _merge(counts, terms)
        df = np.bincount(counts.indices, minlength=len(vocabulary))
        if min_df > 1:
            counts, vocabulary = _merge(counts, [t if n >= min_df else None for t, n in zip(vocabulary, df.tolist())])
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
        tally = _Tally(_term_index())
        for text in texts:
            tally.add(tokenize(text))
        return self.rows(tally.counts(), list(tally.index))

    def transform_counts(self, counts: Sequence[Counter]) -> sp.csr_matrix:
        """Rows of documents outside the corpus with this vocabulary and idf; unknown terms are dropped."""
        return self.rows(*_counter_matrix(counts))

    def rows(self, counts: sp.csr_matrix, terms: Sequence[str | None]) -> sp.csr_matrix:
        """:meth:`transform_counts` of a count matrix over ``terms`` (as :meth:`from_matrix` takes)."""
        return self._weigh(_remap(counts, _columns(terms, self.vocabulary), len(self.vocabulary)), self.idf)
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
        terms = json.loads(files.vocabulary.read_text(encoding="utf-8"))
        model = cls({t: i for i, t in enumerate(terms)}, np.load(files.idf), load_sparse(files.matrix))
        if files.postings is not None:
            model._postings = load_sparse(files.postings)
            model._impacts = load_sparse(files.impacts)
        return model


def posting_sums(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, size: int) -> np.ndarray:
    """Per document, the sum over the given terms (``keys``, the compressed
    axis of a CSR/CSC matrix) of weight x entry: one gather of the terms'
    posting lists and one ``bincount``, without building a sparse result
    (which cost most of a search's feedback step at 100k articles)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) == 0:
        return np.zeros(size, dtype=np.float32)
    positions, lengths = _gather(indptr, keys)
    values = _weighted(data, positions, lengths, weights)
    return np.bincount(indices[positions], weights=values, minlength=size).astype(np.float32)


def _gather(indptr: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the entries of the given compressed-axis ``keys``, and each key's number of entries."""
    starts = indptr[keys]
    lengths = indptr[keys + 1] - starts
    bounds = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.arange(int(lengths.sum())) + np.repeat(starts - bounds, lengths), lengths


def _weighted(data: np.ndarray, positions: np.ndarray, lengths: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each gathered entry times its key's weight, in float64."""
    return data[positions].astype(np.float64) * np.repeat(np.asarray(weights, dtype=np.float64), lengths)


@dataclass
class Scores:
    """Per-document scores held sparsely: ``rows`` (sorted) score ``values``,
    every other row of ``size`` scores 0."""

    rows: np.ndarray
    values: np.ndarray
    size: int

    @classmethod
    def of(cls, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, keys: np.ndarray,
           weights: np.ndarray, size: int) -> Scores:
        """``posting_sums`` without a dense result when the entries are few."""
        keys = np.asarray(keys, dtype=np.int64)
        positions, lengths = _gather(indptr, keys)
        values = _weighted(data, positions, lengths, weights)
        if 8 * len(positions) < size:  # few entries: sum them per distinct document
            rows, owner = np.unique(indices[positions], return_inverse=True)
            sums = np.bincount(owner.ravel(), weights=values, minlength=len(rows))
        else:
            sums = np.bincount(indices[positions], weights=values, minlength=size)
            rows = np.flatnonzero(sums)
            sums = sums[rows]
        return cls(rows.astype(np.int64), sums.astype(np.float32), size)

    def then(self, extra: np.ndarray) -> Scores:
        """These scores followed by ``extra`` rows' dense scores (a segment's)."""
        more = np.flatnonzero(extra)
        return Scores(np.concatenate([self.rows, more + self.size]),
                      np.concatenate([self.values, extra[more].astype(np.float32)]), self.size + len(extra))

    def top(self, k: int) -> np.ndarray:
        """The rows of the (at most) k highest scores above 0, sorted."""
        keep = np.flatnonzero(self.values > 0)
        if len(keep) > k:
            keep = np.sort(keep[np.argpartition(-self.values[keep], k - 1)[:k]])
        return self.rows[keep]


def sparse_dot(matrix: sp.csr_matrix, rows: np.ndarray, query: sp.csr_matrix) -> np.ndarray:
    """``matrix[rows] @ query.T`` for one query row, without building the
    row selection: the rows' entries are gathered straight from the CSR arrays
    and weighed by the query's terms scattered into a dense per-thread buffer
    (a related list scores a few hundred rows three times; scipy's row
    indexing, then a binary search per entry, cost most of that)."""
    terms = np.asarray(query.indices, dtype=np.int64)
    if len(rows) == 0 or len(terms) == 0:
        return np.zeros(len(rows), dtype=np.float32)
    positions, lengths = _gather(matrix.indptr, np.asarray(rows, dtype=np.int64))
    owner = np.repeat(np.arange(len(rows)), lengths)
    dense = _term_buffer(matrix.shape[1])
    try:
        np.add.at(dense, terms, query.data)
        products = matrix.data[positions] * dense[matrix.indices[positions]]
    finally:
        dense[terms] = 0.0  # the buffer is all zeros again for the thread's next call
    return np.bincount(owner, weights=products, minlength=len(rows)).astype(np.float32)


def _term_buffer(width: int) -> np.ndarray:
    """A float64 array of at least ``width`` zeros, one per thread, reused."""
    buffer = getattr(_buffers, "terms", None)
    if buffer is None or len(buffer) < width:
        buffer = _buffers.terms = np.zeros(max(width, 1024), dtype=np.float64)
    return buffer


_buffers = threading.local()


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
        return cls.from_matrix(*_counter_matrix(counts), k1=k1, b=b, stem=stem)

    @classmethod
    def from_matrix(cls, counts: sp.csr_matrix, terms: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
                    stem: bool = True) -> Bm25Model:
        """``counts``: documents x ``terms`` occurrences (distinct terms); each
        distinct term is stemmed once."""
        merged, vocabulary = _merge(counts, stem_words(terms) if stem else terms)
        lengths = _lengths(counts)
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
        return self.rows(*_counter_matrix(counts))

    def rows(self, counts: sp.csr_matrix, terms: Sequence[str]) -> sp.csr_matrix:
        """:meth:`transform_counts` of a count matrix over distinct ``terms``."""
        stems = stem_words(terms) if self.stem else terms
        merged = _remap(counts, _columns(stems, self.vocabulary), len(self.vocabulary))
        return _bm25_weights(merged, _lengths(counts), self.idf, self.avgdl, self.k1, self.b)

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
        stems = json.loads(files.vocabulary.read_text(encoding="utf-8"))
        p = json.loads(files.parameters.read_text(encoding="utf-8"))
        model = cls({s: i for i, s in enumerate(stems)}, matrix, np.load(files.idf),
                    avgdl=float(p["avgdl"]), k1=float(p["k1"]), b=float(p["b"]), stem=bool(p["stem"]))
        model._impacts = load_sparse(files.impacts)
        return model


def _bm25_weights(counts: sp.csr_matrix, lengths: np.ndarray, idf: np.ndarray, avgdl: float, k1: float,
                  b: float) -> sp.csr_matrix:
    """Okapi BM25 term weights of canonical counts over the model's columns."""
    tf = counts.data.astype(np.float64)
    row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    norm = k1 * (1 - b + b * lengths[row] / avgdl)
    weights = (idf[counts.indices] * tf * (k1 + 1) / (tf + norm)).astype(np.float32)
    return sp.csr_matrix((weights, counts.indices, counts.indptr), shape=counts.shape)


def _tally_articles(titles: Sequence[str], bodies: Sequence[str]) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str],
                                                                            sp.csr_matrix, list[str]]:
    """Tokenize each article once: (title counts, body counts, their terms,
    name counts, the names as written)."""
    words, names = _term_index(), _term_index()
    title_tally, body_tally, name_tally = _Tally(words), _Tally(words), _Tally(names)
    for title, body in zip(titles, bodies):
        text = keyword_text(body)
        title_tally.add(tokenize(title))
        body_tally.add(tokenize(text))
        name_tally.add(_name_words(text))
    return title_tally.counts(), body_tally.counts(), list(words), name_tally.counts(), list(names)


def build_keyword_models(titles: Sequence[str], bodies: Sequence[str]) -> tuple[TfidfModel, Bm25Model, TfidfModel]:
    """TF-IDF reads title + body, BM25 counts the title twice; the entity
    model holds the names, places and numbers."""
    title, body, terms, names, written = _tally_articles(titles, bodies)
    tfidf = TfidfModel.from_matrix(title + body, terms)
    bm25 = Bm25Model.from_matrix(title * 2 + body, terms)
    return tfidf, bm25, TfidfModel.from_matrix(names, [_entity_term(w) for w in written])


def keyword_rows(tfidf: TfidfModel, bm25: Bm25Model, entities: TfidfModel, titles: Sequence[str],
                 bodies: Sequence[str]) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The TF-IDF, BM25 and entity rows of new articles, tokenized as
    :func:`build_keyword_models` tokenizes and weighed with the models'
    frozen vocabularies and statistics (unknown terms dropped)."""
    title, body, terms, names, written = _tally_articles(titles, bodies)
    return (tfidf.rows(title + body, terms), bm25.rows(title * 2 + body, terms),
            entities.rows(names, [_entity_term(w) for w in written]))


_NAME = re.compile(r"(?=[A-Z\d])(?<![\w'’])([A-Z][\w'’-]*\w|\d[\d,.:]*\d|\d)(?![\w'’])")
"""The leading lookahead changes no match; it lets the scan skip to the
characters a name or number can start with (2-3 times faster)."""
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"“”]\s+|\n)\s*[\"'“‘(\[]?$")


def _name_words(text: str) -> list[str]:
    """Capitalized words that do not open a sentence (an opening word is
    capitalized whatever it is), and numbers, as written."""
    return [match.group(1) for match in _NAME.finditer(text)
            if not (text[match.start()].isupper() and _opens_sentence(text, match.start()))]


def _opens_sentence(text: str, start: int) -> bool:
    return start == 0 or _SENTENCE_START.search(text[max(0, start - 3) : start]) is not None


def _entity_term(word: str) -> str | None:
    """A name or number as a term: lower-cased, without trailing punctuation;
    None for a stopword."""
    term = word.lower().rstrip(".,:")
    return term if term and term not in STOPWORDS and len(term) < 40 else None


def entity_terms(text: str) -> Counter:
    """Names, places and numbers of a body, lower-cased, stopwords left out;
    a proxy for named entities that costs one regular expression and needs no model."""
    found: Counter[str] = Counter()
    for word, n in Counter(_name_words(text)).items():
        term = _entity_term(word)
        if term is not None:
            found[term] += n
    return found


SNIPPET_SCAN_WORDS = 600
_PUNCTUATION = "".join(chr(c) for c in range(0x2000, 0x206F)) + "\"'.,;:!?()[]{}<>«»“”‘’-–—/\\*"


def snippet_html(body: str, query: str, words: int = 28) -> str:
    """The window of ``words`` words with the most query-term hits among the
    first SNIPPET_SCAN_WORDS of ``body``, HTML-escaped, matches in <mark>."""
    import html

    targets = set(stem_words(tokenize(query)))
    tokens = body.split(maxsplit=SNIPPET_SCAN_WORDS)[:SNIPPET_SCAN_WORDS]
    if not tokens:
        return ""
    stems = stem_words([t.lower().strip(_PUNCTUATION) for t in tokens])
    hits = np.array([s in targets for s in stems], dtype=np.int32)
    start = 0
    if len(tokens) > words:
        start = int(np.argmax(np.convolve(hits, np.ones(words, dtype=np.int32), mode="valid")))
    end = min(len(tokens), start + words)
    parts = [f"<mark>{html.escape(t)}</mark>" if hits[i] else html.escape(t) for i, t in enumerate(tokens[start:end], start)]
    more = end < len(tokens) or len(body.split(maxsplit=end)) > end
    return ("… " if start > 0 else "") + " ".join(parts) + (" …" if more else "")
