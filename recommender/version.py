"""A published index version: a folder of files that never change once written.

    <data_dir>/index/CURRENT             name of the live version (replaced atomically)
    <data_dir>/index/versions/<name>/
        manifest.json                    model, dimension, FAISS type, counts, build time
        docs.faiss                       one vector per article (id = doc_id)
        chunks.faiss                     one vector per passage (id = passage row)
        doc_ids.npy                      sorted doc_ids; row i of every array below
        doc_vectors.npy, story_ids.npy   article vectors; stories (the row of each one's original)
        published_days.npy               publication day of each article (recency)
        chunk_vectors.npy, chunk_offsets.npy
        tfidf.npz, tfidf_idf.npy, tfidf_vocabulary.json            TF-IDF (related)
        entities.npz, entities_idf.npy, entities_vocabulary.json   names, places, numbers (related)
        bm25.npz, bm25_vocabulary.json          stemmed BM25 (search)
        ranker.json                             the related ranking model and its calibration

A reader resolves CURRENT once and keeps that folder; a writer builds a new
folder, then swaps CURRENT with os.replace, so readers see the old version or
the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recommender.errors import IndexMismatch, IndexNotFound
from recommender.index import VectorIndex
from recommender.lexical import Bm25Model, TfidfModel
from recommender.rank.model import FILE_NAME as RANKER_FILE
from recommender.rank.model import Ranker

FORMAT_VERSION = 4
STATS_SAMPLE = 2048
CURRENT = "CURRENT"


@dataclass
class IndexVersion:
    name: str
    path: Path
    manifest: dict[str, Any]
    docs: VectorIndex
    chunks: VectorIndex
    doc_ids: np.ndarray
    doc_vectors: np.ndarray
    story_ids: np.ndarray
    published_days: np.ndarray
    chunk_vectors: np.ndarray
    chunk_offsets: np.ndarray
    tfidf: TfidfModel
    bm25: Bm25Model
    entities: TfidfModel
    ranker: Ranker

    def __len__(self) -> int:
        return len(self.doc_ids)

    @cached_property
    def sample_rows(self) -> np.ndarray:
        """A fixed sample of rows on which each query's score distribution is estimated."""
        n = len(self.doc_ids)
        if n <= STATS_SAMPLE:
            return np.arange(n)
        return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))

    @cached_property
    def sample_vectors(self) -> np.ndarray:
        return np.ascontiguousarray(self.doc_vectors[self.sample_rows])

    @cached_property
    def sample_tfidf(self):
        return self.tfidf.matrix[self.sample_rows]

    def warm(self) -> IndexVersion:
        """Build the lazily computed parts now, off the request path."""
        self.sample_vectors, self.sample_tfidf, self.tfidf.postings  # noqa: B018
        return self

    def row_of(self, doc_id: int) -> int | None:
        row = int(np.searchsorted(self.doc_ids, doc_id))
        return row if row < len(self.doc_ids) and self.doc_ids[row] == doc_id else None

    def rows_of(self, doc_ids: np.ndarray) -> np.ndarray:
        """Rows for doc_ids that are in this version (others are dropped)."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        rows = np.searchsorted(self.doc_ids, doc_ids)
        rows = np.minimum(rows, max(len(self.doc_ids) - 1, 0))
        keep = self.doc_ids[rows] == doc_ids if len(self.doc_ids) else np.zeros(len(doc_ids), bool)
        return rows[keep]

    def chunk_owner(self, chunk_positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_offsets, chunk_positions, side="right") - 1

    @classmethod
    def load(
        cls, index_root: Path, *, model_id: str | None = None, name: str | None = None, mmap: bool = False
    ) -> IndexVersion:
        """Load a version. FAISS indexes are read into memory by default: a
        memory-mapped IVF index measured 4-5x slower per query here."""
        name = name or current_version_name(index_root)
        if name is None:
            raise IndexNotFound(f"no index has been published in {index_root}; run `recommender reindex`")
        path = index_root / "versions" / name
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexMismatch(
                f"index {name} has format {manifest.get('format_version')}, this version reads "
                f"{FORMAT_VERSION}; run `recommender reindex` to rebuild it"
            )
        if model_id is not None and manifest["model_id"] != model_id:
            raise IndexMismatch(
                f"index {name} was built with model {manifest['model_id']!r}, but the configured model is "
                f"{model_id!r}; run `recommender reindex` to rebuild it with the configured model"
            )
        factory = manifest["faiss_factory"]

        def array(file: str) -> np.ndarray:
            return np.load(path / file, mmap_mode="r")

        return cls(
            name=name,
            path=path,
            manifest=manifest,
            docs=VectorIndex.load(path / "docs.faiss", factory, mmap=mmap),
            chunks=VectorIndex.load(path / "chunks.faiss", manifest["chunk_faiss_factory"], mmap=mmap),
            doc_ids=np.load(path / "doc_ids.npy"),
            doc_vectors=array("doc_vectors.npy"),
            story_ids=np.load(path / "story_ids.npy"),
            published_days=np.load(path / "published_days.npy"),
            chunk_vectors=array("chunk_vectors.npy"),
            chunk_offsets=np.load(path / "chunk_offsets.npy"),
            tfidf=TfidfModel.load(path),
            bm25=Bm25Model.load(path),
            entities=TfidfModel.load(path, "entities"),
            ranker=Ranker.load(path / RANKER_FILE),
        )


def current_version_name(index_root: Path) -> str | None:
    try:
        name = (index_root / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def read_current_manifest(index_root: Path) -> dict[str, Any] | None:
    name = current_version_name(index_root)
    if name is None:
        return None
    try:
        return json.loads((index_root / "versions" / name / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def new_staging_dir(index_root: Path) -> tuple[str, Path]:
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    name = f"{stamp}.{now % 10**9:09d}-{os.getpid()}"  # sorts by build time
    staging = index_root / "staging" / name
    staging.mkdir(parents=True)
    return name, staging


def publish(index_root: Path, name: str, staging: Path, *, keep: int = 3) -> Path:
    """Move a fully written staging folder into place and point CURRENT at it."""
    for file in staging.iterdir():
        _fsync(file)
    versions = index_root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / name
    os.replace(staging, final)
    _fsync_dir(versions)
    pointer = index_root / f".{CURRENT}.{os.getpid()}.tmp"
    pointer.write_text(name + "\n", encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, index_root / CURRENT)
    _fsync_dir(index_root)
    _prune(versions, keep=max(1, keep), live=name)
    _remove_abandoned_staging(index_root / "staging")
    return final


def _remove_abandoned_staging(staging_root: Path, max_age_seconds: float = 3600.0) -> None:
    """Staging folders left by killed builds; a live build touches its own."""
    if not staging_root.is_dir():
        return
    cutoff = time.time() - max_age_seconds
    for path in staging_root.iterdir():
        if path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _prune(versions: Path, *, keep: int, live: str) -> None:
    old = sorted((p for p in versions.iterdir() if p.is_dir() and p.name != live), key=lambda p: p.name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
