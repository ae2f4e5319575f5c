"""Reindex: embed what changed, build a new index version, publish it atomically."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from recommender import __version__
from recommender.config import Settings
from recommender.copies import WordHashes, copy_pairs, is_copy, shingles, story_labels
from recommender.embed import Embedder, model_id_for
from recommender.errors import ConfigError, RecommenderError
from recommender.filters import FilterColumns
from recommender.index import VectorIndex
from recommender.lexical import build_keyword_models, keyword_rows
from recommender.rank.model import DEFAULT_MODEL as DEFAULT_RANKER
from recommender.rank.model import Ranker
from recommender.segments import (
    MAX_SEGMENTS,
    Segment,
    SegmentManifest,
    ViewParts,
    Views,
    merge_segments,
    new_segment_name,
    prune_segments,
    save_segment,
    write_current,
)
from recommender.store import CHUNK_HASH_BYTES, Changes, Store, StoredArticle
from recommender.text import chunk_article, tokenize
from recommender.version import (
    FORMAT_VERSION,
    IndexVersion,
    Layout,
    Manifest,
    Snapshot,
    current_state,
    current_version_name,
    new_staging_dir,
    publish,
    read_current_manifest,
)

log = logging.getLogger(__name__)

EMBED_BATCH_DOCS = 256
"""Articles per embedding job: one call, sorted by length (less padding than
smaller jobs), and one checkpoint transaction."""
STORY_RULES = 3
"""Bumped when the story rules change, so the next reindex re-derives stories."""


class EmbeddingError(RecommenderError):
    """The embedding step failed for every article it tried."""


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


def build_settings(settings: Settings) -> dict:
    """Settings baked into a published version besides the vectors themselves."""
    return {
        "faiss_factory": settings.faiss_factory,
        "story_rules": STORY_RULES,
        "ranker": hashlib.sha256(json.dumps(ranker_model(settings).to_dict(), sort_keys=True).encode()).hexdigest()[:16],
    }


def ranker_model(settings: Settings) -> Ranker:
    """The configured ranking model (``ranker_file``), or the packaged one."""
    try:
        return Ranker.load(settings.ranker_file or DEFAULT_RANKER)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the ranker model {settings.ranker_file}: {exc}") from None


def embedding_key(settings: Settings) -> str:
    """Cached vectors are valid for what made them: the model, the way bodies
    are cut into passages, and the arithmetic and runtime that ran the model
    (the precision as resolved on this machine, never "auto")."""
    from recommender.backends import resolve

    choice = resolve(settings)
    return f"{_legacy_embedding_key(settings)}|precision={choice.precision}|backend={choice.backend}"


def _legacy_embedding_key(settings: Settings) -> str:
    """The key of releases before precision and backend were part of it.
    Their vectors are moved to the new key rather than embedded again: they
    are taken to be made with the precision that resolves here (true unless
    the store was embedded on a machine with other bfloat16 support, under
    ``precision = "auto"``; docs/guide.md says how to start over). The move is
    one-way: an older release would embed the archive again."""
    return f"{model_id_for(settings.model)}|chunks={settings.chunk_words}x{settings.max_chunks}"


def reindex(
    settings: Settings,
    store: Store,
    load_embedder: Callable[[], Embedder],
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
    only report what would be done. ``engine`` runs the embedding step
    (default: in this process, with ``load_embedder``), in jobs of
    ``batch_docs`` articles; ``on_progress(done, total)`` is called as
    articles are embedded. ``views`` shares a reader's loaded version (the
    server's) with the writer. With ``background_merge`` (the server), writes
    go into a segment even past ``segment_merge_fraction`` (up to
    ``SEGMENT_HARD_LIMIT``): the caller runs the full build elsewhere when the
    report says ``merge_due``, so freshness does not wait for it."""
    started = time.perf_counter()
    key = embedding_key(settings)
    engine = engine or LocalEngine(load_embedder)
    report = ReindexReport(dry_run=dry_run, engine=getattr(engine, "name", "local"))
    legacy = _legacy_embedding_key(settings)
    if not dry_run:
        store.rename_embeddings(legacy, key)
    previous = read_current_manifest(settings.index_root)
    if not (full or force) and _takes_segments(previous, key, settings):
        assert previous is not None
        views = views or Views(settings.index_root, previous.model_id)
        with data_lock(settings.data_dir, WRITE_LOCK):
            parts = views.current_parts()  # CURRENT holds still under the write lock
            view = parts.view if parts is not None else None
            if parts is not None and view is not None and view.seq is not None:
                changes = store.changes_since(view.seq)
                pending = pending_articles(parts)
                report.version = view.name
                report.articles = store.count()
                if not changes and not pending:
                    report.skipped = report.articles
                    return _finish(report, started)
                limit = SEGMENT_HARD_LIMIT if background_merge else settings.segment_merge_fraction
                if not _too_big(view, len(changes) + len(pending), limit):
                    report.reason = f"{len(changes) + len(pending)} articles changed since the last publish: a segment"
                    if dry_run:
                        report.to_embed = len(store.stale_among(key, sorted(set(changes.changed) | set(pending))))
                    else:
                        _publish_segment(settings, store, key, engine, views, parts, changes, pending, report,
                                         on_progress=on_progress, batch_docs=batch_docs)
                    return _finish(report, started)
    return _finish(_full_reindex(settings, store, key, engine, report, previous, force=force, dry_run=dry_run,
                                 on_progress=on_progress, batch_docs=batch_docs), started)


