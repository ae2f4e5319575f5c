"""The only module that imports faiss: build, search, save and load a vector index.

Vectors are unit length, so inner product is cosine similarity. In the
article index each vector carries an int64 id (the article's ``doc_id``)
through an ``IndexIDMap2``, so ids can be removed and vectors reconstructed
whatever the inner index type. The passage index is rebuilt with each version
and its ids are row numbers, so it has no id map.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

SQ8_ABOVE_BYTES = 256 * 2**20
"""Above this much float32 data the inverted file stores 8-bit codes (a quarter
of the memory). The engine re-scores its candidates with the exact vectors
(memory-mapped), so the codes only pick the candidates: at 1M clustered
vectors, recall@10 after re-scoring 200 was 1.000 (0.970 from the codes alone)."""


def choose_factory(n_vectors: int, dimension: int = 384, *, candidates_only: bool = False) -> str:
    """Exact search while it is cheap; an inverted file once the archive is
    large, with 8-bit codes once full vectors would take much memory.

    ``candidates_only`` is for the passage index: search re-scores the
    passages of every article it finds with the exact vectors, so its codes
    only have to find candidate articles, and product-quantized codes of
    ``dimension / 8`` bytes (48 for MiniLM) take the place of SQ8's
    ``dimension`` bytes."""
    if n_vectors < 50_000:
        return "Flat"
    nlist = int(min(16384, max(256, 4 * math.sqrt(n_vectors))))
    if n_vectors * dimension * 4 <= SQ8_ABOVE_BYTES:
        return f"IVF{nlist},Flat"
    if candidates_only and dimension % 8 == 0:
        return f"IVF{nlist},PQ{dimension // 8}"
    return f"IVF{nlist},SQ8"


TRAIN_POINTS_PER_LIST = 64
"""k-means for an inverted file trains on this many vectors per list (FAISS
warns below 39); training on all of 1M vectors took 950 s here."""


def training_sample(vectors: np.ndarray, index: faiss.Index) -> np.ndarray:
    nlist = getattr(faiss.try_extract_index_ivf(index), "nlist", 0) if hasattr(faiss, "try_extract_index_ivf") else 0
    limit = max(TRAIN_POINTS_PER_LIST * nlist, 50_000) if nlist else len(vectors)
    if len(vectors) <= limit:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))
    return np.ascontiguousarray(vectors[rows])


def set_query_threads(threads: int = 1) -> None:
    """One thread per query on the request path: measured 2-3x faster here."""
    faiss.omp_set_num_threads(threads)


def _ivf_lists(factory: str) -> tuple[int, str] | None:
    match = re.fullmatch(r"IVF(\d+),(.+)", factory)
    return (int(match.group(1)), match.group(2)) if match else None


def can_reuse_training(previous: VectorIndex, factory: str, dimension: int, *, auto: bool) -> bool:
    """An earlier inverted file's centroids serve a new version of the same
    kind while the archive has not outgrown them: with the factory chosen by
    size, while the number of lists stays within 2x of the ideal for the new
    size (the archive has not grown or shrunk about 4x since training)."""
    if previous.dimension != dimension or not previous.index.is_trained or "IVF" not in previous.factory:
        return False
    if previous.factory == factory:
        return True
    old, new = _ivf_lists(previous.factory), _ivf_lists(factory)
    return auto and old is not None and new is not None and old[1] == new[1] and 0.5 <= old[0] / new[0] <= 2.0



class VectorSearch(Protocol):
    """What readers search: a version's ``VectorIndex``, or one stacked with its segments' vectors."""

    @property
    def factory(self) -> str: ...

    @property
    def type_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'), best first."""
        ...


class VectorIndex:
    def __init__(self, index: faiss.Index, factory: str, *, reused_training: bool = False):
        self.index = index
        self.factory = factory
        self.reused_training = reused_training

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray | None, factory: str = "", *,
        trained: VectorIndex | None = None, candidates_only: bool = False,
    ) -> VectorIndex:
        """Index ``vectors`` under ``ids``; with ``ids=None`` a vector's id is
        its row number and the index keeps no id map (which costs 8 bytes per
        vector on disk and about 45 more in memory), so ids cannot be removed.
        ``trained`` is an earlier index whose trained state (an inverted file's
        centroids) is reused when it fits, see :func:`can_reuse_training`: a
        new version then costs an ``add``, not a k-means run (the bulk of an
        IVF build). ``trained`` is emptied. ``candidates_only``: see
        :func:`choose_factory`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or (ids is not None and len(vectors) != len(ids)):
            raise ValueError("vectors must be (n, d) with one id per row")
        ids = None if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
        auto = not factory
        factory = factory or choose_factory(len(vectors), vectors.shape[1], candidates_only=candidates_only)
        if (
            trained is not None
            and isinstance(trained.index, faiss.IndexIDMap2) == (ids is not None)
            and can_reuse_training(trained, factory, vectors.shape[1], auto=auto)
        ):
            trained.index.reset()
            _add(trained.index, vectors, ids)
            return cls(trained.index, trained.factory, reused_training=True)
        inner = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if getattr(inner, "do_polysemous_training", False):
            # Polysemous codes serve Hamming-distance filtering, which search
            # does not use; training them took 3 of 4 seconds of a small IVF-PQ build.
            inner.do_polysemous_training = False  # type: ignore[attr-defined]
        if not inner.is_trained:
            inner.train(training_sample(vectors, inner))
        if hasattr(inner, "nprobe"):
            inner.nprobe = max(1, min(inner.nlist, 32))  # type: ignore[attr-defined]
        index = inner if ids is None else faiss.IndexIDMap2(inner)
        _add(index, vectors, ids)
        return cls(index, factory)

    @property
    def type_name(self) -> str:
        """The FAISS class behind the id map, e.g. IndexFlatIP or IndexIVFFlat."""
        inner = self.index.index if hasattr(self.index, "index") else self.index
        return type(faiss.downcast_index(inner)).__name__

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'), k' = min(k, len(self)); best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError("queries must be a 2-D array")
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.index.search(queries, k)
        return scores, ids

    def save(self, path: Path) -> None:
        # Through Python's file: a failed write (a full disk) raises OSError with its errno,
        # where FAISS's own writer prints "close error" to stderr and raises "write error".
        with open(path, "wb") as handle:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: Path, factory: str, *, mmap: bool = True) -> VectorIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError:  # index types that cannot be memory-mapped
            index = faiss.read_index(str(path))
        return cls(index, factory)


def _add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray | None) -> None:
    if not len(vectors):
        return
    if ids is None:
        index.add(vectors)
    else:
        index.add_with_ids(vectors, ids)


class StackedIndex:
    """The version's FAISS index and an exact index over the segments' vectors, searched as one."""

    def __init__(self, base: VectorSearch, vectors: np.ndarray, ids: np.ndarray):
        self.base = base
        self.extra = faiss.IndexIDMap2(faiss.IndexFlatIP(base.dimension))
        if len(vectors):
            self.extra.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        self.factory = base.factory
        self.type_name = base.type_name
        self.dimension = base.dimension

    def __len__(self) -> int:
        return len(self.base) + int(self.extra.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.base.search(queries, k)
        if self.extra.ntotal:
            more_scores, more_ids = self.extra.search(np.ascontiguousarray(queries, dtype=np.float32),
                                                      min(int(k), int(self.extra.ntotal)))
            scores, ids = np.hstack([scores, more_scores]), np.hstack([ids, more_ids])
            best = np.argsort(-scores, axis=1, kind="stable")[:, : min(int(k), scores.shape[1])]
            scores, ids = np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)
        return scores, ids
