"""The view readers serve: a published version and the segments CURRENT
names beside it, read as one archive (Lucene's ``DirectoryReader`` over its
``SegmentInfos``).

``compose`` builds a ``View`` without copying the version's large arrays: its
vectors, keyword rows and FAISS indexes are read part by part (the
``Stacked*`` readers), the segments' vectors are searched exactly (they are
few). ``Views`` loads what CURRENT names, the version once and each segment
once, for a server's readers and its writer.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import scipy.sparse as sp

from recommender import directory, integrity
from recommender.errors import IndexDamaged, IndexMismatch, IndexNotFound
from recommender.filters import FilterColumns, Filters
from recommender.index import StackedIndex, VectorSearch
from recommender.lexical import Bm25Model, StackedBm25, StackedTfidf, TfidfModel
from recommender.ranker import Ranker
from recommender.segments import Segment, load_segment
from recommender.stacked import StackedRows
from recommender.version import STATS_SAMPLE, IndexVersion, Manifest

FILTER_CACHE = 8
CURRENT_REREADS = 3
"""How many times ``Views.newest_verified`` reads CURRENT again when a writer moved it while parts were loaded."""
T = TypeVar("T")


class Rows(Protocol):
    """Row access: a (memory-mapped) array, or a version's rows stacked with its segments' (``StackedRows``)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