def _finish(report: ReindexReport, started: float) -> ReindexReport:
    report.seconds = round(time.perf_counter() - started, 3)
    report.docs_per_second = round(report.embedded / report.seconds, 2) if report.seconds else 0.0
    return report


def _full_reindex(
    settings: Settings, store: Store, key: str, engine: EmbedEngine, report: ReindexReport, previous: Manifest | None,
    *, force: bool, dry_run: bool, on_progress: Callable[[int, int], None] | None, batch_docs: int,
) -> ReindexReport:
    """Embed what is stale in the whole store and build a new version, if the
    live one does not hold the store's articles. The build does not hold the
    write lock (segments keep being published meanwhile); the swap does."""
    with data_lock(settings.data_dir, MERGE_LOCK):
        report.articles = store.count()
        cached = key
        if dry_run and not store.has_embeddings(key):  # the run would move the legacy vectors first
            cached = _legacy_embedding_key(settings)
        stale = store.stale_embeddings(cached)
        report.to_embed = len(stale)
        report.skipped = report.articles - len(stale)
        hashes = store.content_hashes()
        corpus_hash = _corpus_hash(hashes)
        if previous is not None:
            report.deleted = _count_deleted(settings, previous, hashes)
            report.version = previous.version
        report.reason = _rebuild_reason(previous, corpus_hash, key, settings, force)
        segments = current_state(settings.index_root)[1]
        if not report.reason and segments:  # metadata changes leave the corpus hash as it was
            report.reason = f"{len(segments)} segments merged into a new version"
        if dry_run:
            return report
        if stale:
            _embed(settings, store, engine, stale, key, report, on_progress=on_progress, batch_docs=batch_docs)
        if report.reason:
            report.version = _build_and_publish(settings, store, key, engine, retrain=force, pending=report.failed)
            report.published = True
            store.prune_embeddings(key)
    return report


def _takes_segments(previous: Manifest | None, key: str, settings: Settings) -> bool:
    """Whether writes can go beside the live version: it is of this format,
    model and settings, and knows up to which write it holds the store."""
    return (
        previous is not None and settings.segment_merge_fraction > 0
        and previous.format_version == FORMAT_VERSION and previous.embedding_key == key
        and previous.build_settings == build_settings(settings)
        and previous.snapshot is not None and previous.snapshot.seq is not None
    )


def _too_big(view: IndexVersion, changed: int, fraction: float) -> bool:
    """Segments would hold more than ``fraction`` of the version."""
    in_segments = len(view) - (view.base_rows if view.base_rows is not None else len(view))
    return in_segments + changed > max(1.0, fraction * max(view.live_count, 1))


SEGMENT_HARD_LIMIT = 0.5
"""With a full build pending in the background, segments may grow to this
share of the archive before a write waits for a full build."""


def merge_due(view: IndexVersion, settings: Settings) -> bool:
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


MERGE_OOV_SHARE = 0.1
MERGE_OOV_MIN_ROWS = 200
WRITE_LOCK = "reindex.lock"
"""Held to publish (a segment, or the swap to a new version): short."""
MERGE_LOCK = "merge.lock"
"""Held by a full build, one at a time: long, and segments are published meanwhile."""


