"""Segments: the writes since a version was built, published in seconds
beside it, as Lucene publishes small segments beside its big ones.

    <data_dir>/index/versions/<version>/segments/<segment>/
        manifest.json             seq covered, rows, deletions, the size of every file (written last)
        doc_ids.npy               the articles added or changed (any field) by the segment's writes
        deleted.npy               doc_ids deleted (or left out: see ``pending``)
        doc_vectors.npy, chunk_vectors.npy, chunk_offsets.npy, published_days.npy, columns.npz
        story_doc_ids.npy         each row's story, as the doc_id of the story's original
        tfidf.npz, entities.npz, bm25.npz   keyword rows, weighed with the version's vocabulary and idf

A segment is immutable. Readers see the version plus the segments CURRENT
names (``recommender.view``); a row of the version or of an earlier segment
is dead when a later segment holds its doc_id again or deletes it. Keyword
rows use the version's vocabulary and idf, frozen: a word that is new since
the build is not matched by keyword until the next full build (the vectors
still find the article); ``recommender.merge_policy`` asks for that build
when segments grow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recommender import directory
from recommender.clock import utc_stamp
from recommender.filters import FilterColumns

KEYWORD_ROWS = ("tfidf", "entities", "bm25")


@dataclass(frozen=True)
class SegmentLayout:
    """Every file of one segment folder, named in one place (``Segment.save`` and ``Segment.load``)."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def doc_ids(self) -> Path:
        return self.folder / "doc_ids.npy"

    @property
    def deleted(self) -> Path:
        return self.folder / "deleted.npy"

    @property
    def doc_vectors(self) -> Path:
        return self.folder / "doc_vectors.npy"

    @property
    def chunk_vectors(self) -> Path:
        return self.folder / "chunk_vectors.npy"

    @property
    def chunk_offsets(self) -> Path:
        return self.folder / "chunk_offsets.npy"

    @property
    def published_days(self) -> Path:
        return self.folder / "published_days.npy"

    @property
    def story_doc_ids(self) -> Path:
        return self.folder / "story_doc_ids.npy"

    @property
    def columns(self) -> Path:
        return self.folder / "columns.npz"

    def keyword_rows(self, name: str) -> Path:
        """``tfidf``, ``entities`` or ``bm25`` rows."""
        return self.folder / f"{name}.npz"

    @classmethod
    def of(cls, index_root: Path, version: str, name: str) -> SegmentLayout:
        return cls(directory.segments_dir(index_root, version) / name)


@dataclass(frozen=True)
class SegmentManifest:
    name: str
    base: str
    """The version the segment lies beside."""
    seq: int
    """The store's write number up to which writes are in the view that ends with this segment."""
    rows: int
    deleted: int
    chunks: int
    built_at: str
    pending: tuple[int, ...] = ()
    """Changed articles that could not be embedded: left out (listed as
    deleted) and retried by the next segment."""
    oov_share: float = 0.0
    """Share of the rows' keyword tokens that the version's vocabulary lacks (see ``merge_due``)."""
    files: dict[str, int] = field(default_factory=dict)
    """File name -> size: a copy (a replica's rsync) is used only once it is complete."""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> SegmentManifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["pending"] = tuple(data.get("pending", ()))
        return cls(**data)


