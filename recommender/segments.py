"""Segments: the writes since a version was built, published in seconds
beside it, as Lucene publishes small segments beside its big ones.

    <data_dir>/index/CURRENT      line 1: the version; then its live segments, oldest first
    <data_dir>/index/versions/<version>/segments/<segment>/
        manifest.json             seq covered, rows, deletions, the size of every file (written last)
        doc_ids.npy               the articles added or changed (any field) by the segment's writes
        deleted.npy               doc_ids deleted (or left out: see ``pending``)
        doc_vectors.npy, chunk_vectors.npy, chunk_offsets.npy, published_days.npy, columns.npz
        story_doc_ids.npy         each row's story, as the doc_id of the story's original
        tfidf.npz, entities.npz, bm25.npz   keyword rows, weighed with the version's vocabulary and idf

A segment is immutable. Readers see the version plus the segments CURRENT
names; a row of the version or of an earlier segment is dead when a later
segment holds its doc_id again or deletes it. ``compose`` builds that view
without copying the version's large arrays: its vectors, keyword rows and
FAISS indexes are read part by part (``Stacked*``), the segments' vectors
are searched exactly (they are few). Keyword rows use the version's
vocabulary and idf, frozen: a word that is new since the build is not
matched by keyword until the next full build (the vectors still find the
article); ``merge_due`` asks for that build when segments grow.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from recommender.filters import FilterColumns
from recommender.lexical import Bm25Model, Scores, TfidfModel
from recommender.version import CURRENT, VERSIONS, IndexVersion, Layout, _fsync, _fsync_dir, current_state

SEGMENTS = "segments"
MAX_SEGMENTS = 12
"""More segments than this are merged into one, whatever their sizes."""


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
        files = Layout(folder)
        np.save(files.doc_ids, self.doc_ids)
        np.save(folder / "deleted.npy", self.deleted)
        np.save(files.doc_vectors, self.doc_vectors)
        np.save(files.chunk_vectors, self.chunk_vectors)
        np.save(files.chunk_offsets, self.chunk_offsets)
        np.save(files.published_days, self.published_days)
        np.save(folder / "story_doc_ids.npy", self.story_doc_ids)
        for name in ("tfidf", "entities", "bm25"):
            sp.save_npz(folder / f"{name}.npz", getattr(self, name).tocsr(), compressed=False)
        self.columns.save(files.columns)
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        manifest = SegmentManifest(**{**asdict(self.manifest), "files": sizes})
        manifest.write(files.manifest)  # last: a folder with a manifest is complete
        self.manifest = manifest

    @classmethod
    def load(cls, folder: Path) -> Segment:
        files = Layout(folder)
        manifest = SegmentManifest.read(files.manifest)
        for name, size in manifest.files.items():
            if (folder / name).stat().st_size != size:  # a copy in progress
                raise FileNotFoundError(f"segment {manifest.name}: {name} is incomplete")
        return cls(
            manifest=manifest,
            doc_ids=np.load(files.doc_ids),
            deleted=np.load(folder / "deleted.npy"),
            doc_vectors=np.load(files.doc_vectors),
            chunk_vectors=np.load(files.chunk_vectors),
            chunk_offsets=np.load(files.chunk_offsets),
            published_days=np.load(files.published_days),
            story_doc_ids=np.load(folder / "story_doc_ids.npy"),
            tfidf=sp.load_npz(folder / "tfidf.npz").tocsr(),
            entities=sp.load_npz(folder / "entities.npz").tocsr(),
            bm25=sp.load_npz(folder / "bm25.npz").tocsr(),
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
    columns = [_take_columns(s.columns, rows) for s, rows in kept]
    return Segment(
        manifest=SegmentManifest(
            name=name, base=last.base, seq=last.seq, rows=len(doc_ids), deleted=len(deleted),
            chunks=int(sum(lengths)), built_at=_now(), pending=last.pending,
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
        columns=_concat_columns(columns),
    )


def _take_columns(columns: FilterColumns, rows: np.ndarray) -> FilterColumns:
    return FilterColumns(columns.langs, columns.sections, columns.tags, columns.lang[rows], columns.section[rows],
                         columns.published[rows], columns.tag_rows[rows].tocsc())


def _concat_columns(parts: Sequence[FilterColumns]) -> FilterColumns:
    """The parts' rows one after the other, over the union of their tables."""
    langs = tuple(sorted({v for p in parts for v in p.langs}))
    sections = tuple(sorted({v for p in parts for v in p.sections}))
    tags = tuple(sorted({v for p in parts for v in p.tags}))

    def recode(codes: np.ndarray, old: tuple[str, ...], new: tuple[str, ...]) -> np.ndarray:
        where = {v: i for i, v in enumerate(new)}
        return np.array([where[v] for v in old] + [-1], dtype=np.int32)[codes]  # -1 (none) stays -1

    tag_blocks = []
    for p in parts:
        coo = p.tag_rows.tocoo()
        cols = recode(coo.col, p.tags, tags)
        tag_blocks.append(sp.csr_matrix((coo.data, (coo.row, cols)), shape=(len(p), len(tags))))
    return FilterColumns(
        langs, sections, tags,
        lang=np.concatenate([recode(p.lang, p.langs, langs) for p in parts]),
        section=np.concatenate([recode(p.section, p.sections, sections) for p in parts]),
        published=np.concatenate([p.published.astype("S40") for p in parts]),
        tag_rows=sp.vstack(tag_blocks, format="csc"),
    )