@contextmanager
def data_lock(data_dir: Path, name: str, *, blocking: bool = True) -> Iterator[bool]:
    """A lock file in the data folder, across processes and threads (each
    holder opens the file itself). Non-blocking, it yields False when taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / name, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _rebuild_reason(previous: Manifest | None, corpus_hash: str, key: str, settings: Settings, force: bool) -> str:
    """Why a new version is needed; empty when the published one is current."""
    if previous is None:
        if current_version_name(settings.index_root) is not None:
            return f"the published index cannot be read by this release (format {FORMAT_VERSION})"
        return "no index published yet"
    if previous.format_version != FORMAT_VERSION:
        return f"index format {previous.format_version} is older than {FORMAT_VERSION}"
    if previous.embedding_key == _legacy_embedding_key(settings):
        return "the embedding key now names the precision and the backend (the vectors are kept)"
    if previous.embedding_key != key:
        return f"model or passage settings changed ({previous.embedding_key} -> {key}): full rebuild"
    if previous.build_settings != build_settings(settings):
        return "index settings changed"
    if previous.corpus_hash != corpus_hash:
        return "articles added, changed or deleted"
    return "forced" if force else ""


@dataclass
class EmbedJob:
    """Passages to embed for a few articles: ``texts[i]`` belongs to the i-th."""

    number: int
    texts: list[list[str]]


EmbedResult = list  # per article of the job: an (n, dim) array, or the exception that stopped it


class EmbedEngine(Protocol):
    """Where the embedding step runs. Results may arrive in any order."""

    def run(self, jobs: Iterable[EmbedJob]) -> Iterator[tuple[EmbedJob, EmbedResult]]: ...


class LocalEngine:
    """Embeds in this process, one job after the other."""

    def __init__(self, load_embedder: Callable[[], Embedder]):
        self.load_embedder = load_embedder

    def run(self, jobs: Iterable[EmbedJob]) -> Iterator[tuple[EmbedJob, EmbedResult]]:
        embedder = None
        for job in jobs:
            if embedder is None:
                embedder = self.load_embedder()
            yield job, embed_job(embedder, job)


def embed_job(embedder: Embedder, job: EmbedJob) -> EmbedResult:
    """Embed a job's passages in one call; if that fails, article by article, so
    one bad article costs only itself. If every article fails, the cause is not
    an article (the model, memory): the first error is raised and the run stops."""
    flat = [text for texts in job.texts for text in texts]
    try:
        vectors = embedder.embed(flat)
    except Exception as exc:  # noqa: BLE001 - isolated per article below
        if len(job.texts) == 1:
            return [exc]
        log.warning("embedding job %d failed (%s); retrying article by article", job.number, exc)
        results: EmbedResult = []
        for texts in job.texts:
            try:
                results.append(embedder.embed(texts))
            except Exception as inner:  # noqa: BLE001 - reported as a failed article
                results.append(inner)
        if all(isinstance(r, Exception) for r in results):
            raise exc
        return results
    bounds = np.cumsum([0] + [len(t) for t in job.texts])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def passage_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=CHUNK_HASH_BYTES).digest()


@dataclass
class _Pending:
    doc_ids: list[int]
    content_hashes: list[str]
    passage_hashes: list[list[bytes]]
    new_hashes: list[list[bytes]]
    """Per article, the hashes of the passages sent to the engine, in order."""
    known: dict[bytes, np.ndarray]


def _embed(
    settings: Settings, store: Store, engine: EmbedEngine, stale: list[int], key: str,
    report: ReindexReport, *, on_progress: Callable[[int, int], None] | None, batch_docs: int = EMBED_BATCH_DOCS,
) -> None:
    """Embed the stale articles' passages that have no vector yet and checkpoint
    each job's articles in one transaction, as its results arrive."""
    pending: dict[int, _Pending] = {}

    def jobs() -> Iterator[EmbedJob]:
        for number, start in enumerate(range(0, len(stale), batch_docs)):
            batch = store.get_many(stale[start : start + batch_docs])
            doc_ids = list(batch)
            content_hashes = [batch[d].content_hash for d in doc_ids]
            known = store.known_passage_vectors(key, doc_ids, content_hashes)
            texts: list[list[str]] = []
            hashes: list[list[bytes]] = []
            new_hashes: list[list[bytes]] = []
            for doc_id in doc_ids:
                article = batch[doc_id].article
                chunks = chunk_article(article.title, article.body, settings.chunk_words, settings.max_chunks)
                chunk_hashes = [passage_hash(c) for c in chunks]
                # Each article asks for its own new passages (also those another
                # article of this job shares), so one failing article never
                # costs another; stored vectors are reused.
                new, new_h = [], []
                for text, h in zip(chunks, chunk_hashes):
                    if h in known or h in new_h:
                        report.passages_reused += 1
                    else:
                        new.append(text)
                        new_h.append(h)
                texts.append(new)
                hashes.append(chunk_hashes)
                new_hashes.append(new_h)
            pending[number] = _Pending(doc_ids, content_hashes, hashes, new_hashes, known)
            yield EmbedJob(number, texts)

    done = 0
    if on_progress:
        on_progress(done, len(stale))
    try:
        for job, results in engine.run(jobs()):
            _save_job(store, key, job, results, pending.pop(job.number), report)
            done += len(job.texts)
            if on_progress:
                on_progress(done, len(stale))
    except EmbeddingError:
        raise
    except Exception as exc:  # the model, memory, a worker: what is saved so far is kept
        raise EmbeddingError(f"embedding stopped: {type(exc).__name__}: {exc}") from exc


