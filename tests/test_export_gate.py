"""A model export gates itself, and no NaN vector is ever stored or published.

An exported model (ONNX, OpenVINO) is checked against torch where it is
loaded, for articles as for search queries (one check, its pass kept beside
the export); one that fails never embeds an article: with its backend named
in the settings the command fails with one line (exit 1) and a server does
not start; under ``auto`` articles embed on torch. Whatever the backend, an
article whose vectors come back NaN or infinite fails alone (exit 3), and a
model that gives them for every article stops the run: nothing of either is
stored or published. docs/reliability.md ("Faults a storage engine
survives") lists the faults and how to reproduce them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recommender import directory
from recommender.articles import parse_article
from recommender.config import Settings
from recommender.embed_jobs import EmbeddingError
from recommender.embedders import load_embedder, resolve
from recommender.embedders.load import ExportedEmbedder
from recommender.embedders.onnx_backend import CHECK_FILE, ExportRefused, export_file
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.ingest import ingest_files
from recommender.pipeline import reindex
from recommender.store import SqliteStore
from recommender.version import IndexVersion
from tests.helpers import NanEmbedder, Server, lazy

SAMPLE = Path(str(resources.files("recommender") / "data" / "sample_articles.jsonl"))
GARBLED = 64 * 1024


@pytest.fixture
def store(settings, corpus):
    with SqliteStore.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in corpus])
        yield store


@pytest.fixture
def tiny(settings):
    return SentenceTransformerEmbedder.load(settings.model)


def _published_vectors(settings) -> np.ndarray:
    return np.asarray(IndexVersion.load(settings.index_root).doc_vectors)


# -- NaN vectors, whichever backend made them (the tests' tiny model) -----------------


def test_an_article_whose_vectors_come_back_nan_fails_alone_and_nothing_of_it_is_stored(settings, store, tiny):
    settings = settings.replace(segment_merge_fraction=0.5)  # the second run writes a segment
    store.upsert([parse_article({"id": "bad", "title": "POISON", "body": "A body the damaged weight reaches."})])
    bad = store.get("bad").doc_id
    key = resolve(settings).key
    report = reindex(settings, store, lazy(settings, lambda: NanEmbedder(tiny)), batch_docs=8)
    assert report.failed == [bad] and report.embedded == 30 and report.published
    assert store.current_embeddings(key, [bad]) == {}
    assert all(np.isfinite(v).all() for _, v in store.iter_embeddings(key))
    version = IndexVersion.load(settings.index_root)
    assert bad not in version.doc_ids and np.isfinite(version.doc_vectors).all() and len(version.doc_ids) == 30

    # As a segment beside the version: the same.
    store.upsert([parse_article({"id": "bad-2", "title": "POISON again", "body": "Another one."}),
                  parse_article({"id": "fine", "title": "Harbour bridge", "body": "The crossing opens."})])
    report = reindex(settings, store, lazy(settings, lambda: NanEmbedder(tiny)))
    assert report.segment and sorted(report.failed) == sorted([bad, store.get("bad-2").doc_id])
    assert store.current_embeddings(key, [store.get("bad-2").doc_id]) == {}
    assert store.get("fine").doc_id in store.current_embeddings(key, [store.get("fine").doc_id])

    retry = reindex(settings, store, lazy(settings, tiny))  # a sound model: both are embedded and published
    assert retry.failed == [] and retry.embedded == 2 and retry.published


def test_a_model_that_gives_nan_for_every_article_stops_the_run_and_stores_nothing(settings, store, tiny):
    with pytest.raises(EmbeddingError, match="NaN, infinite or misshapen vectors for all"):
        reindex(settings, store, lazy(settings, lambda: NanEmbedder(tiny, everything=True)))
    assert not store.has_embeddings(resolve(settings).key)
    assert directory.read_current(settings.index_root)[0] is None


def test_nan_vectors_already_in_the_store_are_never_published(settings, store, tiny, caplog):
    """Vectors an older release stored from a damaged export: a build leaves their articles out."""
    reindex(settings, store, lazy(settings, tiny))
    key = resolve(settings).key
    doc_id, vectors = next(iter(store.iter_embeddings(key)))
    store.save_embeddings(key, [(doc_id, store.get_many([doc_id])[doc_id].content_hash, np.full_like(vectors, np.nan))])
    with caplog.at_level(logging.WARNING, logger="recommender.build"):
        assert reindex(settings, store, lazy(settings, tiny), force=True).published
    version = IndexVersion.load(settings.index_root)
    assert doc_id not in version.doc_ids and np.isfinite(version.doc_vectors).all()
    assert "1 articles have NaN or infinite vectors" in caplog.text


# -- a damaged export (the packaged MiniLM, exported to ONNX) --------------------------


def _settings(data_dir: Path, backend: str = "onnx") -> Settings:
    return Settings.load({"backend": backend, "precision": "float32", "data_dir": data_dir}, environ={})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A data folder whose articles embed on ONNX: its export made (from the
    torch reference) and checked at load, the check's pass kept beside it."""
    settings = _settings(tmp_path_factory.mktemp("exported"))
    reference = SentenceTransformerEmbedder.load(settings.model, precision="float32")
    embedder = load_embedder(resolve(settings), reference)
    assert isinstance(embedder, ExportedEmbedder) and (embedder.runner.min_cosine or 0) >= 0.995
    return settings, reference


