"""`reindex --engine ray`: the embedding step as a Ray Data job on a local Ray
(2 CPUs), checked against the local engine. Skipped without Ray, unless
REQUIRE_RAY is set (CI), where a missing Ray is an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recommender.articles import parse_article
from recommender.config import Settings
from recommender.embed_jobs import EmbeddingError, EmbedJob, EmbedResult
from recommender.embedders import load_embedder, resolve
from recommender.pipeline import reindex
from recommender.ray_engine import EmbedWorker, RayEngine, RemoteEmbeddingError, pack_results, unpack_result
from recommender.store import SqliteStore
from recommender.version import IndexVersion
from tests.helpers import HANG_GUARD, PoisonEmbedder, lazy, write_jsonl

try:
    import ray
except ImportError:
    if os.environ.get("REQUIRE_RAY"):
        raise RuntimeError("REQUIRE_RAY is set but Ray is not installed: pip install -e '.[ray]'") from None
    ray = None  # type: ignore[assignment]

needs_ray = pytest.mark.skipif(ray is None, reason="needs Ray: pip install 'recommender[ray]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings


@pytest.fixture(scope="module")
def local_ray():
    # Ray starts its workers at niceness 15: beside two busy processes on 2
    # cores they got ~4% of a core and a 12-article run outlasted its guard.
    # The test cluster's workers compete as the driver does.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",  # type: ignore[arg-type]
             _system_config={"worker_niceness": 0})
    yield ray
    ray.shutdown()


def _ingested(settings: Settings, rows: list[dict]) -> SqliteStore:
    store = SqliteStore.open(settings.store_path)
    store.upsert([parse_article(r) for r in rows])
    return store


@needs_ray
@pytest.mark.slow
def test_ray_engine_publishes_the_same_index_as_the_local_one(tmp_path, tiny_model_dir, corpus, local_ray):
    # 31 articles in jobs of 8: 4 jobs, in windows of 3 (two datasets), on 2
    # one-thread workers, so results can come back out of order.
    local = Settings.load({"backend": "torch", "data_dir": tmp_path / "local", "model": str(tiny_model_dir), "min_confidence": 0.0},
                             environ={})
    remote = local.replace(data_dir=tmp_path / "ray")
    rows = corpus + [dict(corpus[0], id="copy-of-talks-0")]  # a syndicated copy: one story, passages reused

    with _ingested(local, rows) as store:
        expected = reindex(local, store, lazy(local, lambda: load_embedder(resolve(local))), batch_docs=8)
    with _ingested(remote, rows) as store:
        engine = RayEngine(resolve(remote), concurrency=2, threads_per_worker=1, window_jobs=3)
        report = reindex(remote, store, lazy(remote, lambda: pytest.fail("the ray engine must not load a model here")),
                         engine=engine, batch_docs=8)
        assert ray.is_initialized()  # the engine used the running Ray and left it running

    assert report.engine == "ray" and expected.engine == "local"
    assert (report.embedded, report.failed, report.published) == (31, [], True)
    assert (report.passages_embedded, report.passages_reused) == (expected.passages_embedded, expected.passages_reused)
    a = IndexVersion.load(local.index_root)
    b = IndexVersion.load(remote.index_root)
    np.testing.assert_array_equal(a.doc_ids, b.doc_ids)
    assert b.doc_vectors.dtype == np.float32 and b.doc_vectors.shape == a.doc_vectors.shape
    np.testing.assert_allclose(b.doc_vectors, a.doc_vectors, atol=1e-5)
    np.testing.assert_array_equal(a.chunk_offsets, b.chunk_offsets)
    np.testing.assert_allclose(b.chunk_vectors, a.chunk_vectors, atol=1e-5)
    np.testing.assert_array_equal(a.story_ids, b.story_ids)
    assert len(np.unique(b.story_ids)) < len(b.doc_ids)  # the copy joined its original's story
    assert a.manifest.corpus_hash == b.manifest.corpus_hash


@needs_ray
@pytest.mark.slow
def test_ray_client_path_runs_each_window_in_a_cluster_task(tmp_path, tiny_model_dir, corpus, local_ray, monkeypatch):
    """With ray:// (Ray Client) Ray Data cannot stream to the driver; the engine
    then collects each window in a task on the cluster. Taken here on the local Ray."""
    monkeypatch.setattr(ray.util.client.ray, "is_connected", lambda: True)
    local = Settings.load({"backend": "torch", "data_dir": tmp_path / "local", "model": str(tiny_model_dir), "min_confidence": 0.0},
                             environ={})
    remote = local.replace(data_dir=tmp_path / "ray")
    with _ingested(local, corpus[:10]) as store:
        reindex(local, store, lazy(local, lambda: load_embedder(resolve(local))))
    with _ingested(remote, corpus[:10]) as store:
        report = reindex(remote, store, lazy(remote, lambda: pytest.fail("the ray engine must not load a model here")), engine=RayEngine(resolve(remote), concurrency=2, threads_per_worker=1))
    assert (report.embedded, report.engine) == (10, "ray")
    np.testing.assert_allclose(IndexVersion.load(remote.index_root).doc_vectors,
                               IndexVersion.load(local.index_root).doc_vectors, atol=1e-5)


@needs_ray
@pytest.mark.slow
def test_a_model_that_cannot_load_on_the_workers_stops_the_run(tmp_path, corpus, local_ray):
    settings = Settings.load({"backend": "torch", "data_dir": tmp_path / "d", "model": str(tmp_path / "no-such-model")}, environ={})
    with _ingested(settings, corpus[:3]) as store:
        engine = RayEngine(resolve(settings), concurrency=1, threads_per_worker=1)
        with pytest.raises(EmbeddingError, match="cannot load the model .*no-such-model.* on Ray worker"):
            reindex(settings, store, lazy(settings, lambda: pytest.fail("the ray engine must not load a model here")), engine=engine)
        assert store.stale_embeddings(resolve(settings).key)  # nothing saved
    assert not (settings.index_root / "CURRENT").exists()


@needs_ray
@pytest.mark.slow
def test_cli_reindex_engine_ray_with_address(tmp_path, tiny_model_dir, corpus, local_ray):
    # Another process, connecting to the running Ray by address as to a real cluster.
    address = local_ray.get_runtime_context().gcs_address
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "recommender.cli", *args, *common], check=False,
                              capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
                              timeout=HANG_GUARD)

    assert cli("ingest", str(write_jsonl(tmp_path / "a.jsonl", corpus[:12]))).returncode == 0
    result = cli("reindex", "--engine", "ray", "--ray-address", address, "--ray-workers", "2",
                 "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["engine"] == "ray" and summary["embedded"] == 12 and summary["published"]
    assert "Traceback" not in result.stderr
    assert local_ray.cluster_resources().get("CPU") == 2  # disconnecting left the cluster running


def test_results_and_per_article_errors_survive_the_trip():
    good = np.arange(6, dtype=np.float32).reshape(2, 3)
    results: EmbedResult = [good, ValueError("cannot embed this text"), np.zeros((0, 3), np.float32), good[:1] + 0.5]
    data, rows, errors = pack_results(results, 3)
    row = {"vectors": data, "rows": json.dumps(rows), "errors": json.dumps(errors), "job_error": ""}
    back = unpack_result(EmbedJob(0, [["a", "b"], ["c"], [], ["d"]]), row)
    assert len(back) == 4 and isinstance(back[1], RemoteEmbeddingError)
    assert str(back[1]) == "ValueError: cannot embed this text"
    for got, want in zip([back[0], back[2], back[3]], [results[0], results[2], results[3]]):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    with pytest.raises(EmbeddingError, match="boom"):
        unpack_result(EmbedJob(0, [["a"]]), dict(row, job_error="boom"))


def test_worker_isolates_a_failing_article(settings):
    """A worker's call, in this process: one bad article fails alone."""

    import torch

    threads = torch.get_num_threads()
    try:
        worker = EmbedWorker(resolve(settings), threads=1)  # sets torch's threads, as in a Ray worker
    finally:
        torch.set_num_threads(threads)
    assert worker.error is None
    worker.embedder = PoisonEmbedder(worker.embedder)
    texts = [["ceasefire talks", "envoy treaty"], ["POISON"], ["bridge harbour"]]
    out = worker({"number": np.array([7]), "texts": np.array([json.dumps(texts)], dtype=object)})
    row = {k: v[0] for k, v in out.items()}
    assert row["number"] == 7 and row["job_error"] == ""
    back = unpack_result(EmbedJob(7, texts), row)
    assert [getattr(r, "shape", None) for r in back] == [(2, 24), None, (1, 24)]
    assert isinstance(back[1], RemoteEmbeddingError) and "cannot embed this text" in str(back[1])
    np.testing.assert_allclose(back[0], worker.embedder.inner.embed(texts[0]), atol=1e-6)


def test_engine_ray_without_ray_installed_says_how_to_install(tmp_path, corpus, tiny_model_dir):
    """Ray made unimportable in a subprocess: a clear error, no traceback."""
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from recommender.cli import main\n"
        f"sys.exit(main({['reindex', '--engine', 'ray', *common]!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr
    assert "pip install 'recommender[ray]'" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_cluster_address_fails_fast():
    import socket

    from recommender.errors import ConfigError
    from recommender.ray_engine import check_reachable

    with socket.socket() as server:  # a port that answers...
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout=2)  # ...and, closed, one that does not
    check_reachable("auto")
    check_reachable("ray://head:10001")  # Ray Client has its own timeout


def test_ray_options_need_the_ray_engine(tmp_path):
    from recommender.cli import main

    assert main(["reindex", "--ray-address", "auto", "--data-dir", str(tmp_path / "d")]) == 2