def _save_job(store: Store, key: str, job: EmbedJob, results: EmbedResult, state: _Pending, report: ReindexReport) -> None:
    """Checkpoint one job's articles in one transaction: a killed job keeps what it embedded."""
    new_vectors = dict(state.known)
    for new_h, result in zip(state.new_hashes, results):
        if isinstance(result, np.ndarray):
            new_vectors.update(zip(new_h, result))
    rows = []
    for doc_id, content_hash, chunk_hashes, texts, result in zip(
        state.doc_ids, state.content_hashes, state.passage_hashes, job.texts, results
    ):
        if isinstance(result, Exception) or any(h not in new_vectors for h in chunk_hashes):
            report.failed.append(doc_id)
            log.error("article with doc_id %d was not embedded: %s", doc_id, result)
            continue
        vectors = np.stack([new_vectors[h] for h in chunk_hashes])
        rows.append((doc_id, content_hash, vectors, b"".join(chunk_hashes)))
        report.passages_embedded += len(texts)
    store.save_embeddings(key, rows)
    report.embedded += len(rows)


def pending_articles(parts: ViewParts | None) -> list[int]:
    """Articles the last publish could not embed: retried by the next segment."""
    if parts is None:
        return []
    if parts.segments:
        return list(parts.segments[-1].manifest.pending)
    return list(parts.base.manifest.pending)


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
        _embed(settings, store, engine, stale, key, report, on_progress=on_progress, batch_docs=batch_docs)
    view = parts.view
    segment = build_segment(settings, store, key, parts.base, view, wanted, changes.deleted, changes.seq)
    report.failed = sorted(set(report.failed) | set(segment.manifest.pending))
    segments = [*parts.segments, segment]
    save_segment(settings.index_root, segment)
    # Tiered merging of the newest segments: a segment is merged into the one
    # before it once it holds half as much, so there are few segments and
    # each row is rewritten a few times at most.
    while len(segments) >= 2 and (_size(segments[-1]) * 2 >= _size(segments[-2]) or len(segments) > MAX_SEGMENTS):
        merged = merge_segments(segments[-2:], new_segment_name())
        save_segment(settings.index_root, merged)
        segments[-2:] = [merged]
    names = [s.name for s in segments]
    write_current(settings.index_root, view.name, names)
    prune_segments(settings.index_root, view.name, names)
    report.segment, report.published, report.version = names[-1], True, view.name
    report.merge_due = merge_due(views.load(view.name, tuple(names)), settings)
    log.info("published segment %s beside %s: %d articles, %d deleted", segment.name, view.name,
             len(segment), len(segment.deleted))


def _size(segment: Segment) -> int:
    return len(segment) + len(segment.deleted)


