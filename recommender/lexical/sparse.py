"""Sparse keyword matrices on disk and the kernels that score with them:
plain ``.npy`` arrays loaded memory-mapped (workers share the pages),
impact-ordered postings (each term's highest weights, for whole-archive
candidates), and sums and dot products over posting lists that never build
an archive-sized sparse result."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender import integrity


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
    """A matrix saved by :func:`save_sparse`, its arrays memory-mapped (read-only),
    checked before scipy reads them (``integrity.check_compressed``): a
    damaged file raises ``IndexDamaged`` naming it, never a crash in a kernel."""
    data, indices, indptr, shape = sparse_files(prefix)
    what = f"version {prefix.parent.name}"
    header = integrity.load_array(shape, what)
    integrity.check_array(header, what, shape.name, kind="i", rows=3)
    rows, columns, csc = (int(x) for x in header)
    if rows < 0 or columns < 0 or csc not in (0, 1):
        raise integrity.fail(what, shape.name, f"holds an impossible shape {header.tolist()}")
    kind = sp.csc_matrix if csc else sp.csr_matrix
    arrays = tuple(integrity.load_array(path, what, mmap=True) for path in (data, indices, indptr))
    major, minor = (columns, rows) if csc else (rows, columns)
    integrity.check_compressed(arrays[2], arrays[1], arrays[0], major, minor, what,
                               (indptr.name, indices.name, data.name))
    return kind(arrays, shape=(rows, columns), copy=False)

def check_model(files: KeywordFiles, terms: object, idf: np.ndarray, width: int) -> None:
    """A vocabulary of ``width`` distinct words and ``width`` finite idf weights (what a model's ``load`` reads)."""
    what = f"version {files.vocabulary.parent.name}"
    if not isinstance(terms, list) or len(terms) != width or len(set(terms)) != width:
        raise integrity.fail(what, files.vocabulary.name, f"does not hold the matrix's {width} distinct terms")
    if idf.dtype.kind != "f" or idf.shape != (width,) or not bool(np.isfinite(idf).all()):
        raise integrity.fail(what, files.idf.name, f"does not hold {width} finite weights")


def read_json(path: Path) -> Any:
    """A model's JSON file, its errors naming it (``integrity.reading``)."""
    with integrity.reading(f"version {path.parent.name}", path.name):
        return json.loads(path.read_bytes().decode("utf-8"))


def posting_sums(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, size: int) -> np.ndarray:
    """Per document, the sum over the given terms (``keys``, the compressed
    axis of a CSR/CSC matrix) of weight x entry: one gather of the terms'
    posting lists and one ``bincount``, without building a sparse result
    (which cost most of a search's feedback step at 100k articles)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) == 0:
        return np.zeros(size, dtype=np.float32)
    positions, lengths = gather(indptr, keys)
    values = _weighted(data, positions, lengths, weights)
    return np.bincount(indices[positions], weights=values, minlength=size).astype(np.float32)


def gather(indptr: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        positions, lengths = gather(indptr, keys)
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
    positions, lengths = gather(matrix.indptr, np.asarray(rows, dtype=np.int64))
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
