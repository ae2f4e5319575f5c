"""Building what readers load: a new version from every article with
current vectors (the FAISS indexes, the keyword models, the stories, the
filter columns), and a segment from the writes since a version.
``recommender.pipeline`` decides which, and when."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from recommender import __version__, directory, integrity
from recommender.clock import epoch_days, utc_stamp
from recommender.config import Settings
from recommender.copies import WordHashes, canonical_url, segment_stories, shingles, story_labels
from recommender.embed_jobs import EmbeddingError, EmbedEngine, EmbedReport, embed_stale
from recommender.embedders import model_id_for
from recommender.errors import ConfigError, IndexDamaged
from recommender.filters import FilterColumns
from recommender.index import VectorIndex
from recommender.lexical import build_keyword_models, keyword_rows
from recommender.passages import article_vectors
from recommender.rank.signals import SIGNALS
from recommender.ranker import DEFAULT_MODEL as DEFAULT_RANKER
from recommender.ranker import Ranker
from recommender.segments import Segment, SegmentManifest, save_segment
from recommender.store import Store
from recommender.text import tokenize
from recommender.version import FORMAT_VERSION, IndexVersion, Layout, Manifest, Snapshot, read_current_manifest
from recommender.view import View

log = logging.getLogger(__name__)

STORY_RULES = 3
"""Bumped when the story rules change, so the next reindex re-derives stories."""


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
        return Ranker.load(settings.ranker_file or DEFAULT_RANKER, SIGNALS)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the ranker model {settings.ranker_file}: {exc}") from None


def build_segment(
    store: Store, key: str, base: IndexVersion, view: View, changed: Sequence[int], deleted: Sequence[int], seq: int,
) -> Segment:
    """The segment for these writes over ``view`` (``base`` is its version):
    rows for the changed articles that have current vectors, weighed with the
    version's keyword statistics; the rest (not embedded yet) is pending.
    Deleted articles, and changed ones deleted meanwhile, are deletions."""
    with store.snapshot():
        embedded = finite_only(store.current_embeddings(key, changed))
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
            name=directory.new_name(), base=base.name, seq=seq, rows=len(doc_ids),
            deleted=len(dead), chunks=len(chunk_vectors),
            built_at=utc_stamp(), pending=tuple(pending),
            oov_share=oov_share(base, titles, bodies),
        ),
        doc_ids=np.asarray(doc_ids, dtype=np.int64),
        deleted=np.asarray(dead, dtype=np.int64),
        doc_vectors=doc_vectors, chunk_vectors=chunk_vectors, chunk_offsets=offsets,
        published_days=epoch_days([a.published for a in articles]),
        story_doc_ids=segment_stories(view, store, [stored[d] for d in doc_ids], doc_vectors),
        tfidf=tfidf, entities=entities, bm25=bm25,
        columns=FilterColumns.build(articles),
    )


def finite_only(embedded: dict[int, tuple[str, np.ndarray]]) -> dict[int, tuple[str, np.ndarray]]:
    """The stored vectors that can be published: NaN or infinite ones (stored
    by an older release from a damaged export) never are; their articles wait."""
    usable = {d: row for d, row in embedded.items() if np.isfinite(row[1]).all()}
    if len(usable) < len(embedded):
        log.warning("%d articles have NaN or infinite vectors in the store and are left out of the segment",
                    len(embedded) - len(usable))
    return usable


def oov_share(base: IndexVersion, titles: Sequence[str], bodies: Sequence[str]) -> float:
    """The share of the articles' words missing from the version's vocabulary."""
    total = missing = 0
    vocabulary = base.tfidf.vocabulary
    for title, body in zip(titles, bodies):
        tokens = tokenize(title + " " + body[:20_000])
        total += len(tokens)
        missing += sum(1 for t in tokens if t not in vocabulary)
    return missing / total if total else 0.0


def previous_training(settings: Settings, key: str, which: str) -> VectorIndex | None:
    """The published version's ``docs`` or ``chunks`` index, to reuse its inverted-file centroids."""
    previous = read_current_manifest(settings.index_root)
    if not previous or previous.embedding_key != key or previous.format_version != FORMAT_VERSION:
        return None
    factory = previous.faiss_factory if which == "docs" else previous.chunk_faiss_factory
    path = getattr(Layout.of(settings.index_root, previous.version), which)
    if "IVF" not in factory or not path.exists():
        return None
    try:  # a damaged file's centroids are not reused: the build trains its own
        if path.name in previous.checksums:
            integrity.check_checksums(path.parent, previous.checksums, f"version {previous.version}", [path.name])
        return VectorIndex.load(path, factory, mmap=False)
    except (IndexDamaged, RuntimeError, OSError) as exc:
        log.warning("not reusing the inverted file of version %s: %s", previous.version, exc)
        return None