def build_segment(
    settings: Settings, store: Store, key: str, base: IndexVersion, view: IndexVersion,
    changed: Sequence[int], deleted: Sequence[int], seq: int,
) -> Segment:
    """The segment for these writes over ``view`` (``base`` is its version):
    rows for the changed articles that have current vectors, weighed with the
    version's keyword statistics; the rest (not embedded yet) is pending.
    Deleted articles, and changed ones deleted meanwhile, are deletions."""
    with store.snapshot():
        embedded = store.current_embeddings(key, changed)
        stored = store.get_many(list(changed))
    doc_ids = [d for d in changed if d in embedded and d in stored]
    pending = [d for d in changed if d in stored and d not in embedded]
    gone = [d for d in changed if d not in stored]
    dim = base.manifest.dimension
    blocks = [embedded[d][1] for d in doc_ids]
    lengths = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunk_vectors = np.ascontiguousarray(np.vstack(blocks) if blocks else np.zeros((0, dim)), dtype=np.float32)
    doc_vectors = article_vectors(chunk_vectors, offsets) if blocks else np.zeros((0, dim), np.float32)
    articles = [stored[d].article for d in doc_ids]
    titles, bodies = [a.title for a in articles], [a.body for a in articles]
    tfidf, bm25, entities = keyword_rows(base.tfidf, base.bm25, base.entities, titles, bodies)
    dead = sorted(set(deleted) | set(pending) | set(gone))
    return Segment(
        manifest=SegmentManifest(
            name=new_segment_name(), base=base.name, seq=seq, rows=len(doc_ids),
            deleted=len(dead), chunks=len(chunk_vectors),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), pending=tuple(pending),
            oov_share=_oov_share(base, titles, bodies),
        ),
        doc_ids=np.asarray(doc_ids, dtype=np.int64),
        deleted=np.asarray(dead, dtype=np.int64),
        doc_vectors=doc_vectors, chunk_vectors=chunk_vectors, chunk_offsets=offsets,
        published_days=published_days([a.published for a in articles]),
        story_doc_ids=segment_stories(view, store, [stored[d] for d in doc_ids], doc_vectors),
        tfidf=tfidf, entities=entities, bm25=bm25,
        columns=FilterColumns.build(articles),
    )


STORY_NEIGHBORS = 10
"""A new article's copies are looked for among its nearest articles by vector
(a copy shares most of its text, so it is among them); the shingle rule decides."""


