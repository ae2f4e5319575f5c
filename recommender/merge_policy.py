"""When writes go beside the live version as a segment, when segments are
merged into one another, and when a full build replaces the version and its
segments (Lucene's merge policy, for an archive that takes most of its
writes as new articles)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recommender import directory
from recommender.config import Settings
from recommender.errors import IndexDamaged, IndexMismatch
from recommender.segments import Segment
from recommender.version import FORMAT_VERSION, Layout, Manifest
from recommender.view import View

MAX_SEGMENTS = 12
"""More segments than this are merged into one, whatever their sizes."""
SEGMENT_HARD_LIMIT = 0.5
"""With a full build pending in the background, segments may grow to this
share of the archive before a write waits for a full build."""
MERGE_OOV_SHARE = 0.1
MERGE_OOV_MIN_ROWS = 200


def takes_segments(previous: Manifest | None, key: str, build: dict, settings: Settings) -> bool:
    """Whether writes can go beside the live version: it is of this format,
    model (``key``) and build settings (``build``), and knows up to which
    write it holds the store."""
    return (
        previous is not None and settings.segment_merge_fraction > 0
        and previous.format_version == FORMAT_VERSION and previous.embedding_key == key
        and previous.build_settings == build
        and previous.snapshot is not None and previous.snapshot.seq is not None
    )


def too_big(view: View, changed: int, fraction: float) -> bool:
    """Segments would hold more than ``fraction`` of the version."""
    in_segments = len(view) - (view.base_rows if view.base_rows is not None else len(view))
    return in_segments + changed > max(1.0, fraction * max(view.live_count, 1))


def merge_due(view: View, settings: Settings) -> bool:
    """Whether a full build should replace the version and its segments: they
    hold more than ``segment_merge_fraction`` of it, or the idf has drifted:
    the segments' articles use many words the version's vocabulary lacks
    (over ``MERGE_OOV_SHARE`` of their words, once ``MERGE_OOV_MIN_ROWS`` are in)."""
    if not view.segments:
        return False
    rows = len(view) - (view.base_rows or 0)
    if rows > settings.segment_merge_fraction * max(view.live_count, 1):
        return True
    return rows >= MERGE_OOV_MIN_ROWS and view.oov_share > MERGE_OOV_SHARE


def merges_next(segments: Sequence[Segment]) -> bool:
    """Whether the two newest segments are merged into one. Tiered: a segment
    is merged into the one before it once it holds half as much, so there are
    few segments and each row is rewritten a few times at most."""
    return len(segments) >= 2 and (_size(segments[-1]) * 2 >= _size(segments[-2]) or len(segments) > MAX_SEGMENTS)


def _size(segment: Segment) -> int:
    return len(segment) + len(segment.deleted)


def rebuild_reason(previous: Manifest | None, corpus_hash: str, key: str, legacy_key: str, build: dict,
                   index_root: Path, force: bool) -> str:
    """Why a new version is needed; empty when the published one is current."""
    if previous is None:
        try:
            named = directory.read_current(index_root)[0]
        except IndexDamaged as exc:
            return f"{exc}: rebuilt from the store"
        if named is not None:
            try:
                Manifest.read(Layout.of(index_root, named).manifest)
            except (IndexDamaged, FileNotFoundError) as exc:
                return f"{exc}: rebuilt from the store"
            except IndexMismatch:
                pass
            return f"the published index cannot be read by this release (format {FORMAT_VERSION})"
        return "no index published yet"
    if previous.format_version != FORMAT_VERSION:
        return f"index format {previous.format_version} is older than {FORMAT_VERSION}"
    if previous.embedding_key == legacy_key:
        return "the embedding key now names the precision and the backend (the vectors are kept)"
    if previous.embedding_key != key:
        return f"model or passage settings changed ({previous.embedding_key} -> {key}): full rebuild"
    if previous.build_settings != build:
        return "index settings changed"
    if previous.corpus_hash != corpus_hash:
        return "articles added, changed or deleted"
    return "forced" if force else ""