def build_version(
    settings: Settings, store: Store, key: str, engine: EmbedEngine, *, retrain: bool = False,
    pending: Sequence[int] = (),
) -> str:
    """Build a version from every article with current vectors, write it into
    a staging folder and publish it (under the write lock), with the writes
    made meanwhile as its first segment; returns its name."""
    # One snapshot for the vectors, the articles and the watermark: a write
    # that lands meanwhile is in none of them, so the version's corpus_hash
    # (derived from the content hashes the vectors were made from) tells the
    # next run to pick it up, and an article deleted meanwhile is still read.
    doc_ids: list[int] = []
    content_hashes: dict[int, str] = {}
    chunk_blocks: list[np.ndarray] = []
    unusable = 0
    with store.snapshot():
        for doc_id, content_hash, vectors in store.iter_current_embeddings(key):
            if not np.isfinite(vectors).all():  # stored by an older release from a damaged export
                unusable += 1
                continue
            doc_ids.append(doc_id)
            content_hashes[doc_id] = content_hash
            chunk_blocks.append(vectors)
        if not doc_ids:
            raise EmbeddingError(
                "no article has vectors (none could be embedded, or the store is empty); nothing was published"
            )
        stored = store.get_many(doc_ids)
        mark = store.watermark()
    if unusable:
        log.warning("%d articles have NaN or infinite vectors in the store and are left out of the index", unusable)
    ids = np.asarray(doc_ids, dtype=np.int64)
    lengths = np.array([len(b) for b in chunk_blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunk_vectors = np.ascontiguousarray(np.vstack(chunk_blocks), dtype=np.float32)
    del chunk_blocks
    doc_vectors = article_vectors(chunk_vectors, offsets)
    dimension = int(doc_vectors.shape[1])

    # Over what is in this version: articles that failed to embed make the next
    # run publish again once they succeed.
    corpus_hash = corpus_hash_of(content_hashes)
    titles = [stored[d].article.title for d in doc_ids]
    urls = [stored[d].article.metadata.get("canonical_url") or stored[d].article.url for d in doc_ids]
    published = [stored[d].article.published for d in doc_ids]
    bodies = [stored[d].article.body for d in doc_ids]
    columns = FilterColumns.build([stored[d].article for d in doc_ids])
    tfidf, bm25, entities = build_keyword_models(titles, bodies)
    words = WordHashes()
    story_ids = story_labels(
        [shingles(b, words) for b in bodies], urls=[canonical_url(u) for u in urls], published=published
    )
    del stored, bodies, words
    # Deletes and updates need no k-means run: an inverted file keeps the
    # published version's centroids while the archive has not outgrown them.
    reuse = not retrain
    docs = VectorIndex.build(
        doc_vectors, ids, settings.faiss_factory,
        trained=previous_training(settings, key, "docs") if reuse else None,
    )
    chunks = VectorIndex.build(  # ids: row numbers in chunk_vectors
        chunk_vectors, None, settings.faiss_factory, candidates_only=True,
        trained=previous_training(settings, key, "chunks") if reuse else None,
    )

    # A build that fails (a full disk, an error) removes its staging folder at once.
    with directory.staging_version(settings.index_root) as (name, staging):
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
            built_at=utc_stamp(),
            corpus_hash=corpus_hash,
            snapshot=Snapshot(**asdict(mark), left_out=mark.articles - len(ids)),
            chunk_words=settings.chunk_words,
            max_chunks=settings.max_chunks,
            pending=sorted(set(pending) - set(doc_ids)),
        )
        version = IndexVersion(
            name=name, path=staging, manifest=manifest, docs=docs, chunks=chunks, doc_ids=ids, doc_vectors=doc_vectors,
            story_ids=story_ids, published_days=epoch_days(published), chunk_vectors=chunk_vectors,
            chunk_offsets=offsets, tfidf=tfidf, bm25=bm25, entities=entities, ranker=ranker_model(settings),
            columns=columns, seq=mark.seq,
        )
        version.save(staging)

        def catch_up() -> list[str]:
            """The writes made during the build, as a segment of the new version."""
            changes = store.changes_since(mark.seq or 0)
            if not changes:
                return []
            stale = store.stale_among(key, changes.changed)
            if stale:
                embed_stale(settings, store, engine, stale, key, EmbedReport())
            segment = build_segment(store, key, version, View.of(version), changes.changed, changes.deleted, changes.seq)
            save_segment(settings.index_root, segment)
            return [segment.name]

        with directory.lock(settings.data_dir / directory.WRITE_LOCK):
            directory.publish_version(settings.index_root, name, staging, keep=settings.keep_versions, catch_up=catch_up)
    if mark.seq is not None:
        store.prune_tombstones(mark.seq)
    log.info("published index %s: %d articles, %d passages", name, len(ids), len(chunk_vectors))
    return name



def corpus_hash_of(hashes: dict[int, str]) -> str:
    digest = hashlib.sha256()
    for doc_id in sorted(hashes):
        digest.update(f"{doc_id}:{hashes[doc_id]}\n".encode())
    return digest.hexdigest()


def count_deleted(settings: Settings, previous: Manifest, hashes: dict[int, str]) -> int:
    path = Layout.of(settings.index_root, previous.version).doc_ids
    try:
        old = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # gone, or damaged: the rebuild does not need the count
        return 0
    if old.dtype.kind != "i" or old.ndim != 1:
        return 0
    return int(np.count_nonzero(~np.isin(old, np.fromiter(hashes.keys(), dtype=np.int64, count=len(hashes)))))