def segment_stories(view: IndexVersion, store: Store, articles: Sequence[StoredArticle], vectors: np.ndarray) -> np.ndarray:
    """Each new article's story, as the doc_id of the story's original: the
    story of an indexed copy (by the copy rule of ``recommender.copies``, or a
    shared canonical URL) among its nearest articles; else, among the new
    articles that copy one another, the earliest published one."""
    n = len(articles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    words = WordHashes()
    sets = [shingles(a.article.body, words) for a in articles]
    urls = [_canonical_url(a.article.metadata.get("canonical_url") or a.article.url) for a in articles]
    own = {a.doc_id for a in articles}
    _, ids = view.docs.search(vectors, min(STORY_NEIGHBORS, len(view.docs)))
    neighbor_ids = sorted({int(d) for d in ids.ravel().tolist() if d >= 0} - own)
    live = set(view.doc_ids[view.rows_of(np.asarray(neighbor_ids, dtype=np.int64))].tolist())
    neighbors = store.get_many([d for d in neighbor_ids if d in live])
    neighbor_sets = {d: shingles(s.article.body, words) for d, s in neighbors.items()}
    external: dict[int, int] = {}
    for i, row_ids in enumerate(ids.tolist()):
        for d in row_ids:
            if d not in neighbors:
                continue
            theirs = neighbor_sets[d]
            other = neighbors[d].article
            overlap = len(np.intersect1d(sets[i], theirs, assume_unique=True))
            same_url = bool(urls[i]) and urls[i] == _canonical_url(other.metadata.get("canonical_url") or other.url)
            if same_url or is_copy(overlap, len(sets[i]), len(theirs)):
                row = view.row_of(d)
                assert row is not None  # live, checked above
                external[i] = int(view.doc_ids[view.story_ids[row]])
                break
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = copy_pairs(sets).tolist()
    first_url: dict[str, int] = {}
    for i, url in enumerate(urls):
        if url:
            pairs.append([first_url.setdefault(url, i), i])
    for i, j in pairs:
        a, b = find(i), find(j)
        parent[max(a, b)] = min(a, b)
    order = sorted(range(n), key=lambda i: (articles[i].article.published or "~", articles[i].doc_id))
    story: dict[int, int] = {}
    for i in order:  # an indexed copy's story first, else the earliest published new copy
        root = find(i)
        if i in external:
            story[root] = external[i]
    for i in order:
        story.setdefault(find(i), articles[i].doc_id)
    return np.array([story[find(i)] for i in range(n)], dtype=np.int64)


def _oov_share(base: IndexVersion, titles: Sequence[str], bodies: Sequence[str]) -> float:
    """The share of the articles' words missing from the version's vocabulary."""
    total = missing = 0
    vocabulary = base.tfidf.vocabulary
    for title, body in zip(titles, bodies):
        tokens = tokenize(title + " " + body[:20_000])
        total += len(tokens)
        missing += sum(1 for t in tokens if t not in vocabulary)
    return missing / total if total else 0.0


def _previous_training(settings: Settings, key: str, which: str) -> VectorIndex | None:
    """The published version's ``docs`` or ``chunks`` index, to reuse its inverted-file centroids."""
    previous = read_current_manifest(settings.index_root)
    if not previous or previous.embedding_key != key or previous.format_version != FORMAT_VERSION:
        return None
    factory = previous.faiss_factory if which == "docs" else previous.chunk_faiss_factory
    path = getattr(Layout.of(settings.index_root, previous.version), which)
    if "IVF" not in factory or not path.exists():
        return None
    return VectorIndex.load(path, factory, mmap=False)


def _build_and_publish(
    settings: Settings, store: Store, key: str, engine: EmbedEngine, *, retrain: bool = False,
    pending: Sequence[int] = (),
) -> str:
    # One snapshot for the vectors, the articles and the watermark: a write
    # that lands meanwhile is in none of them, so the version's corpus_hash
    # (derived from the content hashes the vectors were made from) tells the
    # next run to pick it up, and an article deleted meanwhile is still read.
    doc_ids: list[int] = []
    content_hashes: dict[int, str] = {}
    chunk_blocks: list[np.ndarray] = []
    with store.snapshot():
        for doc_id, content_hash, vectors in store.iter_current_embeddings(key):
            doc_ids.append(doc_id)
            content_hashes[doc_id] = content_hash
            chunk_blocks.append(vectors)
        if not doc_ids:
            raise EmbeddingError(
                "no article has vectors (none could be embedded, or the store is empty); nothing was published"
            )
        stored = store.get_many(doc_ids)
        mark = store.watermark()
    ids = np.asarray(doc_ids, dtype=np.int64)
    lengths = np.array([len(b) for b in chunk_blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunk_vectors = np.ascontiguousarray(np.vstack(chunk_blocks), dtype=np.float32)
    del chunk_blocks
    doc_vectors = article_vectors(chunk_vectors, offsets)
    dimension = int(doc_vectors.shape[1])

    # Over what is in this version: articles that failed to embed make the next
    # run publish again once they succeed.
    corpus_hash = _corpus_hash(content_hashes)
    titles = [stored[d].article.title for d in doc_ids]
    urls = [stored[d].article.metadata.get("canonical_url") or stored[d].article.url for d in doc_ids]
    published = [stored[d].article.published for d in doc_ids]
    bodies = [stored[d].article.body for d in doc_ids]
    columns = FilterColumns.build([stored[d].article for d in doc_ids])
    tfidf, bm25, entities = build_keyword_models(titles, bodies)
    words = WordHashes()
    story_ids = story_labels(
        [shingles(b, words) for b in bodies], urls=[_canonical_url(u) for u in urls], published=published
    )
    del stored, bodies, words
    # Deletes and updates need no k-means run: an inverted file keeps the
    # published version's centroids while the archive has not outgrown them.
    reuse = not retrain
    docs = VectorIndex.build(
        doc_vectors, ids, settings.faiss_factory,
        trained=_previous_training(settings, key, "docs") if reuse else None,
    )
    chunks = VectorIndex.build(  # ids: row numbers in chunk_vectors
        chunk_vectors, None, settings.faiss_factory, candidates_only=True,
        trained=_previous_training(settings, key, "chunks") if reuse else None,
    )

    name, staging = new_staging_dir(settings.index_root)
    manifest = Manifest(
        version=name,
        recommender_version=__version__,
        model_id=model_id_for(settings.model),
        embedding_key=key,
        dimension=dimension,
        faiss_type=docs.type_name,
        faiss_factory=docs.factory,
        chunk_faiss_factory=chunks.factory,
        reused_training={"docs": docs.reused_training, "chunks": chunks.reused_training},
        build_settings=build_settings(settings),
        count=len(ids),
        chunks=len(chunk_vectors),
        stories=len(np.unique(story_ids)),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        corpus_hash=corpus_hash,
        snapshot=Snapshot(**asdict(mark), left_out=mark.articles - len(ids)),
        chunk_words=settings.chunk_words,
        max_chunks=settings.max_chunks,
        pending=sorted(set(pending) - set(doc_ids)),
    )
    version = IndexVersion(
        name=name, path=staging, manifest=manifest, docs=docs, chunks=chunks, doc_ids=ids, doc_vectors=doc_vectors,
        story_ids=story_ids, published_days=published_days(published), chunk_vectors=chunk_vectors,
        chunk_offsets=offsets, tfidf=tfidf, bm25=bm25, entities=entities, ranker=ranker_model(settings),
        columns=[columns], seq=mark.seq,
    )
    version.save(staging)

    def catch_up() -> list[str]:
        """The writes made during the build, as a segment of the new version."""
        changes = store.changes_since(mark.seq or 0)
        if not changes:
            return []
        stale = store.stale_among(key, changes.changed)
        if stale:
            _embed(settings, store, engine, stale, key, ReindexReport(), on_progress=None)
        segment = build_segment(settings, store, key, version, version, changes.changed, changes.deleted, changes.seq)
        save_segment(settings.index_root, segment)
        return [segment.name]

    with data_lock(settings.data_dir, WRITE_LOCK):
        publish(settings.index_root, name, staging, keep=settings.keep_versions, catch_up=catch_up)
    if mark.seq is not None:
        store.prune_tombstones(mark.seq)
    log.info("published index %s: %d articles, %d passages", name, len(ids), len(chunk_vectors))
    return name


def article_vectors(chunk_vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One vector per article: the sum of its lead passage (title + opening,
    which names the event) and the mean of all its passages (the topic)."""
    sums = np.add.reduceat(chunk_vectors, offsets[:-1], axis=0)
    counts = np.diff(offsets).reshape(-1, 1).astype(np.float32)
    vectors = chunk_vectors[offsets[:-1]] + sums / counts
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def published_days(published: list[str | None]) -> np.ndarray:
    """Days since 1970-01-01 of each publication date (NaN when unknown)."""
    out = np.full(len(published), np.nan, dtype=np.float64)
    for row, value in enumerate(published):
        if value:
            try:
                day = dt.date.fromisoformat(value[:10])
            except ValueError:
                continue
            out[row] = (day - EPOCH).days
    return out


EPOCH = dt.date(1970, 1, 1)


def _canonical_url(url: str | None) -> str:
    """host + path + query without tracking parameters; "" for a site's home
    page (some feeds give it for every article) and for no URL."""
    if not url:
        return ""
    parts = urlsplit(url.strip())
    host = parts.netloc.lower().removeprefix("www.")
    path = parts.path.rstrip("/")
    query = "&".join(sorted(p for p in parts.query.split("&") if p and not p.lower().startswith("utm_")))
    if not host or (not path and not query):
        return ""
    return host + path + ("?" + query if query else "")


def _corpus_hash(hashes: dict[int, str]) -> str:
    digest = hashlib.sha256()
    for doc_id in sorted(hashes):
        digest.update(f"{doc_id}:{hashes[doc_id]}\n".encode())
    return digest.hexdigest()


def _count_deleted(settings: Settings, previous: Manifest, hashes: dict[int, str]) -> int:
    path = Layout.of(settings.index_root, previous.version).doc_ids
    try:
        old = np.load(path)
    except FileNotFoundError:
        return 0
    return int(np.count_nonzero(~np.isin(old, np.fromiter(hashes.keys(), dtype=np.int64, count=len(hashes)))))