# -- the composed view -------------------------------------------------------


class _Stacked:
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
        return self._join(rows, later)

    def _join(self, rows: np.ndarray, later: np.ndarray) -> Any:
        raise NotImplementedError


class StackedRows(_Stacked):
    """Vectors: the version's memory-mapped array, then the segments' array."""

    def __init__(self, base: np.ndarray, extra: np.ndarray):
        super().__init__(base, extra)
        self.dtype = base.dtype

    def _join(self, rows: np.ndarray, later: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        out[~later] = self.base[rows[~later]]
        out[later] = self.extra[rows[later] - self.split]
        return out


class StackedCsr(_Stacked):
    """Sparse rows: the version's matrix, then the segments'."""

    def __init__(self, base: sp.csr_matrix, extra: sp.csr_matrix):
        super().__init__(base, extra.tocsr())

    def _join(self, rows: np.ndarray, later: np.ndarray) -> sp.csr_matrix:
        stacked = sp.vstack([self.base[rows[~later]], self.extra[rows[later] - self.split]], format="csr")
        order = np.concatenate([np.flatnonzero(~later), np.flatnonzero(later)])
        return stacked[np.argsort(order, kind="stable")]

    def __matmul__(self, other: Any) -> sp.csr_matrix:
        return sp.vstack([self.base @ other, self.extra @ other], format="csr")


class StackedTfidf(TfidfModel):
    """A TF-IDF model whose rows are the version's and the segments' (one vocabulary, one idf)."""

    def __init__(self, base: TfidfModel, rows: Sequence[sp.csr_matrix]):
        self.extra = sp.vstack(rows, format="csr")
        super().__init__(base.vocabulary, base.idf, StackedCsr(base.matrix, self.extra))
        self.base = base

    @property
    def postings(self) -> sp.csr_matrix:
        return self.base.postings

    @property
    def terms(self) -> list[str]:
        return self.base.terms

    def scores(self, query: sp.csr_matrix) -> np.ndarray:
        return np.concatenate([self.base.scores(query), (self.extra @ query.T).toarray().ravel()])

    @property
    def impacts(self) -> sp.csr_matrix:
        return self.base.impacts

    def impact_scores(self, query: sp.csr_matrix, *, exact: bool = False) -> Scores:
        return self.base.impact_scores(query, exact=exact).then((self.extra @ query.T).toarray().ravel())

    def pair_scores(self, query: sp.csr_matrix, rows: np.ndarray | None = None,
                    matrix: sp.csr_matrix | None = None) -> np.ndarray:
        if matrix is not None or rows is None:
            return super().pair_scores(query, rows, matrix)
        split = self.base.matrix.shape[0]
        later = rows >= split
        out = np.empty(len(rows), dtype=np.float32)
        out[~later] = self.base.pair_scores(query, rows[~later])
        if later.any():
            out[later] = (self.extra[rows[later] - split] @ query.T).toarray().ravel()
        return out


class StackedBm25(Bm25Model):
    def __init__(self, base: Bm25Model, rows: Sequence[sp.csr_matrix]):
        super().__init__(base.vocabulary, base.matrix, base.idf, avgdl=base.avgdl, k1=base.k1, b=base.b, stem=base.stem)
        self.base = base
        self.extra = sp.vstack(rows, format="csc")

    def _extra_scores(self, columns: np.ndarray) -> np.ndarray:
        return (np.asarray(self.extra[:, columns].sum(axis=1), dtype=np.float32).ravel() if len(columns)
                else np.zeros(self.extra.shape[0], dtype=np.float32))

    @property
    def impacts(self) -> sp.csc_matrix:
        return self.base.impacts

    def scores(self, text: str) -> np.ndarray:
        return np.concatenate([self.base.scores(text), self._extra_scores(self.query_columns(text))])

    def impact_scores(self, columns: np.ndarray, *, exact: bool = False) -> Scores:
        return self.base.impact_scores(columns, exact=exact).then(self._extra_scores(columns))

    def row_scores(self, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        split = self.base.matrix.shape[0]
        later = rows >= split
        out = np.empty(len(rows), dtype=np.float32)
        out[~later] = self.base.row_scores(columns, rows[~later])
        if later.any():
            out[later] = self._extra_scores(columns)[rows[later] - split]
        return out


class StackedIndex:
    """The version's FAISS index and an exact index over the segments' vectors, searched as one."""

    def __init__(self, base: Any, vectors: np.ndarray, ids: np.ndarray):
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


def compose(base: IndexVersion, segments: Sequence[Segment]) -> IndexVersion:
    """The view readers serve: the version's rows, then each segment's; rows
    that a later segment replaces or deletes are dead (``IndexVersion.alive``)."""
    if not segments:
        return base
    nb = len(base)
    doc_ids = np.concatenate([base.doc_ids, *(s.doc_ids for s in segments)]).astype(np.int64)
    alive = np.ones(len(doc_ids), dtype=bool)
    later = np.zeros(0, dtype=np.int64)
    start = len(doc_ids)
    for segment in reversed(segments):
        start -= len(segment)
        alive[start : start + len(segment)] = ~np.isin(segment.doc_ids, later)
        later = np.union1d(later, np.union1d(segment.doc_ids, segment.deleted))
    alive[:nb] = ~_in_sorted(base.doc_ids, later)

    # A segment row's story is its original's first row: the version's row of
    # that doc_id (as the version's own copies name it), else its segment row.
    story_ids = [base.story_ids]
    first_rows: dict[int, int] = {}
    offset = nb
    for segment in segments:
        for i, d in enumerate(segment.doc_ids.tolist()):
            first_rows.setdefault(d, offset + i)
        offset += len(segment)
    for segment in segments:
        stories = segment.story_doc_ids
        at = np.minimum(np.searchsorted(base.doc_ids, stories), max(nb - 1, 0))
        in_base = base.doc_ids[at] == stories if nb else np.zeros(len(stories), bool)
        story_ids.append(np.where(in_base, at, [first_rows.get(d, -1) for d in stories.tolist()]).astype(np.int64))

    chunk_total = int(base.chunk_offsets[-1])
    offsets = [base.chunk_offsets[:-1]]
    for segment in segments:
        offsets.append(segment.chunk_offsets[:-1] + chunk_total)
        chunk_total += int(segment.chunk_offsets[-1])
    offsets.append(np.array([chunk_total]))
    seg_doc_vectors = np.concatenate([s.doc_vectors for s in segments])
    seg_chunk_vectors = np.concatenate([s.chunk_vectors for s in segments])
    base_chunks = int(base.chunk_offsets[-1])
    last = segments[-1].manifest
    order = np.argsort(doc_ids[alive], kind="stable")
    return IndexVersion(
        name=base.name, path=base.path, manifest=base.manifest,
        docs=StackedIndex(base.docs, seg_doc_vectors, doc_ids[nb:]),  # type: ignore[arg-type]
        chunks=StackedIndex(base.chunks, seg_chunk_vectors,  # type: ignore[arg-type]
                            np.arange(base_chunks, base_chunks + len(seg_chunk_vectors))),
        doc_ids=doc_ids,
        doc_vectors=StackedRows(base.doc_vectors, seg_doc_vectors),  # type: ignore[arg-type]
        story_ids=np.concatenate(story_ids),
        published_days=np.concatenate([base.published_days, *(s.published_days for s in segments)]),
        chunk_vectors=StackedRows(base.chunk_vectors, seg_chunk_vectors),  # type: ignore[arg-type]
        chunk_offsets=np.concatenate(offsets).astype(np.int64),
        tfidf=StackedTfidf(base.tfidf, [s.tfidf for s in segments]),
        bm25=StackedBm25(base.bm25, [s.bm25 for s in segments]),
        entities=StackedTfidf(base.entities, [s.entities for s in segments]),
        ranker=base.ranker,
        columns=[*base.columns, *(s.columns for s in segments)],
        segments=tuple(s.name for s in segments),
        seq=last.seq,
        alive=alive,
        base_rows=nb,
        lookup=(doc_ids[alive][order], np.flatnonzero(alive)[order]),
        base_sample=base.sample_rows,
        oov_share=float(np.average([s.manifest.oov_share for s in segments],
                                   weights=[max(len(s), 1) for s in segments])),
    )


def _in_sorted(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each of ``sorted_values`` is in ``values`` (sorted, unique)."""
    if not len(values):
        return np.zeros(len(sorted_values), dtype=bool)
    at = np.minimum(np.searchsorted(values, sorted_values), len(values) - 1)
    return values[at] == sorted_values


class Views:
    """What CURRENT names, loaded: the version once, each segment once, and
    their composed view (``compose``) when CURRENT changes. Shared by a
    server's readers and its writer."""

    def __init__(self, index_root: Path, model_id: str | None = None):
        self.index_root = index_root
        self.model_id = model_id
        self.base: IndexVersion | None = None
        self.view: IndexVersion | None = None
        self._segments: dict[str, Segment] = {}
        self._lock = threading.Lock()

    def current(self) -> IndexVersion | None:
        """The view CURRENT names now (None before any publish). Raises what
        loading raises (a version or segment being copied: try again later)."""
        parts = self.current_parts()
        return None if parts is None else parts.view

    def current_parts(self) -> ViewParts | None:
        """The view CURRENT names now with the version and segments it was
        composed of, taken together: a writer uses these, not ``base`` and
        ``segment_objects()``, which another thread's ``load`` may move on
        (or back, to a CURRENT it read earlier) meanwhile."""
        name, segments = current_state(self.index_root)
        return None if name is None else self.load_parts(name, segments)

    def load(self, name: str, segments: tuple[str, ...]) -> IndexVersion:
        return self.load_parts(name, segments).view

    def load_parts(self, name: str, segments: tuple[str, ...]) -> ViewParts:
        with self._lock:
            view, base = self.view, self.base
            if view is not None and base is not None and view.name == name and view.segments == segments:
                return ViewParts(view, base, [self._segments[s] for s in segments])
            if base is None or base.name != name:
                base = IndexVersion.load(self.index_root, model_id=self.model_id, name=name).warm()
            loaded = {s.name: s for s in self._segments.values() if s.manifest.base == name}
            parts = [loaded.get(s) or load_segment(self.index_root, name, s) for s in segments]
            view = compose(base, parts).warm() if parts else base
            self.base, self._segments, self.view = base, {p.name: p for p in parts}, view
            return ViewParts(view, base, parts)

    def segment_objects(self) -> list[Segment]:
        """The loaded segments of the last loaded view, oldest first (for
        reports; a writer takes ``current_parts``)."""
        with self._lock:
            view = self.view
            return [] if view is None else [self._segments[s] for s in view.segments]


@dataclass(frozen=True)
class ViewParts:
    """A composed view, the version under it and its segments, oldest first."""

    view: IndexVersion
    base: IndexVersion
    segments: list[Segment]


# -- files -------------------------------------------------------------------


def segments_dir(index_root: Path, version: str) -> Path:
    return index_root / VERSIONS / version / SEGMENTS


def new_segment_name() -> str:
    now = time.time_ns()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{os.getpid()}"


def save_segment(index_root: Path, segment: Segment) -> Path:
    """Write a segment into its version's folder (staged, then renamed into place)."""
    folder = segments_dir(index_root, segment.manifest.base)
    staging = folder / f".{segment.name}.tmp"
    staging.mkdir(parents=True)
    segment.save(staging)
    for file in staging.iterdir():
        _fsync(file)
    final = folder / segment.name
    os.replace(staging, final)
    _fsync_dir(folder)
    return final


def load_segment(index_root: Path, version: str, name: str) -> Segment:
    return Segment.load(segments_dir(index_root, version) / name)


def write_current(index_root: Path, version: str, segments: Sequence[str]) -> None:
    """Point readers at a version and its segments, in one atomic replace."""
    pointer = index_root / f".{CURRENT}.{os.getpid()}.tmp"
    pointer.write_text("".join(f"{line}\n" for line in (version, *segments)), encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, index_root / CURRENT)
    _fsync_dir(index_root)


def prune_segments(index_root: Path, version: str, live: Sequence[str], *, grace_seconds: float = 60.0) -> None:
    """Remove segments CURRENT no longer names (after ``grace_seconds``, so a
    reader that has just read CURRENT can still load them), and abandoned stagings."""
    folder = segments_dir(index_root, version)
    if not folder.is_dir():
        return
    cutoff = time.time() - grace_seconds
    for path in folder.iterdir():
        if path.name not in live and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_view(index_root: Path, model_id: str | None = None) -> IndexVersion:
    """The view CURRENT names (the version and its segments), for tools and tests."""
    from recommender.errors import IndexNotFound

    view = Views(index_root, model_id).current()
    if view is None:
        raise IndexNotFound(f"no index has been published in {index_root}; run `recommender reindex`")
    return view
