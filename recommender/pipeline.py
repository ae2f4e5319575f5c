"""Reindex: publish what the store holds. Writes since the live version go
beside it as a segment while the merge policy allows (seconds, whatever the
archive's size); otherwise a new version is built from every article
(``recommender.build``) and swapped in. The embedding step is in
``recommender.embed_jobs``, the merge policy in ``recommender.merge_policy``,
the folder's protocol in ``recommender.directory``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recommender import directory
from recommender.build import build_segment, build_settings, build_version, corpus_hash_of, count_deleted
from recommender.config import Settings
from recommender.embed_jobs import EMBED_BATCH_DOCS, EmbedEngine, LocalEngine, embed_stale
from recommender.embedders import EmbedderSpec, LazyEmbedder
from recommender.errors import IndexDamaged, IndexMismatch
from recommender.merge_policy import SEGMENT_HARD_LIMIT, merge_due, merges_next, rebuild_reason, takes_segments, too_big
from recommender.segments import merge_segments, save_segment
from recommender.store import Changes, Store
from recommender.version import Manifest, read_current_manifest
from recommender.view import ViewParts, Views

log = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    embedded: int = 0
    skipped: int = 0
    deleted: int = 0
    seconds: float = 0.0
    docs_per_second: float = 0.0
    articles: int = 0
    version: str | None = None
    published: bool = False
    dry_run: bool = False
    to_embed: int = 0
    """Articles whose vectors are missing or outdated when the run started."""
    reason: str = ""
    """Why a new version is (or would be) published, or why not."""
    failed: list[int] = field(default_factory=list)
    """doc_ids that could not be embedded; they are left out of the published
    index and retried by the next run (exit code 3, partial success)."""
    passages_embedded: int = 0
    passages_reused: int = 0
    """Passages whose text already had a vector (an unchanged paragraph of an
    updated article, a syndicated copy): not embedded again."""
    engine: str = "local"
    segment: str | None = None
    """The segment published, when the writes went beside the live version."""
    merge_due: bool = False
    """Segments have grown enough that a full build should replace them (see ``merge_due``)."""

    def to_dict(self) -> dict:
        return asdict(self)



def reindex(
    settings: Settings,
    store: Store,
    embedder: LazyEmbedder,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    full: bool = False,
    dry_run: bool = False,
    engine: EmbedEngine | None = None,
    batch_docs: int = EMBED_BATCH_DOCS,
    views: Views | None = None,
    background_merge: bool = False,
) -> ReindexReport:
    """Publish what the store holds. Writes since the live version go into a
    segment beside it (seconds, whatever the archive's size) while segments
    stay under ``segment_merge_fraction`` of the version; otherwise, or with
    ``full`` or ``force`` (which also retrains the inverted files), a new
    version is built from every article and swapped in. With ``dry_run``,
    only report what would be done. ``embedder`` names the vectors (its
    spec's key) and, unless ``engine`` runs the embedding step elsewhere,
    makes them in this process; in jobs of
    ``batch_docs`` articles; ``on_progress(done, total)`` is called as
    articles are embedded. ``views`` shares a reader's loaded version (the
    server's) with the writer. With ``background_merge`` (the server), writes
    go into a segment even past ``segment_merge_fraction`` (up to
    ``SEGMENT_HARD_LIMIT``): the caller runs the full build elsewhere when the
    report says ``merge_due``, so freshness does not wait for it."""
    started = time.perf_counter()
    key = embedder.key
    engine = engine or LocalEngine(embedder.get)
    report = ReindexReport(dry_run=dry_run, engine=getattr(engine, "name", "local"))
    if not dry_run:
        store.rename_embeddings(embedder.spec.legacy_key, key)
    previous = read_current_manifest(settings.index_root)
    damage = ""
    if not (full or force) and takes_segments(previous, key, build_settings(settings), settings):
        assert previous is not None
        views = views or Views(settings.index_root, previous.model_id)
        with directory.lock(settings.data_dir / directory.WRITE_LOCK):
            try:
                parts = views.current_parts()  # CURRENT holds still under the write lock
            except (IndexDamaged, FileNotFoundError) as exc:  # rebuilt from the store below
                parts, damage = None, str(exc)
            view = parts.view if parts is not None else None
            if parts is not None and view is not None and view.seq is not None:
                changes = store.changes_since(view.seq)
                pending = parts.pending
                report.version = view.name
                report.articles = store.count()
                if not changes and not pending:
                    report.skipped = report.articles
                    return _finish(report, started)
                limit = SEGMENT_HARD_LIMIT if background_merge else settings.segment_merge_fraction
                if not too_big(view, len(changes) + len(pending), limit):
                    report.reason = f"{len(changes) + len(pending)} articles changed since the last publish: a segment"
                    if dry_run:
                        report.to_embed = len(store.stale_among(key, sorted(set(changes.changed) | set(pending))))
                    else:
                        _publish_segment(settings, store, key, engine, views, parts, changes, pending, report,
                                         on_progress=on_progress, batch_docs=batch_docs)
                    return _finish(report, started)
    return _finish(_full_reindex(settings, store, embedder.spec, engine, report, previous, force=force,
                                 dry_run=dry_run, on_progress=on_progress, batch_docs=batch_docs,
                                 damage=damage, views=views), started)


def _finish(report: ReindexReport, started: float) -> ReindexReport:
    report.seconds = round(time.perf_counter() - started, 3)
    report.docs_per_second = round(report.embedded / report.seconds, 2) if report.seconds else 0.0
    return report


def _full_reindex(
    settings: Settings, store: Store, spec: EmbedderSpec, engine: EmbedEngine, report: ReindexReport,
    previous: Manifest | None, *, force: bool, dry_run: bool, on_progress: Callable[[int, int], None] | None,
    batch_docs: int, damage: str = "", views: Views | None = None,
) -> ReindexReport:
    """Embed what is stale in the whole store and build a new version, if the
    live one does not hold the store's articles or is damaged (``damage``, or
    found by ``live_damage``: a file fails verification). The build does not
    hold the write lock (segments keep being published meanwhile); the swap does."""
    key = spec.key
    with directory.lock(settings.data_dir / directory.MERGE_LOCK):
        report.articles = store.count()
        cached = key
        if dry_run and not store.has_embeddings(key):  # the run would move the legacy vectors first
            cached = spec.legacy_key
        stale = store.stale_embeddings(cached)
        report.to_embed = len(stale)
        report.skipped = report.articles - len(stale)
        hashes = store.content_hashes()
        corpus_hash = corpus_hash_of(hashes)
        if previous is not None:
            report.deleted = count_deleted(settings, previous, hashes)
            report.version = previous.version
        report.reason = rebuild_reason(previous, corpus_hash, key, spec.legacy_key, build_settings(settings),
                                       settings.index_root, force)
        try:
            segments = directory.read_current(settings.index_root)[1]
        except IndexDamaged as exc:
            segments, damage = (), damage or str(exc)
        if not report.reason and segments:  # metadata changes leave the corpus hash as it was
            report.reason = f"{len(segments)} segments merged into a new version"
        if not report.reason and not damage and previous is not None:  # a build anyway: no full load to check
            damage = live_damage(settings.index_root, previous, views)
        if damage and "rebuilt from the store" not in report.reason:
            report.reason = f"the published index is damaged ({damage}): rebuilt from the store"
        if dry_run:
            return report
        if stale:
            embed_stale(settings, store, engine, stale, key, report, on_progress=on_progress, batch_docs=batch_docs)
        if report.reason:
            report.version = build_version(settings, store, key, engine, retrain=force or bool(damage),
                                           pending=report.failed)
            report.published = True
            store.prune_embeddings(key)
    return report



def live_damage(index_root: Path, previous: Manifest, views: Views | None = None) -> str:
    """Why the view CURRENT names fails verification (every checksum, every
    shape), or "" when it verifies. ``views``: a server's, which has loaded
    and verified it already (no second copy in memory)."""
    try:
        (views or Views(index_root, previous.model_id)).current_parts()
    except (IndexDamaged, FileNotFoundError) as exc:
        return str(exc)
    except IndexMismatch:  # another model or format: ``rebuild_reason`` says so
        return ""
    return ""


def _publish_segment(
    settings: Settings, store: Store, key: str, engine: EmbedEngine, views: Views, parts: ViewParts,
    changes: Changes, pending: list[int], report: ReindexReport,
    *, on_progress: Callable[[int, int], None] | None, batch_docs: int,
) -> None:
    """Embed the changed articles, write them as a segment beside the live
    version and point CURRENT at it (under the write lock)."""
    wanted = sorted(set(changes.changed) | set(pending))
    stale = store.stale_among(key, wanted)
    report.to_embed = len(stale)
    report.skipped = report.articles - len(stale)
    if stale:
        embed_stale(settings, store, engine, stale, key, report, on_progress=on_progress, batch_docs=batch_docs)
    view = parts.view
    segment = build_segment(store, key, parts.base, view, wanted, changes.deleted, changes.seq)
    report.failed = sorted(set(report.failed) | set(segment.manifest.pending))
    segments = [*parts.segments, segment]
    save_segment(settings.index_root, segment)
    while merges_next(segments):
        merged = merge_segments(segments[-2:], directory.new_name())
        save_segment(settings.index_root, merged)
        segments[-2:] = [merged]
    names = [s.name for s in segments]
    directory.write_current(settings.index_root, view.name, names)
    directory.prune_segments(settings.index_root, view.name, names)
    report.segment, report.published, report.version = names[-1], True, view.name
    report.merge_due = merge_due(views.load(view.name, tuple(names)), settings)
    log.info("published segment %s beside %s: %d articles, %d deleted", segment.name, view.name,
             len(segment), len(segment.deleted))
