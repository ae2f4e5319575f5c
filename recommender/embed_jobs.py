"""The embedding step of a reindex: the stale articles' passages, in jobs
(``EmbedJob``) that an engine runs (``LocalEngine`` here, or
``recommender.ray_engine.RayEngine`` on a cluster), each job's vectors
checkpointed in the store as its results arrive. Passages whose text already
has a vector (an unchanged paragraph of an updated article, a syndicated
copy) are not embedded again."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recommender.config import Settings
from recommender.embedders import Embedder
from recommender.errors import RecommenderError
from recommender.passages import chunk_article
from recommender.store import CHUNK_HASH_BYTES, Store

log = logging.getLogger(__name__)

EMBED_BATCH_DOCS = 256
"""Articles per embedding job: one call, sorted by length (less padding than
smaller jobs), and one checkpoint transaction."""


class EmbeddingError(RecommenderError):
    """The embedding step failed for every article it tried."""


class EmbedCounts(Protocol):
    """Where an embedding step counts what it did (a ``ReindexReport``, or an ``EmbedReport``)."""

    embedded: int
    failed: list[int]
    passages_embedded: int
    passages_reused: int


@dataclass
class EmbedReport:
    """What an embedding step did."""

    embedded: int = 0
    failed: list[int] = field(default_factory=list)
    """doc_ids that could not be embedded."""
    passages_embedded: int = 0
    passages_reused: int = 0
    """Passages whose text already had a vector: not embedded again."""


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


def embed_stale(
    settings: Settings, store: Store, engine: EmbedEngine, stale: list[int], key: str,
    report: EmbedCounts, *, on_progress: Callable[[int, int], None] | None = None, batch_docs: int = EMBED_BATCH_DOCS,
) -> EmbedCounts:
    """Embed the stale articles' passages that have no vector yet and checkpoint
    each job's articles in one transaction, as its results arrive; the counts
    go into ``report``."""
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
    except RecommenderError:  # EmbeddingError, an export refused at load (ExportRefused): said as they are
        raise
    except Exception as exc:  # the model, memory, a worker: what is saved so far is kept
        raise EmbeddingError(f"embedding stopped: {type(exc).__name__}: {exc}") from exc
    return report


class BadVectors(ValueError):
    """An article's vectors came back NaN, infinite or of the wrong shape."""


def checked_results(job: EmbedJob, results: EmbedResult) -> EmbedResult:
    """A job's results as they arrive from any engine, each article's vectors
    checked: one passage's row each, finite. An article whose vectors are not
    becomes that article's failure (nothing of it is stored); where every
    article that had passages to embed failed so, the cause is the model (a
    damaged export), not an article: EmbeddingError, and the run stops."""
    checked: EmbedResult = []
    bad = tried = 0
    for texts, result in zip(job.texts, results):
        if isinstance(result, np.ndarray) and texts:
            tried += 1
            if result.ndim != 2 or len(result) != len(texts):
                result = BadVectors(f"{len(texts)} passages gave vectors of shape {result.shape}")
            elif not np.isfinite(result).all():
                result = BadVectors(f"the embedder returned NaN or infinite vectors for {len(texts)} passages")
            bad += isinstance(result, BadVectors)
        checked.append(result)
    if len(checked) != len(job.texts):
        raise EmbeddingError(f"embedding job {job.number} returned {len(checked)} results for {len(job.texts)} articles")
    if bad and bad == tried and tried > 1:
        raise EmbeddingError(f"the embedder returned NaN, infinite or misshapen vectors for all {tried} articles of "
                             f"job {job.number} (a damaged model or export?); nothing of the job was stored")
    return checked


def _save_job(store: Store, key: str, job: EmbedJob, results: EmbedResult, state: _Pending, report: EmbedCounts) -> None:
    """Checkpoint one job's articles in one transaction: a killed job keeps
    what it embedded. Vectors that are not finite are never stored (``checked_results``)."""
    results = checked_results(job, results)
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
