"""Two parts' rows read as one: an index version's, then its segments'
(``recommender.view``). Rows are read part by part; nothing the size of the
version is copied."""

from __future__ import annotations

from typing import Any

import numpy as np


class Stacked:
    """Rows of two parts read as one: the version's, then the segments'."""

    def __init__(self, base: Any, extra: Any):
        self.base, self.extra = base, extra
        self.split = base.shape[0]
        self.shape = (base.shape[0] + extra.shape[0], *base.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.base[index] if index < self.split else self.extra[int(index) - self.split]
        rows = np.asarray(index, dtype=np.int64)
        later = rows >= self.split
        if not later.any():
            return self.base[rows]
        return self.join_rows(rows, later)

    def join_rows(self, rows: np.ndarray, later: np.ndarray) -> Any:
        raise NotImplementedError


class StackedRows(Stacked):
    """Vectors: the version's memory-mapped array, then the segments' array."""

    def __init__(self, base: np.ndarray, extra: np.ndarray):
        super().__init__(base, extra)
        self.dtype = base.dtype

    def join_rows(self, rows: np.ndarray, later: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        out[~later] = self.base[rows[~later]]
        out[later] = self.extra[rows[later] - self.split]
        return out
