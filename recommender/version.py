"""A published index version: a folder of files that never change once written.

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

``Layout`` names the files, ``Manifest`` is ``manifest.json``, ``IndexVersion``
holds one version's parts (``save`` and ``load``). Readers serve a
``recommender.view.View`` of a version and its segments; how a version comes
into place and how CURRENT names it is ``recommender.directory``'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from recommender import directory, integrity
from recommender.clock import parse_stamp
from recommender.errors import IndexDamaged, IndexMismatch, IndexNotFound
from recommender.filters import FilterColumns
from recommender.index import VectorIndex
from recommender.lexical import Bm25Model, KeywordFiles, TfidfModel
from recommender.rank.signals import SIGNALS
from recommender.ranker import Ranker
from recommender.store import Watermark

FORMAT_VERSION = 6
STATS_SAMPLE = 2048
"""Rows on which each query's score distribution is estimated (``sample_rows``)."""


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
        return cls(directory.version_dir(index_root, name))


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
    files: dict[str, int] = field(default_factory=dict)
    """File name -> size, of every file but the manifest (empty: written before sizes were recorded)."""
    checksums: dict[str, str] = field(default_factory=dict)
    """File name -> ``crc32:<hex>`` (``recommender.integrity``); empty: written before checksums were recorded."""

    @property
    def built_timestamp(self) -> float:
        return parse_stamp(self.built_at)

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
        """The manifest with its own checksum (``integrity.seal``)."""
        integrity.write_manifest(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Raises ``IndexDamaged`` for a manifest that is not whole JSON or fails its checksum."""
        return cls.from_dict(integrity.read_manifest(path, f"version {path.parent.name}"))


@dataclass
class IndexVersion:
    """One published version's parts, as built and as saved: every row is live
    and ``doc_ids`` is sorted."""

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
    columns: FilterColumns
    seq: int | None = None
    """The store's write number up to which the version holds the writes."""
    unchecked: tuple[str, ...] = ()
    """Files whose checksums a load left to a check in the background (``load(defer_checksums=True)``)."""

    def __len__(self) -> int:
        return len(self.doc_ids)

    def sample_rows(self) -> np.ndarray:
        """A fixed sample of rows on which each query's score distribution is
        estimated (a view with segments keeps it, less the dead rows)."""
        n = len(self)
        if n <= STATS_SAMPLE:
            return np.arange(n)
        return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))

    def save(self, folder: Path) -> None:
        """Write every file of the version into ``folder`` (a staging folder;
        ``directory.publish_version`` moves it into place)."""
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
        self.columns.save(files.columns)
        sizes, checksums = integrity.record(folder, skip=[files.manifest.name])
        self.manifest = replace(self.manifest, files=sizes, checksums=checksums)
        self.manifest.write(files.manifest)  # last: a folder with a manifest is complete

    @classmethod
    def load(
        cls, index_root: Path, *, model_id: str | None = None, name: str | None = None, mmap: bool = False,
        defer_checksums: bool = False,
    ) -> IndexVersion:
        """Load a version, verified: its manifest (and its own checksum), every
        file's size, every file's checksum (with ``defer_checksums``, only the
        files up to ``integrity.SYNC_CHECKSUM_BYTES``: the rest are listed in
        ``unchecked`` for a check in the background), and each array's dtype,
        shape and bounds before FAISS or scipy reads it. A version written
        before checksums were recorded is held to its shapes and its vectors to
        unit length. Raises ``IndexDamaged`` naming the file that fails.
        FAISS indexes are read into memory by default: a memory-mapped IVF
        index measured 4-5x slower per query here."""
        name = name or directory.read_current(index_root)[0]
        if name is None:
            raise IndexNotFound(f"no index has been published in {index_root}; run `recommender reindex`")
        files = Layout.of(index_root, name)
        if not files.folder.is_dir():
            raise FileNotFoundError(f"index version {name} is not in {index_root}")  # pruned meanwhile
        what = f"version {name}"
        data = integrity.read_manifest(files.manifest, what)
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
        integrity.check_sizes(files.folder, manifest.files, what)
        now, later = list(manifest.checksums), list[str]()
        if defer_checksums:
            now, later = integrity.split_by_size(manifest.files, manifest.checksums, integrity.SYNC_CHECKSUM_BYTES)
        integrity.check_checksums(files.folder, manifest.checksums, what, now)
        version = _load_checked(name, files, manifest, mmap=mmap)
        version.unchecked = tuple(later)
        return version


