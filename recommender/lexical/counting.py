"""Documents counted into sparse term matrices.

Documents are counted without a Python step per token: each document's terms
become ids through ``map`` over a dict (a C loop), the ids of all documents
go into one array, and scipy sums them into a sparse count matrix. Whatever
depends on a term alone (its stem, its column, whether it is kept) is then
worked out once per distinct term, not once per occurrence."""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, repeat
from typing import cast

import numpy as np
import scipy.sparse as sp


def term_index() -> defaultdict[str, int]:
    """Term -> id in order of first sight: looking up a new term gives it the next id."""
    index: defaultdict[str, int] = defaultdict()
    index.default_factory = index.__len__
    return index


class Tally:
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
        return canonical_csr(np.ones(len(ids), np.int64), rows, ids, (len(lengths), len(self.index)))


def canonical_csr(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Canonical CSR (indices sorted in each row, duplicates summed)."""
    matrix = sp.csr_matrix((data, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def counter_matrix(counts: Sequence[Counter]) -> tuple[sp.csr_matrix, list[str]]:
    """Counters as a count matrix over their terms (column i: the i-th term)."""
    index = term_index()
    ids = np.fromiter(map(index.__getitem__, chain.from_iterable(counts)), dtype=np.int64)
    data = np.fromiter(chain.from_iterable(c.values() for c in counts), dtype=np.int64, count=len(ids))
    rows = np.repeat(np.arange(len(counts)), np.fromiter(map(len, counts), dtype=np.int64, count=len(counts)))
    return canonical_csr(data, rows, ids, (len(counts), len(index))), list(index)


def remap(counts: sp.csr_matrix, columns: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """Counts over new columns: column i of ``counts`` adds to ``columns[i]``, or is dropped where that is -1."""
    cols = columns[counts.indices]
    keep = cols >= 0
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    return canonical_csr(counts.data[keep], rows[keep], cols[keep], (counts.shape[0], n_columns))


def columns_of(terms: Sequence[str | None], vocabulary: dict[str, int]) -> np.ndarray:
    """The vocabulary column of each term; -1 for a term outside it (or None)."""
    column = cast("Callable[[str | None, int], int]", vocabulary.get)  # None is never a key
    return np.fromiter(map(column, terms, repeat(-1)), dtype=np.int64, count=len(terms))


def merge_columns(counts: sp.csr_matrix, terms: Sequence[str | None]) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Counts over the sorted distinct ``terms`` (several columns may share a
    term, e.g. a stem; a None term is dropped), and that vocabulary."""
    distinct = sorted({t for t in terms if t is not None})
    vocabulary = dict(zip(distinct, range(len(distinct))))
    return remap(counts, columns_of(terms, vocabulary), len(vocabulary)), vocabulary


def row_lengths(counts: sp.csr_matrix) -> np.ndarray:
    """Tokens per document (float64)."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
