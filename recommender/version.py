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
        tfidf_*.npy, tfidf_vocabulary.json         TF-IDF (related): rows, idf, and its
                                                   postings (term -> documents)
        entities_*.npy, entities_vocabulary.json   names, places, numbers (related)
        bm25_*.npy, bm25_vocabulary.json           stemmed BM25 (search), by term
        (each sparse matrix as <name>_{data,indices,indptr,shape}.npy, loaded
        memory-mapped, so that workers share its pages)
        bm25_parameters.json                                       its avgdl, k1 and b (to weigh new articles)
        ranker.json                             the related ranking model and its calibration
        columns.npz                             what request filters read (language, section, tags, date)
        segments/<name>/                        writes since the build (``recommender.segments``)

A reader resolves CURRENT once and keeps that folder; a writer builds a new
folder, then swaps CURRENT with os.replace, so readers see the old version or
the new one, never a half-written one. CURRENT's first line names the
version, the lines after it the version's live segments.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.errors import IndexMismatch, IndexNotFound
from recommender.filters import FilterColumns, Filters
from recommender.index import VectorIndex
from recommender.lexical import Bm25Model, KeywordFiles, TfidfModel
from recommender.rank.model import Ranker
from recommender.store import Watermark

FORMAT_VERSION = 6
STATS_SAMPLE = 2048
FILTER_CACHE = 8
CURRENT = "CURRENT"
VERSIONS = "versions"
STAGING = "staging"


@dataclass(frozen=True)
class Layout:
    """Every file of one version folder, named in one place: the writer
    (``IndexVersion.save``) and the reader (``IndexVersion.load``) both go
    through it."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def docs(self) -> Path:
        return self.folder / "docs.faiss"

    @property
    def chunks(self) -> Path:
        return self.folder / "chunks.faiss"

    @property
    def doc_ids(self) -> Path:
        return self.folder / "doc_ids.npy"

    @property
    def doc_vectors(self) -> Path:
        return self.folder / "doc_vectors.npy"

    @property
    def story_ids(self) -> Path:
        return self.folder / "story_ids.npy"

    @property
    def published_days(self) -> Path:
        return self.folder / "published_days.npy"

    @property
    def chunk_vectors(self) -> Path:
        return self.folder / "chunk_vectors.npy"

    @property
    def chunk_offsets(self) -> Path:
        return self.folder / "chunk_offsets.npy"

    @property
    def ranker(self) -> Path:
        return self.folder / "ranker.json"

    @property
    def columns(self) -> Path:
        return self.folder / "columns.npz"

    @property
    def tfidf(self) -> KeywordFiles:
        return self._keyword("tfidf", postings=True)

    @property
    def entities(self) -> KeywordFiles:
        return self._keyword("entities")

    @property
    def bm25(self) -> KeywordFiles:
        return self._keyword("bm25")

    def _keyword(self, name: str, *, postings: bool = False) -> KeywordFiles:
        return KeywordFiles(self.folder / name, self.folder / f"{name}_vocabulary.json",
                            self.folder / f"{name}_idf.npy", self.folder / f"{name}_parameters.json",
                            self.folder / f"{name}_postings" if postings else None)

    @classmethod
    def of(cls, index_root: Path, name: str) -> Layout:
        """The folder of the published version ``name``."""
        return cls(index_root / VERSIONS / name)


@dataclass(frozen=True)
class Snapshot:
    """The store's watermark when the version's articles were read, and how
    many of the store's articles the version left out (not embedded)."""

    max_doc_id: int
    content_updated_at: float
    articles: int
    left_out: int = 0
    seq: int | None = None
    """The store's latest write number (None: recorded before writes were numbered)."""

    @property
    def watermark(self) -> Watermark:
        return Watermark(self.max_doc_id, self.content_updated_at, self.articles, self.seq)