@dataclass
class Segment:
    manifest: SegmentManifest
    doc_ids: np.ndarray
    deleted: np.ndarray
    doc_vectors: np.ndarray
    chunk_vectors: np.ndarray
    chunk_offsets: np.ndarray
    """len(doc_ids) + 1 offsets into ``chunk_vectors``."""
    published_days: np.ndarray
    story_doc_ids: np.ndarray
    tfidf: sp.csr_matrix
    entities: sp.csr_matrix
    bm25: sp.csr_matrix
    columns: FilterColumns

    @property
    def name(self) -> str:
        return self.manifest.name

    def __len__(self) -> int:
        return len(self.doc_ids)

    def save(self, folder: Path) -> None:
        """Write every file into ``folder`` (a staging folder: see ``save_segment``)."""
        files = SegmentLayout(folder)
        np.save(files.doc_ids, self.doc_ids)
        np.save(files.deleted, self.deleted)
        np.save(files.doc_vectors, self.doc_vectors)
        np.save(files.chunk_vectors, self.chunk_vectors)
        np.save(files.chunk_offsets, self.chunk_offsets)
        np.save(files.published_days, self.published_days)
        np.save(files.story_doc_ids, self.story_doc_ids)
        for name in KEYWORD_ROWS:
            sp.save_npz(files.keyword_rows(name), getattr(self, name).tocsr(), compressed=False)
        self.columns.save(files.columns)
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        manifest = SegmentManifest(**{**asdict(self.manifest), "files": sizes})
        manifest.write(files.manifest)  # last: a folder with a manifest is complete
        self.manifest = manifest

    @classmethod
    def load(cls, folder: Path) -> Segment:
        files = SegmentLayout(folder)
        manifest = SegmentManifest.read(files.manifest)
        for name, size in manifest.files.items():
            if (folder / name).stat().st_size != size:  # a copy in progress
                raise FileNotFoundError(f"segment {manifest.name}: {name} is incomplete")
        return cls(
            manifest=manifest,
            doc_ids=np.load(files.doc_ids),
            deleted=np.load(files.deleted),
            doc_vectors=np.load(files.doc_vectors),
            chunk_vectors=np.load(files.chunk_vectors),
            chunk_offsets=np.load(files.chunk_offsets),
            published_days=np.load(files.published_days),
            story_doc_ids=np.load(files.story_doc_ids),
            tfidf=sp.load_npz(files.keyword_rows("tfidf")).tocsr(),
            entities=sp.load_npz(files.keyword_rows("entities")).tocsr(),
            bm25=sp.load_npz(files.keyword_rows("bm25")).tocsr(),
            columns=FilterColumns.load(files.columns),
        )


def merge_segments(segments: Sequence[Segment], name: str) -> Segment:
    """One segment holding what ``segments`` (consecutive, oldest first) hold:
    each article's latest row, and the deletions of them all."""
    kept: list[tuple[Segment, np.ndarray]] = []
    later = np.zeros(0, dtype=np.int64)
    for segment in reversed(segments):
        keep = ~np.isin(segment.doc_ids, later)
        kept.append((segment, np.flatnonzero(keep)))
        later = np.union1d(later, np.union1d(segment.doc_ids, segment.deleted))
    kept.reverse()
    doc_ids = np.concatenate([s.doc_ids[rows] for s, rows in kept])
    deleted = np.setdiff1d(np.concatenate([s.deleted for s in segments]), doc_ids)
    blocks, lengths = [], []
    for s, rows in kept:
        for row in rows.tolist():
            a, b = int(s.chunk_offsets[row]), int(s.chunk_offsets[row + 1])
            blocks.append(s.chunk_vectors[a:b])
            lengths.append(b - a)
    dim = segments[-1].doc_vectors.shape[1]
    last = segments[-1].manifest
    columns = [s.columns.take(rows) for s, rows in kept]
    return Segment(
        manifest=SegmentManifest(
            name=name, base=last.base, seq=last.seq, rows=len(doc_ids), deleted=len(deleted),
            chunks=int(sum(lengths)), built_at=utc_stamp(), pending=last.pending,
            oov_share=max(s.manifest.oov_share for s in segments),
        ),
        doc_ids=doc_ids.astype(np.int64),
        deleted=deleted.astype(np.int64),
        doc_vectors=np.concatenate([s.doc_vectors[rows] for s, rows in kept]).reshape(-1, dim),
        chunk_vectors=np.concatenate(blocks).reshape(-1, dim) if blocks else np.zeros((0, dim), np.float32),
        chunk_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        published_days=np.concatenate([s.published_days[rows] for s, rows in kept]),
        story_doc_ids=np.concatenate([s.story_doc_ids[rows] for s, rows in kept]).astype(np.int64),
        tfidf=sp.vstack([s.tfidf[rows] for s, rows in kept], format="csr"),
        entities=sp.vstack([s.entities[rows] for s, rows in kept], format="csr"),
        bm25=sp.vstack([s.bm25[rows] for s, rows in kept], format="csr"),
        columns=FilterColumns.concat(columns),
    )


def save_segment(index_root: Path, segment: Segment) -> Path:
    """Write a segment into its version's folder (staged, then renamed into place)."""
    return directory.place_segment(index_root, segment.manifest.base, segment.name, segment.save)


def load_segment(index_root: Path, version: str, name: str) -> Segment:
    return Segment.load(SegmentLayout.of(index_root, version, name).folder)
