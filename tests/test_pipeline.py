from __future__ import annotations

import json

import numpy as np
import pytest

from recommender import directory
from recommender.articles import parse_article
from recommender.embed_jobs import EmbeddingError
from recommender.embedders import resolve
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.errors import IndexMismatch, IndexNotFound
from recommender.passages import chunk_article
from recommender.pipeline import reindex
from recommender.store import SqliteStore
from recommender.version import IndexVersion
from recommender.view import load_view
from tests.helpers import PoisonEmbedder, lazy


@pytest.fixture
def store(settings, corpus):
    with SqliteStore.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in corpus])
        yield store


class CountingEmbedder:
    """The real tiny model, counting the texts it is asked to embed."""

    def __init__(self, inner, fail_after_calls: int | None = None):
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.calls = 0
        self.texts = 0
        self.fail_after_calls = fail_after_calls

    def embed(self, texts, *, progress=False):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("killed mid-job")
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture
def embedder(settings):
    return CountingEmbedder(SentenceTransformerEmbedder.load(settings.model))


def test_first_run_embeds_all_and_publishes_manifest(settings, store, embedder):
    report = reindex(settings, store, lazy(settings, embedder))
    assert report.embedded == store.count() == 30 and report.published
    manifest = json.loads((settings.index_root / "versions" / report.version / "manifest.json").read_text())
    assert manifest["model_id"] == str(settings.model)
    assert manifest["dimension"] == 24 and manifest["count"] == 30
    assert manifest["faiss_type"] == "IndexFlat" and manifest["faiss_factory"] == "Flat"
    assert manifest["built_at"] and manifest["recommender_version"]
    version = IndexVersion.load(settings.index_root, model_id=str(settings.model))
    assert len(version) == 30 and version.doc_vectors.shape == (30, 24)
    np.testing.assert_allclose(np.linalg.norm(version.doc_vectors, axis=1), 1.0, atol=1e-5)


def test_rerun_embeds_only_changes(settings, store, embedder, corpus):
    first = reindex(settings, store, lazy(settings, embedder))
    again = reindex(settings, store, lazy(settings, embedder))
    assert (again.embedded, again.skipped, again.published) == (0, 30, False)
    assert again.version == first.version
    changed = dict(corpus[0], body=corpus[0]["body"] + " updated")
    store.upsert([parse_article(changed), parse_article(dict(corpus[1], section="metadata only"))])
    store.delete([corpus[2]["id"]])
    before = embedder.texts
    third = reindex(settings, store, lazy(settings, embedder))
    assert (third.embedded, third.deleted, third.published) == (1, 1, True)
    assert embedder.texts - before == 1  # one short article, one passage
    assert load_view(settings.index_root).live_count == 29


def test_killed_job_resumes_where_it_stopped(settings, store, embedder):
    failing = CountingEmbedder(embedder.inner, fail_after_calls=2)
    with pytest.raises(EmbeddingError, match="killed"):
        reindex(settings, store, lazy(settings, failing), batch_docs=8)
    assert directory.read_current(settings.index_root)[0] is None  # nothing half-published
    report = reindex(settings, store, lazy(settings, embedder), batch_docs=8)
    assert report.skipped == 16 and report.embedded == 14 and report.published


def test_publish_is_atomic_when_build_fails(settings, store, embedder, monkeypatch, corpus):
    good = reindex(settings, store, lazy(settings, embedder)).version
    store.upsert([parse_article(dict(corpus[0], body="new text for the first article"))])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(directory, "publish_version", crash)
    with pytest.raises(OSError):
        reindex(settings, store, lazy(settings, embedder), full=True)
    assert directory.read_current(settings.index_root)[0] == good
    assert load_view(settings.index_root).live_count == 30

    monkeypatch.setattr(directory, "write_current", crash)  # a segment written, CURRENT not replaced
    with pytest.raises(OSError):
        reindex(settings, store, lazy(settings, embedder))
    assert directory.read_current(settings.index_root) == (good, ())


def test_old_versions_are_pruned_but_live_one_kept(settings, store, embedder):
    names = [reindex(settings, store, lazy(settings, embedder), force=True).version for _ in range(4)]
    kept = sorted(p.name for p in (settings.index_root / "versions").iterdir())
    assert kept == names[-settings.keep_versions:]
    assert directory.read_current(settings.index_root)[0] == names[-1]


