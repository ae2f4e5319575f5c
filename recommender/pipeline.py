"""Reindex: embed what changed, build a new index version, publish it atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from recommender import __version__
from recommender.config import Settings
from recommender.copies import WordHashes, shingles, story_labels
from recommender.embed import BACKEND, Embedder, model_id_for, resolve_precision
from recommender.errors import ConfigError, RecommenderError
from recommender.index import VectorIndex
from recommender.lexical import build_keyword_models
from recommender.rank.model import DEFAULT_MODEL as DEFAULT_RANKER
from recommender.rank.model import Ranker
from recommender.store import CHUNK_HASH_BYTES, Store
from recommender.text import chunk_article
from recommender.version import (
    FORMAT_VERSION,
    IndexVersion,
    Layout,
    Manifest,
    Snapshot,
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
    precision = resolve_precision(settings.precision, settings.device)
    return f"{_legacy_embedding_key(settings)}|precision={precision}|backend={BACKEND}"


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
    dry_run: bool = False,
    engine: EmbedEngine | None = None,
    batch_docs: int = EMBED_BATCH_DOCS,
) -> ReindexReport:
    """Embed what changed, then build and publish a new version if anything did.
    With ``dry_run``, only report what would be done. ``engine`` runs the
    embedding step (default: in this process, with ``load_embedder``), in jobs
    of ``batch_docs`` articles. ``on_progress(done, total)`` is called as
    articles are embedded."""
    started = time.perf_counter()
    key = embedding_key(settings)
    engine = engine or LocalEngine(load_embedder)
    report = ReindexReport(articles=store.count(), dry_run=dry_run, engine=getattr(engine, "name", "local"))
    legacy = _legacy_embedding_key(settings)
    cached = key
    if not dry_run:
        store.rename_embeddings(legacy, key)
    elif not store.has_embeddings(key):  # the run would move the legacy vectors first
        cached = legacy
    stale = store.stale_embeddings(cached)
    report.to_embed = len(stale)
    report.skipped = report.articles - len(stale)

    hashes = store.content_hashes()
    corpus_hash = _corpus_hash(hashes)
    previous = read_current_manifest(settings.index_root)
    if previous is not None:
        report.deleted = _count_deleted(settings, previous, hashes)
        report.version = previous.version
    report.reason = _rebuild_reason(previous, corpus_hash, key, settings, force)

    if not dry_run:
        if stale:
            _embed(settings, store, engine, stale, key, report, on_progress=on_progress, batch_docs=batch_docs)
        if report.reason:
            report.version = _build_and_publish(settings, store, key, retrain=force)
            report.published = True
            store.prune_embeddings(key)
    report.seconds = round(time.perf_counter() - started, 3)
    report.docs_per_second = round(report.embedded / report.seconds, 2) if report.seconds else 0.0
    return report


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


def _build_and_publish(settings: Settings, store: Store, key: str, *, retrain: bool = False) -> str:
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
    )
    IndexVersion(
        name=name, path=staging, manifest=manifest, docs=docs, chunks=chunks, doc_ids=ids, doc_vectors=doc_vectors,
        story_ids=story_ids, published_days=published_days(published), chunk_vectors=chunk_vectors,
        chunk_offsets=offsets, tfidf=tfidf, bm25=bm25, entities=entities, ranker=ranker_model(settings),
    ).save(staging)
    publish(settings.index_root, name, staging, keep=settings.keep_versions)
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
