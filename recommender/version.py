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

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from recommender import directory
from recommender.clock import parse_stamp
from recommender.errors import IndexMismatch, IndexNotFound
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
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


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
        self.manifest.write(files.manifest)  # last: a folder with a manifest is complete

    @classmethod
    def load(
        cls, index_root: Path, *, model_id: str | None = None, name: str | None = None, mmap: bool = False
    ) -> IndexVersion:
        """Load a version. FAISS indexes are read into memory by default: a
        memory-mapped IVF index measured 4-5x slower per query here."""
        name = name or directory.read_current(index_root)[0]
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
            ranker=Ranker.load(files.ranker, SIGNALS),
            columns=FilterColumns.load(files.columns),
            seq=manifest.snapshot.seq if manifest.snapshot else None,
        )


def read_current_manifest(index_root: Path) -> Manifest | None:
    """The live version's manifest (None before the first publish, or where
    it lacks fields this release reads: another format)."""
    name = directory.read_current(index_root)[0]
    if name is None:
        return None
    try:
        return Manifest.read(Layout.of(index_root, name).manifest)
    except (FileNotFoundError, IndexMismatch):
        return None