def test_loading_refuses_another_model(settings, store, embedder):
    reindex(settings, store, lazy(settings, embedder))
    with pytest.raises(IndexMismatch, match="built with model"):
        IndexVersion.load(settings.index_root, model_id="sentence-transformers/all-MiniLM-L6-v2")


def test_no_index_yet(settings):
    with pytest.raises(IndexNotFound, match="recommender reindex"):
        IndexVersion.load(settings.index_root)


def test_abandoned_staging_folders_are_removed(settings, store, embedder):
    import os
    import time

    old = settings.index_root / "staging" / "20200101T000000.000000000-1"
    old.mkdir(parents=True)
    (old / "docs.faiss").write_bytes(b"half written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    reindex(settings, store, lazy(settings, embedder))
    assert not old.exists()


def test_unchanged_passages_and_copies_are_not_embedded_again(settings, store, embedder, corpus):
    settings = settings.replace(chunk_words=20, max_chunks=16)  # several passages per article
    per_article = [len(chunk_article(r["title"], r["body"], 20, settings.max_chunks)) for r in corpus]
    first = reindex(settings, store, lazy(settings, embedder))
    assert first.passages_embedded == embedder.texts == sum(per_article) and min(per_article) >= 3
    texts_before = embedder.texts
    updated = dict(corpus[0], body=corpus[0]["body"] + "\n\nA closing paragraph was added by the desk.")
    copy = dict(corpus[1], id="syndicated-copy")
    store.upsert([parse_article(updated), parse_article(copy)])

    report = reindex(settings, store, lazy(settings, embedder))
    assert report.embedded == 2 and report.published
    assert embedder.texts - texts_before == report.passages_embedded == 1  # only the new paragraph
    assert report.passages_reused == per_article[0] + per_article[1]
    assert load_view(settings.index_root).live_count == 31
    # The copy's vectors are the original's; the updated article has one passage more.
    vectors = dict(store.iter_embeddings(resolve(settings).key))
    original, copied = store.get(corpus[1]["id"]).doc_id, store.get("syndicated-copy").doc_id
    np.testing.assert_array_equal(vectors[copied], vectors[original])
    assert vectors[store.get(corpus[0]["id"]).doc_id].shape[0] == per_article[0] + 1


def test_one_bad_article_is_left_out_reported_and_retried(settings, store, embedder):
    store.upsert([parse_article({"id": "bad", "title": "POISON", "body": "A body the model chokes on."})])
    report = reindex(settings, store, lazy(settings, lambda: PoisonEmbedder(embedder.inner)), batch_docs=8)
    assert report.failed == [store.get("bad").doc_id]
    assert report.embedded == 30 and report.published
    assert load_view(settings.index_root).live_count == 30

    retry = reindex(settings, store, lazy(settings, embedder), batch_docs=8)
    assert retry.to_embed == 1 and retry.embedded == 1 and retry.failed == [] and retry.published
    assert load_view(settings.index_root).live_count == 31


def test_a_broken_model_stops_the_run(settings, store, embedder):
    class Broken(CountingEmbedder):
        def embed(self, texts, *, progress=False):
            raise RuntimeError("model file is corrupt")

    with pytest.raises(EmbeddingError, match="corrupt"):
        reindex(settings, store, lazy(settings, lambda: Broken(embedder.inner)))
    assert directory.read_current(settings.index_root)[0] is None


def test_updates_reuse_the_inverted_file_training(settings, store, embedder, corpus):
    settings = settings.replace(faiss_factory="IVF4,Flat")
    first = reindex(settings, store, lazy(settings, embedder))
    manifest = IndexVersion.load(settings.index_root).manifest
    assert manifest.reused_training == {"docs": False, "chunks": False}

    store.upsert([parse_article(dict(corpus[0], id="new-article", body=corpus[0]["body"] + " More."))])
    store.delete([corpus[5]["id"]])
    second = reindex(settings, store, lazy(settings, embedder))
    version = IndexVersion.load(settings.index_root)
    assert second.published and second.version != first.version
    assert version.manifest.reused_training == {"docs": True, "chunks": True}
    ids = set(version.doc_ids.tolist())
    assert store.get("new-article").doc_id in ids and len(ids) == 30
    # Every article finds itself first through the reused inverted file (nprobe = all 4 lists).
    _, found = version.docs.search(np.asarray(version.doc_vectors), 1)
    assert (found[:, 0] == version.doc_ids).all()

    forced = reindex(settings, store, lazy(settings, embedder), force=True)
    assert forced.published
    assert IndexVersion.load(settings.index_root).manifest.reused_training["docs"] is False


def test_rules_survive_reindex_and_a_model_change(settings, store, embedder, tmp_path):
    from recommender.rules import parse_rule

    reindex(settings, store, lazy(settings, embedder))
    store.add_rule(parse_rule({"kind": "pin", "article": "talks-1", "target": "bridge-2", "position": 2}))
    store.add_rule(parse_rule({"kind": "block", "target": "bridge-3"}))
    reindex(settings, store, lazy(settings, embedder), force=True)
    other_model = settings.replace(chunk_words=40)  # new embedding key: a full side-by-side rebuild
    reindex(other_model, store, lazy(other_model, embedder))
    assert [(r.kind, r.target) for r in store.rules()] == [("pin", "bridge-2"), ("block", "bridge-3")]


def test_a_failing_article_never_costs_another_that_shares_its_text(settings, store, embedder):
    shared = "A paragraph both articles carry, word for word, from the wire."
    store.upsert([
        parse_article({"id": "poisoned", "title": "POISON", "body": shared}),
        parse_article({"id": "healthy", "title": "Fine", "body": shared}),
    ])
    report = reindex(settings, store, lazy(settings, lambda: PoisonEmbedder(embedder.inner)))
    assert report.failed == [store.get("poisoned").doc_id] and report.published
    assert store.get("healthy").doc_id in IndexVersion.load(settings.index_root).doc_ids


def test_only_failing_articles_left_still_publishes_deletes(settings, store, embedder):
    reindex(settings, store, lazy(settings, embedder))
    store.delete(["talks-0"])
    store.upsert([parse_article({"id": "bad", "title": "POISON", "body": "The model chokes on this one."})])
    report = reindex(settings, store, lazy(settings, lambda: PoisonEmbedder(embedder.inner)))
    assert report.published and len(report.failed) == 1
    assert load_view(settings.index_root).live_count == 29


def test_embedding_key_names_what_makes_the_vectors_and_old_vectors_move_to_it(settings, store, embedder):
    """The key holds the precision as resolved here (never "auto") and the
    backend; vectors cached under the key of earlier releases (model and
    passages only) are moved to the new key, not embedded again."""
    from recommender.embedders.torch_backend import resolve_precision

    key = resolve(settings).key
    assert f"precision={resolve_precision(settings.precision)}" in key and "backend=torch" in key
    assert "auto" not in key
    assert resolve(settings.replace(precision="bfloat16")).key != resolve(settings.replace(precision="float32")).key
    assert resolve(settings.replace(backend="onnx")).key.endswith("|precision=float32|backend=onnx")

    reindex(settings, store, lazy(settings, embedder))
    legacy = key.split("|precision=")[0]
    store.connection.execute("UPDATE embeddings SET model_key = ?", (legacy,))  # as an older release left them
    assert store.stale_embeddings(key) and not store.stale_embeddings(legacy)
    embedder.texts = 0
    report = reindex(settings, store, lazy(settings, embedder), force=True)
    assert report.embedded == 0 and embedder.texts == 0 and report.published
    assert not store.stale_embeddings(key)
    assert store.connection.execute("SELECT count(*) FROM embeddings WHERE model_key = ?", (legacy,)).fetchone()[0] == 0


def test_a_manifest_with_fields_of_another_release_still_loads_or_is_refused_cleanly(settings, store, embedder):
    """Keys this release does not know (top level or in the snapshot) are
    ignored; a manifest missing what it needs reads as another format."""
    import json

    from recommender import integrity
    from recommender.version import Layout, read_current_manifest

    report = reindex(settings, store, lazy(settings, embedder))
    assert report.version is not None  # published
    path = Layout.of(settings.index_root, report.version).manifest
    data = json.loads(path.read_text())
    data["added_later"] = {"x": 1}
    data["snapshot"]["deleted"] = 3
    path.write_text(json.dumps(integrity.seal(data)))  # as another release writes it: with its own checksum
    version = IndexVersion.load(settings.index_root)
    assert version.manifest.snapshot is not None and version.manifest.snapshot.articles == 30
    del data["corpus_hash"]
    path.write_text(json.dumps(integrity.seal(data)))
    assert read_current_manifest(settings.index_root) is None
    assert "cannot be read" in reindex(settings, store, lazy(settings, embedder), dry_run=True).reason