def _load_checked(name: str, files: Layout, manifest: Manifest, *, mmap: bool) -> IndexVersion:
    """Every part of a version, each array checked before anything native reads it."""
    what, n, dim, chunks = f"version {name}", manifest.count, manifest.dimension, manifest.chunks

    def array(path: Path, kind: str, rows: int, *, ndim: int = 1, columns: int | None = None,
              mmap_mode: Any = None) -> np.ndarray:
        loaded = integrity.read_part(what, path, lambda: np.load(path, mmap_mode=mmap_mode, allow_pickle=False))
        return integrity.check_array(loaded, what, path.name, kind=kind, ndim=ndim, rows=rows, columns=columns)

    doc_ids = array(files.doc_ids, "i", n)
    integrity.check_sorted_unique(doc_ids, what, files.doc_ids.name)
    story_ids = array(files.story_ids, "i", n)
    integrity.check_range(story_ids, what, files.story_ids.name, 0, n)
    published_days = array(files.published_days, "f", n)
    chunk_offsets = array(files.chunk_offsets, "i", n + 1)
    integrity.check_offsets(chunk_offsets, what, files.chunk_offsets.name, rows=n, total=chunks)
    doc_vectors = array(files.doc_vectors, "f", n, ndim=2, columns=dim, mmap_mode="r")
    chunk_vectors = array(files.chunk_vectors, "f", chunks, ndim=2, columns=dim, mmap_mode="r")
    if not manifest.checksums:  # a folder of an earlier release: garbled floats would be served
        integrity.check_vectors(doc_vectors, what, files.doc_vectors.name)
        integrity.check_vectors(chunk_vectors, what, files.chunk_vectors.name)
    tfidf = integrity.read_part(what, files.tfidf.matrix, lambda: TfidfModel.load(files.tfidf))
    entities = integrity.read_part(what, files.entities.matrix, lambda: TfidfModel.load(files.entities))
    bm25 = integrity.read_part(what, files.bm25.matrix, lambda: Bm25Model.load(files.bm25))
    for model, prefix in ((tfidf, files.tfidf.matrix), (entities, files.entities.matrix), (bm25, files.bm25.matrix)):
        if model.matrix.shape[0] != n:
            raise integrity.fail(what, prefix.name, f"has {model.matrix.shape[0]} rows, not {n}")
    ranker = integrity.read_part(what, files.ranker, lambda: Ranker.load(files.ranker, SIGNALS))
    columns = integrity.read_part(what, files.columns, lambda: FilterColumns.load(files.columns))
    if len(columns) != n:
        raise integrity.fail(what, files.columns.name, f"has {len(columns)} rows, not {n}")
    docs = integrity.read_part(what, files.docs, lambda: VectorIndex.load(files.docs, manifest.faiss_factory, mmap=mmap))
    chunk_index = integrity.read_part(what, files.chunks,
                            lambda: VectorIndex.load(files.chunks, manifest.chunk_faiss_factory, mmap=mmap))
    for index, path, count in ((docs, files.docs, n), (chunk_index, files.chunks, chunks)):
        if len(index) != count or index.dimension != dim:
            raise integrity.fail(what, path.name, f"holds {len(index)} vectors of {index.dimension} dimensions, "
                                 f"not {count} of {dim}")
    return IndexVersion(
        name=name, path=files.folder, manifest=manifest, docs=docs, chunks=chunk_index, doc_ids=doc_ids,
        doc_vectors=doc_vectors, story_ids=story_ids, published_days=published_days, chunk_vectors=chunk_vectors,
        chunk_offsets=chunk_offsets, tfidf=tfidf, bm25=bm25, entities=entities, ranker=ranker, columns=columns,
        seq=manifest.snapshot.seq if manifest.snapshot else None,
    )



def read_current_manifest(index_root: Path) -> Manifest | None:
    """The live version's manifest (None before the first publish, or where
    it lacks fields this release reads: another format)."""
    try:
        name = directory.read_current(index_root)[0]
        if name is None:
            return None
        return Manifest.read(Layout.of(index_root, name).manifest)
    except (FileNotFoundError, IndexMismatch, IndexDamaged):  # IndexDamaged: CURRENT or the manifest is damaged
        return None