@dataclass(frozen=True)
class Manifest:
    """What a version was built from and with (``manifest.json``)."""

    version: str
    model_id: str
    embedding_key: str
    dimension: int
    faiss_type: str
    faiss_factory: str
    chunk_faiss_factory: str
    count: int
    chunks: int
    stories: int
    built_at: str
    """UTC, ``YYYY-MM-DDTHH:MM:SSZ``."""
    corpus_hash: str
    chunk_words: int
    max_chunks: int
    recommender_version: str = ""
    format_version: int = FORMAT_VERSION
    reused_training: dict[str, bool] = field(default_factory=dict)
    """Whether the docs and chunks inverted files kept the previous version's centroids."""
    build_settings: dict[str, Any] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    """None for versions published before snapshots were recorded."""
    pending: list[int] = field(default_factory=list)
    """doc_ids that could not be embedded: left out, retried by the next segment."""

    @property
    def built_timestamp(self) -> float:
        return float(calendar.timegm(time.strptime(self.built_at, "%Y-%m-%dT%H:%M:%SZ")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Unknown keys (written by a newer release) are ignored; the format
        version is checked by ``IndexVersion.load``."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            if values.get("snapshot") is not None:
                snapshot = values["snapshot"]
                values["snapshot"] = Snapshot(**{f.name: snapshot[f.name] for f in fields(Snapshot) if f.name in snapshot})
            return cls(**values)
        except (TypeError, KeyError) as exc:  # a field this release needs is missing or malformed
            raise IndexMismatch(f"index manifest of format {data.get('format_version')} cannot be read: {exc}") from None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


@dataclass
class IndexVersion:
    name: str
    path: Path
    manifest: Manifest
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
    columns: list[FilterColumns]
    """The filter columns of the rows, part by part (the version's, then each segment's)."""
    segments: tuple[str, ...] = ()
    seq: int | None = None
    """The store's write number up to which this view holds the writes."""
    alive: np.ndarray | None = None
    """Per row, False where a segment has replaced or deleted the article; None: every row is live."""
    base_rows: int | None = None
    lookup: tuple[np.ndarray, np.ndarray] | None = None
    """The live rows' doc_ids, sorted, and their rows (None: ``doc_ids`` is sorted and every row live)."""
    base_sample: np.ndarray | None = None
    oov_share: float = 0.0
    """The share of the segments' words missing from the version's vocabulary."""
    _masks: dict[Filters, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def state(self) -> str:
        """Names what readers see: the version and its latest segment (cache keys)."""
        return f"{self.name}+{self.segments[-1]}" if self.segments else self.name

    @property
    def live_count(self) -> int:
        return len(self) if self.alive is None else int(np.count_nonzero(self.alive))

    def live(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` less the dead ones."""
        return rows if self.alive is None else rows[self.alive[rows]]

    def filter_rows(self, filters: Filters) -> np.ndarray:
        """The sorted live rows that ``filters`` allow, from the in-memory
        columns; the last few filters' rows are kept (the implicit language
        filter is the same for most lists)."""
        rows = self._masks.get(filters)
        if rows is None:
            mask = np.concatenate([part.mask(filters) for part in self.columns])
            if self.alive is not None:
                mask &= self.alive
            rows = np.flatnonzero(mask)
            if len(self._masks) >= FILTER_CACHE:
                self._masks.clear()  # one call, safe while other request threads read and add
            self._masks[filters] = rows
        return rows

    def languages(self) -> set[str]:
        return {lang for part in self.columns for lang in part.langs}

    @cached_property
    def sample_rows(self) -> np.ndarray:
        """A fixed sample of rows on which each query's score distribution is estimated."""
        n = self.live_count
        if n <= STATS_SAMPLE:
            return np.arange(len(self)) if self.alive is None else np.flatnonzero(self.alive)
        if self.base_sample is not None:  # the version's own sample, less the dead rows
            return self.live(self.base_sample)
        return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))

    @cached_property
    def sample_vectors(self) -> np.ndarray:
        return np.ascontiguousarray(self.doc_vectors[self.sample_rows])

    @cached_property
    def sample_tfidf(self) -> sp.csr_matrix:
        return self.tfidf.matrix[self.sample_rows]

    @cached_property
    def sample_postings(self) -> sp.csr_matrix:
        """The sample's TF-IDF rows by term: a query's scores against the
        sample cost its terms' posting lengths there, not the sample's size."""
        return sp.csr_matrix(self.sample_tfidf.T)

    def warm(self) -> IndexVersion:
        """Build the lazily computed parts now, off the request path."""
        self.sample_vectors, self.sample_postings, self.tfidf.impacts, self.bm25.impacts  # noqa: B018
        return self

    def row_of(self, doc_id: int) -> int | None:
        rows = self.rows_of(np.array([doc_id], dtype=np.int64))
        return int(rows[0]) if len(rows) else None

    def rows_of(self, doc_ids: np.ndarray) -> np.ndarray:
        """The live rows of the doc_ids that are in this view (others are dropped)."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        ids, rows = (self.doc_ids, None) if self.lookup is None else self.lookup
        at = np.minimum(np.searchsorted(ids, doc_ids), max(len(ids) - 1, 0))
        keep = ids[at] == doc_ids if len(ids) else np.zeros(len(doc_ids), bool)
        return at[keep] if rows is None else rows[at[keep]]

    def chunk_owner(self, chunk_positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_offsets, chunk_positions, side="right") - 1

    def save(self, folder: Path) -> None:
        """Write every file of the version into ``folder`` (a staging folder;
        ``publish`` moves it into place)."""
        files = Layout(folder)
        self.docs.save(files.docs)
        self.chunks.save(files.chunks)
        np.save(files.doc_ids, self.doc_ids)
        np.save(files.doc_vectors, self.doc_vectors)
        np.save(files.story_ids, self.story_ids)
        np.save(files.published_days, self.published_days)
        np.save(files.chunk_vectors, self.chunk_vectors)
        np.save(files.chunk_offsets, self.chunk_offsets)
        self.tfidf.save(files.tfidf)
        self.entities.save(files.entities)
        self.bm25.save(files.bm25)
        self.ranker.save(files.ranker)
        (columns,) = self.columns
        columns.save(files.columns)
        self.manifest.write(files.manifest)  # last: a folder with a manifest is complete

    @classmethod
    def load(
        cls, index_root: Path, *, model_id: str | None = None, name: str | None = None, mmap: bool = False
    ) -> IndexVersion:
        """Load a version. FAISS indexes are read into memory by default: a
        memory-mapped IVF index measured 4-5x slower per query here."""
        name = name or current_version_name(index_root)
        if name is None:
            raise IndexNotFound(f"no index has been published in {index_root}; run `recommender reindex`")
        files = Layout.of(index_root, name)
        data = json.loads(files.manifest.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexMismatch(
                f"index {name} has format {data.get('format_version')}, this version reads "
                f"{FORMAT_VERSION}; run `recommender reindex` to rebuild it"
            )
        manifest = Manifest.from_dict(data)
        if model_id is not None and manifest.model_id != model_id:
            raise IndexMismatch(
                f"index {name} was built with model {manifest.model_id!r}, but the configured model is "
                f"{model_id!r}; run `recommender reindex` to rebuild it with the configured model"
            )
        return cls(
            name=name,
            path=files.folder,
            manifest=manifest,
            docs=VectorIndex.load(files.docs, manifest.faiss_factory, mmap=mmap),
            chunks=VectorIndex.load(files.chunks, manifest.chunk_faiss_factory, mmap=mmap),
            doc_ids=np.load(files.doc_ids),
            doc_vectors=np.load(files.doc_vectors, mmap_mode="r"),
            story_ids=np.load(files.story_ids),
            published_days=np.load(files.published_days),
            chunk_vectors=np.load(files.chunk_vectors, mmap_mode="r"),
            chunk_offsets=np.load(files.chunk_offsets),
            tfidf=TfidfModel.load(files.tfidf),
            bm25=Bm25Model.load(files.bm25),
            entities=TfidfModel.load(files.entities),
            ranker=Ranker.load(files.ranker),
            columns=[FilterColumns.load(files.columns)],
            seq=manifest.snapshot.seq if manifest.snapshot else None,
        )


def current_version_name(index_root: Path) -> str | None:
    return current_state(index_root)[0]


def current_state(index_root: Path) -> tuple[str | None, tuple[str, ...]]:
    """The live version and its segments, as CURRENT names them (one read of one file)."""
    try:
        lines = (index_root / CURRENT).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None, ()
    return (lines[0], tuple(lines[1:])) if lines else (None, ())


def read_current_manifest(index_root: Path) -> Manifest | None:
    """The live version's manifest (None before the first publish, or where
    it lacks fields this release reads: another format)."""
    name = current_version_name(index_root)
    if name is None:
        return None
    try:
        return Manifest.read(Layout.of(index_root, name).manifest)
    except (FileNotFoundError, IndexMismatch):
        return None


def new_staging_dir(index_root: Path) -> tuple[str, Path]:
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    name = f"{stamp}.{now % 10**9:09d}-{os.getpid()}"  # sorts by build time
    staging = index_root / STAGING / name
    staging.mkdir(parents=True)
    return name, staging


def publish(
    index_root: Path, name: str, staging: Path, *, keep: int = 3,
    catch_up: Callable[[], Sequence[str]] | None = None,
) -> Path:
    """Move a fully written staging folder into place and point CURRENT at it.
    ``catch_up`` writes segments for the placed version (the writes made
    while it was built) and names them; CURRENT names them too."""
    from recommender.segments import write_current
    for file in staging.iterdir():
        _fsync(file)
    versions = index_root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / name
    os.replace(staging, final)
    _fsync_dir(versions)
    write_current(index_root, name, catch_up() if catch_up else ())
    _prune(versions, keep=max(1, keep), live=name)
    _remove_abandoned_staging(index_root / STAGING)
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