@dataclass
class View:
    """What a reader ranks over: a version's rows, then its segments' rows,
    the rows a later segment replaced or deleted marked dead (``alive``)."""

    base: IndexVersion
    docs: VectorSearch
    chunks: VectorSearch
    doc_ids: np.ndarray
    doc_vectors: Rows
    story_ids: np.ndarray
    published_days: np.ndarray
    chunk_vectors: Rows
    chunk_offsets: np.ndarray
    tfidf: TfidfModel
    bm25: Bm25Model
    entities: TfidfModel
    columns: list[FilterColumns]
    """The filter columns of the rows, part by part (the version's, then each segment's)."""
    segments: tuple[str, ...] = ()
    seq: int | None = None
    """The store's write number up to which this view holds the writes."""
    alive: np.ndarray | None = None
    """Per row, False where a segment has replaced or deleted the article; None: every row is live."""
    base_rows: int | None = None
    """The version's rows (None: no segments)."""
    lookup: tuple[np.ndarray, np.ndarray] | None = None
    """The live rows' doc_ids, sorted, and their rows (None: ``doc_ids`` is sorted and every row live)."""
    oov_share: float = 0.0
    """The share of the segments' words missing from the version's vocabulary."""
    _masks: dict[Filters, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, version: IndexVersion) -> View:
        """The view of a version without segments."""
        return cls(
            base=version, docs=version.docs, chunks=version.chunks, doc_ids=version.doc_ids,
            doc_vectors=version.doc_vectors, story_ids=version.story_ids, published_days=version.published_days,
            chunk_vectors=version.chunk_vectors, chunk_offsets=version.chunk_offsets, tfidf=version.tfidf,
            bm25=version.bm25, entities=version.entities, columns=[version.columns], seq=version.seq,
        )

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def manifest(self) -> Manifest:
        return self.base.manifest

    @property
    def ranker(self) -> Ranker:
        return self.base.ranker

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
        """A fixed sample of rows on which each query's score distribution is
        estimated: the version's own sample, less the dead rows."""
        if self.live_count <= STATS_SAMPLE:
            return np.arange(len(self)) if self.alive is None else np.flatnonzero(self.alive)
        return self.live(self.base.sample_rows())

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

    def warm(self) -> View:
        """Build the lazily computed parts now, off the request path."""
        self.sample_vectors, self.sample_postings, self.tfidf.impacts, self.bm25.impacts  # noqa: B018
        return self

    def target_weights(self, sections: dict[str, float], tags: dict[str, float]) -> np.ndarray:
        """Per row, the summed weights of the named sections and tags it has
        (``FilterColumns.weights``), 0 for dead rows."""
        total = np.concatenate([part.weights(sections, tags) for part in self.columns])
        return total if self.alive is None else np.where(self.alive, total, 0.0)

    def row_of(self, doc_id: int) -> int | None:
        rows = self.rows_of(np.array([doc_id], dtype=np.int64))
        return int(rows[0]) if len(rows) else None

    def rows_of(self, doc_ids: np.ndarray) -> np.ndarray:
        """The live rows of the doc_ids that are in this view (others are dropped)."""
        rows = self.rows_or_missing(doc_ids)
        return rows[rows >= 0]

    def rows_or_missing(self, doc_ids: np.ndarray) -> np.ndarray:
        """Per doc_id, its live row in this view, or -1."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        ids, rows = (self.doc_ids, None) if self.lookup is None else self.lookup
        if not len(ids):
            return np.full(len(doc_ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(ids, doc_ids), len(ids) - 1)
        found = at if rows is None else rows[at]
        return np.where(ids[at] == doc_ids, found, -1).astype(np.int64)

    def chunk_owner(self, chunk_positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_offsets, chunk_positions, side="right") - 1


def compose(base: IndexVersion, segments: Sequence[Segment]) -> View:
    """The view readers serve: the version's rows, then each segment's; rows
    that a later segment replaces or deletes are dead (``View.alive``)."""
    if not segments:
        return View.of(base)
    nb = len(base)
    doc_ids = np.concatenate([base.doc_ids, *(s.doc_ids for s in segments)]).astype(np.int64)
    alive = np.ones(len(doc_ids), dtype=bool)
    later = np.zeros(0, dtype=np.int64)
    start = len(doc_ids)
    for segment in reversed(segments):
        start -= len(segment)
        alive[start : start + len(segment)] = ~np.isin(segment.doc_ids, later)
        later = np.union1d(later, np.union1d(segment.doc_ids, segment.deleted))
    alive[:nb] = ~in_sorted(base.doc_ids, later)

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
    return View(
        base=base,
        docs=StackedIndex(base.docs, seg_doc_vectors, doc_ids[nb:]),
        chunks=StackedIndex(base.chunks, seg_chunk_vectors, np.arange(base_chunks, base_chunks + len(seg_chunk_vectors))),
        doc_ids=doc_ids,
        doc_vectors=StackedRows(base.doc_vectors, seg_doc_vectors),
        story_ids=np.concatenate(story_ids),
        published_days=np.concatenate([base.published_days, *(s.published_days for s in segments)]),
        chunk_vectors=StackedRows(base.chunk_vectors, seg_chunk_vectors),
        chunk_offsets=np.concatenate(offsets).astype(np.int64),
        tfidf=StackedTfidf(base.tfidf, [s.tfidf for s in segments]),
        bm25=StackedBm25(base.bm25, [s.bm25 for s in segments]),
        entities=StackedTfidf(base.entities, [s.entities for s in segments]),
        columns=[base.columns, *(s.columns for s in segments)],
        segments=tuple(s.name for s in segments),
        seq=last.seq,
        alive=alive,
        base_rows=nb,
        lookup=(doc_ids[alive][order], np.flatnonzero(alive)[order]),
        oov_share=float(np.average([s.manifest.oov_share for s in segments],
                                   weights=[max(len(s), 1) for s in segments])),
    )


@dataclass(frozen=True)
class Refusal:
    """A part of the index folder a reader would not serve, and why."""

    version: str | None
    """The version refused, or under which a segment was refused (None: CURRENT itself)."""
    segment: str | None
    file: str | None
    reason: str

    def to_dict(self) -> dict[str, str | None]:
        return {"version": self.version, "segment": self.segment, "file": self.file, "reason": self.reason}


class Views:
    """What CURRENT names, loaded and verified: the version once, each segment
    once, and their composed view (``compose``) when CURRENT changes. Shared
    by a server's readers and its writer. A part that fails verification
    (``IndexDamaged``) is remembered while its folder's files stay as they
    are, so a reader that polls does not read it again;
    ``newest_verified`` serves the newest view that verifies instead.
    ``defer_checksums``: checksums of large files are left to the caller
    (``IndexVersion.unchecked``; the server checks them in the background)."""

    def __init__(self, index_root: Path, model_id: str | None = None, *, defer_checksums: bool = False):
        self.index_root = index_root
        self.model_id = model_id
        self.defer_checksums = defer_checksums
        self.base: IndexVersion | None = None
        self.view: View | None = None
        self._segments: dict[str, Segment] = {}
        self._refused: dict[str, tuple[tuple, IndexDamaged]] = {}
        self._lock = threading.Lock()

    def current(self) -> View | None:
        """The view CURRENT names now (None before any publish). Raises what
        loading raises (``IndexDamaged``: a part fails verification)."""
        parts = self.current_parts()
        return None if parts is None else parts.view

    def current_parts(self) -> ViewParts | None:
        """The view CURRENT names now with the version and segments it was
        composed of, taken together: a writer uses these, not ``base`` and
        ``segment_objects()``, which another thread's ``load`` may move on
        (or back, to a CURRENT it read earlier) meanwhile."""
        name, segments = directory.read_current(self.index_root)
        return None if name is None else self.load_parts(name, segments)

    def load(self, name: str, segments: tuple[str, ...]) -> View:
        return self.load_parts(name, segments).view

    def load_parts(self, name: str, segments: tuple[str, ...]) -> ViewParts:
        """The version and every named segment, verified; raises ``IndexDamaged`` for the first that fails."""
        parts, damaged = self.load_verified(name, segments)
        if damaged is not None:
            raise damaged
        return parts

    def load_verified(self, name: str, segments: tuple[str, ...]) -> tuple[ViewParts, IndexDamaged | None]:
        """The version and the longest run of its named segments, oldest
        first, that verify, with what stopped the run (None: every segment
        verified). Raises ``IndexDamaged`` when the version fails."""
        with self._lock:
            view, base = self.view, self.base
            if view is not None and base is not None and view.name == name:
                kept = len(view.segments)
                if view.segments == segments:
                    return ViewParts(view, base, [self._segments[s] for s in segments]), None
                stopped = self._still_refused(name, segments[kept]) if segments[:kept] == view.segments else None
                if stopped is not None:  # the same run of segments, stopped by the same damaged one
                    return ViewParts(view, base, [self._segments[s] for s in view.segments]), stopped
            if base is None or base.name != name:
                base = self._open(name, None, lambda: IndexVersion.load(
                    self.index_root, model_id=self.model_id, name=name, defer_checksums=self.defer_checksums))
            loaded = {s.name: s for s in self._segments.values() if s.manifest.base == name}
            parts: list[Segment] = []
            damaged = None
            version = base
            for segment_name in segments:
                try:
                    segment = loaded.get(segment_name) or self._open(
                        name, segment_name, functools.partial(self._segment, version, segment_name))
                except IndexDamaged as exc:
                    damaged = exc
                    break
                parts.append(segment)
            try:
                view = compose(base, parts).warm()
            except (ValueError, IndexError, TypeError, RuntimeError) as exc:  # parts that do not fit together
                raise IndexDamaged(f"version {name}: its files do not fit together ({type(exc).__name__}: {exc})") \
                    from None
            self.base, self._segments, self.view = base, {p.name: p for p in parts}, view
            return ViewParts(view, base, parts), damaged

    def _segment(self, base: IndexVersion, name: str) -> Segment:
        segment = load_segment(self.index_root, base.name, name)
        segment.check_fits(base)
        return segment

    def _open(self, version: str, segment: str | None, load: Callable[[], T]) -> T:
        """``load()``, unless the part was refused and its folder has not changed since."""
        key, folder = self._key(version, segment)
        fingerprint = integrity.folder_fingerprint(folder)
        refused = self._refused.get(key)
        if refused is not None and refused[0] == fingerprint:
            raise refused[1]
        try:
            loaded = load()
        except IndexDamaged as exc:
            self._refused[key] = (fingerprint, exc)
            raise
        self._refused.pop(key, None)
        return loaded

    def _still_refused(self, version: str, segment: str) -> IndexDamaged | None:
        key, folder = self._key(version, segment)
        refused = self._refused.get(key)
        return refused[1] if refused is not None and refused[0] == integrity.folder_fingerprint(folder) else None

    def _key(self, version: str, segment: str | None) -> tuple[str, Path]:
        folder = directory.version_dir(self.index_root, version)
        return (version, folder) if segment is None else (f"{version}/{segment}", folder / directory.SEGMENTS / segment)

    def refuse(self, version: str, damaged: IndexDamaged) -> None:
        """A check after loading (a checksum in the background) failed: the
        version is not served again while its files stay as they are."""
        with self._lock:
            key, folder = self._key(version, None)
            self._refused[key] = (integrity.folder_fingerprint(folder), damaged)
            if self.base is not None and self.base.name == version:
                self.base, self.view, self._segments = None, None, {}

    def newest_verified(self) -> tuple[ViewParts | None, list[Refusal]]:
        """The newest view that verifies, and what was refused on the way: the
        view CURRENT names; else its version with the segments before the
        first that fails; else, newest first, each earlier version in
        ``versions/`` with the segments in its folder that verify (where
        CURRENT is damaged or names a version that is not there: every version). (None, refusals) when none
        verifies; (None, []) before the first publish. Raises
        ``IndexMismatch`` when CURRENT's version is of another model or format.
        A part refused while CURRENT moved on (a writer published, and pruned
        the part meanwhile: a merged segment, a version beyond ``keep_versions``)
        is no refusal: CURRENT is read again, up to ``CURRENT_REREADS`` times."""
        for _ in range(CURRENT_REREADS):
            read = self._read_current()
            parts, refused = self._newest_verified(read)
            if not refused or _same(self._read_current(), read):
                break
        return parts, refused

    def _read_current(self) -> tuple[str | None, tuple[str, ...], IndexDamaged | None]:
        try:
            return (*directory.read_current(self.index_root), None)
        except IndexDamaged as exc:
            return None, (), exc

    def _newest_verified(
        self, read: tuple[str | None, tuple[str, ...], IndexDamaged | None]
    ) -> tuple[ViewParts | None, list[Refusal]]:
        name, segments, damaged_current = read
        refused: list[Refusal] = []
        if damaged_current is not None:
            refused.append(Refusal(None, None, damaged_current.file, str(damaged_current)))
        if name is None and not refused:
            return None, []
        published = sorted(self._published(), reverse=True)
        candidates = [(name, segments)] if name is not None else []
        for version in published:  # earlier versions; every one where CURRENT names none that is there
            if name is None or name not in published or version < name:
                candidates.append((version, self._segment_folders(version)))
        for version, names in candidates:
            try:
                parts, damaged = self.load_verified(version, names)
            except IndexMismatch as exc:
                if version == name:
                    raise
                refused.append(Refusal(version, None, None, str(exc)))
                continue
            except FileNotFoundError as exc:  # named by CURRENT, not in versions/
                refused.append(Refusal(version, None, None, f"version {version} is missing ({exc})"))
                continue
            except IndexDamaged as exc:
                refused.append(Refusal(version, None, exc.file, str(exc)))
                continue
            if damaged is not None:
                failed = names[len(parts.segments)]
                refused.append(Refusal(version, failed, damaged.file, str(damaged)))
            return parts, refused
        return None, refused

    def _published(self) -> list[str]:
        folder = self.index_root / directory.VERSIONS
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _segment_folders(self, version: str) -> tuple[str, ...]:
        """The segments in a version's folder, oldest first (a merged segment
        after those it merged: its rows replace theirs)."""
        folder = directory.segments_dir(self.index_root, version)
        if not folder.is_dir():
            return ()
        return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))

    def segment_objects(self) -> list[Segment]:
        """The loaded segments of the last loaded view, oldest first (for
        reports; a writer takes ``current_parts``)."""
        with self._lock:
            view = self.view
            return [] if view is None else [self._segments[s] for s in view.segments]


@dataclass(frozen=True)
class ViewParts:
    """A composed view, the version under it and its segments, oldest first."""

    view: View
    base: IndexVersion
    segments: list[Segment]

    @property
    def pending(self) -> list[int]:
        """Articles the last publish could not embed: retried by the next segment."""
        if self.segments:
            return list(self.segments[-1].manifest.pending)
        return list(self.base.manifest.pending)


def _same(a: tuple[str | None, tuple[str, ...], IndexDamaged | None],
          b: tuple[str | None, tuple[str, ...], IndexDamaged | None]) -> bool:
    """Two reads of CURRENT found the same (the same damage, where damaged)."""
    return a[:2] == b[:2] and str(a[2]) == str(b[2])


def in_sorted(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``allowed`` (sorted, unique): a binary
    search per value, so a filter allowing most of a large archive costs the
    candidates' number, not the archive's (``np.isin`` sorts both)."""
    if not len(allowed):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(allowed, values), len(allowed) - 1)
    return allowed[at] == values


def load_view(index_root: Path, model_id: str | None = None) -> View:
    """The view CURRENT names (the version and its segments), for tools and tests."""
    view = Views(index_root, model_id).current()
    if view is None:
        raise IndexNotFound(f"no index has been published in {index_root}; run `recommender reindex`")
    return view