def _damaged(settings: Settings, data_dir: Path, backend: str = "onnx") -> Settings:
    """A data folder with the sample articles and a copy of the good export,
    64 KiB of it overwritten with 0xff (NaN weights) where every text reaches
    them: the file still loads, every vector is NaN."""
    damaged = _settings(data_dir, backend)
    source, target = export_file(resolve(settings)), export_file(resolve(damaged))
    shutil.copytree(source.parent, target.parent)
    data = bytearray(target.read_bytes())
    at = int(len(data) * 0.7)  # a layer's weights (the middle of the file holds the rows of a few rare words)
    data[at:at + GARBLED] = b"\xff" * GARBLED
    target.write_bytes(bytes(data))
    ingest_files(damaged, [SAMPLE])
    return damaged


@pytest.mark.slow
def test_a_checked_export_loads_again_without_torch(exported):
    settings, _ = exported
    verdicts = export_file(resolve(settings)).parent / CHECK_FILE
    assert verdicts.exists()
    started = time.perf_counter()
    again = load_embedder(resolve(settings))  # no reference given: a pass kept for these bytes needs none
    seconds = time.perf_counter() - started
    assert isinstance(again, ExportedEmbedder) and (again.runner.min_cosine or 0) >= 0.995
    assert again._reference is None  # torch was not loaded
    print(f"a checked export loads in {seconds:.2f} s")


@pytest.mark.slow
def test_a_refused_export_named_in_the_settings_fails_the_reindex_with_one_line(exported, tmp_path):
    settings, _ = exported
    damaged = _damaged(settings, tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "recommender.cli", "reindex", "--no-progress", "--data-dir", str(damaged.data_dir)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RECOMMENDER_BACKEND": "onnx"},
    )
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "the onnx-float32 export at" in line and "differ from torch (min cosine nan" in line
    assert "Traceback" not in result.stderr
    assert directory.read_current(damaged.index_root)[0] is None  # nothing published
    with SqliteStore.open(damaged.store_path) as store:
        assert not store.has_embeddings(resolve(damaged).key)  # nothing stored


@pytest.mark.slow
def test_a_server_does_not_start_on_a_refused_export_named_in_the_settings(exported, tmp_path):
    settings, reference = exported
    damaged = _damaged(settings, tmp_path / "data")
    with SqliteStore.open(damaged.store_path) as store:  # an index it could serve: it must not be ready on it
        assert reindex(damaged, store, lazy(damaged, reference)).published
    with pytest.raises(RuntimeError, match="server exited") as failed:
        Server(damaged.data_dir, damaged.model, env={"RECOMMENDER_BACKEND": "onnx"})
    assert "differ from torch (min cosine nan" in str(failed.value)


@pytest.mark.slow
def test_under_auto_a_refused_export_embeds_articles_on_torch(exported, tmp_path, caplog):
    settings, reference = exported
    damaged = _damaged(settings, tmp_path / "data")
    spec = replace(resolve(damaged), explicit=False)  # chosen by auto (a measurement, or the index's backend)
    with caplog.at_level(logging.WARNING, logger="recommender.embedders.load"):
        embedder = load_embedder(spec)
    assert isinstance(embedder, SentenceTransformerEmbedder) and embedder.precision == "float32"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "recommender.embedders.load"]
    assert "differ from torch (min cosine nan" in warning and "embedding with torch" in warning
    with SqliteStore.open(damaged.store_path) as store:
        report = reindex(damaged, store, lazy(damaged, embedder))
        assert report.published and report.failed == []
    vectors = _published_vectors(damaged)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    with pytest.raises(ExportRefused):  # the explicit setting: an error, never torch
        load_embedder(replace(spec, explicit=True), reference)
