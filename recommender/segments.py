"""Segments: the writes since a version was built, published in seconds
beside it, as Lucene publishes small segments beside its big ones.

    <data_dir>/index/versions/<version>/segments/<segment>/
        manifest.json             seq covered, rows, deletions, the size and checksum of every file (written last)
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

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recommender import directory, integrity
from recommender.clock import utc_stamp
from recommender.errors import IndexDamaged
from recommender.filters import FilterColumns

if TYPE_CHECKING:
    from recommender.version import IndexVersion

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
    checksums: dict[str, str] = field(default_factory=dict)
    """File name -> ``crc32:<hex>`` (empty: written before checksums were recorded)."""

    def write(self, path: Path) -> None:
        """The manifest with its own checksum (``integrity.seal``)."""
        integrity.write_manifest(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> SegmentManifest:
        """Raises ``IndexDamaged`` for a manifest that is not whole JSON, fails
        its checksum or lacks a field."""
        what = f"segment {path.parent.name}"
        data = integrity.read_manifest(path, what)
        known = {f.name for f in fields(cls)}
        try:
            values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
            values["pending"] = tuple(int(d) for d in values.get("pending", ()))
            manifest = cls(**values)
            ints = (manifest.seq, manifest.rows, manifest.deleted, manifest.chunks)
            if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(manifest.files, dict):
                raise TypeError("counts that are not whole numbers")
        except (TypeError, ValueError) as exc:
            raise IndexDamaged(f"{what}: {path.name} cannot be read ({exc})", file=path.name) from None
        return manifest


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
        sizes, checksums = integrity.record(folder, skip=[files.manifest.name])
        manifest = SegmentManifest(**{**asdict(self.manifest), "files": sizes, "checksums": checksums})
        manifest.write(files.manifest)  # last: a folder with a manifest is complete
        self.manifest = manifest

    @classmethod
    def load(cls, folder: Path) -> Segment:
        """A segment, verified: its manifest, every file's size and checksum,
        each array's dtype, shape and bounds (a segment of an earlier release,
        without checksums: its vectors held to unit length). Raises
        ``IndexDamaged`` naming the file that fails (a file missing or of
        another size than listed: a copy in progress, or damage; a reader
        tries again once the folder changes)."""
        files = SegmentLayout(folder)
        manifest = SegmentManifest.read(files.manifest)
        what = f"segment {manifest.name}"
        integrity.check_sizes(folder, manifest.files, what)
        integrity.check_checksums(folder, manifest.checksums, what)
        rows, chunks = manifest.rows, manifest.chunks

        def array(path: Path, kind: str, count: int, *, ndim: int = 1) -> np.ndarray:
            loaded = integrity.read_part(what, path, lambda: np.load(path, allow_pickle=False))
            return integrity.check_array(loaded, what, path.name, kind=kind, ndim=ndim, rows=count)

        def keyword(name: str) -> sp.csr_matrix:
            path = files.keyword_rows(name)
            matrix = integrity.read_part(what, path, lambda: sp.load_npz(path).tocsr())
            integrity.check_compressed(matrix.indptr, matrix.indices, matrix.data, rows, matrix.shape[1], what,
                                       path.name)
            if matrix.shape[0] != rows:
                raise integrity.fail(what, path.name, f"has {matrix.shape[0]} rows, not {rows}")
            return matrix

        doc_ids = array(files.doc_ids, "i", rows)
        integrity.check_unique(doc_ids, what, files.doc_ids.name)
        integrity.check_range(doc_ids, what, files.doc_ids.name, 0, 2**62)
        deleted = array(files.deleted, "i", manifest.deleted)
        doc_vectors = array(files.doc_vectors, "f", rows, ndim=2)
        chunk_vectors = array(files.chunk_vectors, "f", chunks, ndim=2)
        if chunk_vectors.shape[1] != doc_vectors.shape[1]:
            raise integrity.fail(what, files.chunk_vectors.name, "has another dimension than doc_vectors.npy")
        chunk_offsets = array(files.chunk_offsets, "i", rows + 1)
        integrity.check_offsets(chunk_offsets, what, files.chunk_offsets.name, rows=rows, total=chunks)
        if not manifest.checksums:
            integrity.check_vectors(doc_vectors, what, files.doc_vectors.name)
            integrity.check_vectors(chunk_vectors, what, files.chunk_vectors.name)
        columns = integrity.read_part(what, files.columns, lambda: FilterColumns.load(files.columns))
        if len(columns) != rows:
            raise integrity.fail(what, files.columns.name, f"has {len(columns)} rows, not {rows}")
        return cls(
            manifest=manifest, doc_ids=doc_ids, deleted=deleted, doc_vectors=doc_vectors,
            chunk_vectors=chunk_vectors, chunk_offsets=chunk_offsets,
            published_days=array(files.published_days, "f", rows),
            story_doc_ids=array(files.story_doc_ids, "i", rows),
            tfidf=keyword("tfidf"), entities=keyword("entities"), bm25=keyword("bm25"), columns=columns,
        )

    def check_fits(self, base: IndexVersion) -> None:
        """The segment's rows have the version's dimension and keyword widths
        (a damaged segment of an earlier release, without checksums, may not)."""
        what = f"segment {self.name}"
        if self.manifest.base != base.name:
            raise integrity.fail(what, "manifest.json", f"names version {self.manifest.base}, not {base.name}")
        if self.doc_vectors.shape[1] != base.manifest.dimension:
            raise integrity.fail(what, "doc_vectors.npy", f"has {self.doc_vectors.shape[1]} dimensions, "
                                 f"not the version's {base.manifest.dimension}")
        for name in KEYWORD_ROWS:
            width = getattr(base, name).matrix.shape[1]
            if getattr(self, name).shape[1] != width:
                raise integrity.fail(what, f"{name}.npz", f"has {getattr(self, name).shape[1]} columns, not {width}")


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
