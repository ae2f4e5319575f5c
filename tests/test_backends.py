"""Articles on torch, onnxruntime or OpenVINO: the settings' candidates, the
exports of the packaged MiniLM and their cosine to torch float32, the
measurement ``backend = "auto"`` makes once and records, and a reindex on an
exported backend (its vectors under a key of their own)."""

from __future__ import annotations

import json
import os
from importlib import resources

import numpy as np
import pytest

from recommender import backends
from recommender.backends import (
    MIN_COSINE,
    Choice,
    ExportedEmbedder,
    calibration_passages,
    candidates,
    choose,
    export_path,
    open_backend,
    record_file,
    recorded_choice,
    resolve,
)
from recommender.config import Settings
from recommender.embed import SentenceTransformerEmbedder, cpu_has_native_bf16
from recommender.errors import ConfigError
from recommender.ingest import ingest_files
from recommender.pipeline import embedding_key, reindex
from recommender.store import Store

HAS_OPENVINO = backends.installed("openvino") and backends.installed("nncf")
if not HAS_OPENVINO and os.environ.get("REQUIRE_OPENVINO"):
    raise RuntimeError("REQUIRE_OPENVINO is set but openvino or nncf is not installed (pip install '.[openvino]')")
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")


def minilm_settings(data_dir, **values) -> Settings:
    return Settings.load({"data_dir": data_dir, **values}, environ={})


def test_candidates_follow_the_settings_and_refuse_pairs_that_cannot_run(tmp_path):
    native = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert candidates(minilm_settings(tmp_path, backend="torch")) == [Choice("torch", native)]
    assert candidates(minilm_settings(tmp_path, backend="torch", precision="float32")) == [Choice("torch", "float32")]
    assert candidates(minilm_settings(tmp_path, backend="onnx")) == [Choice("onnx", "float32")]
    found = candidates(minilm_settings(tmp_path, backend="auto", precision="float32"))
    assert found[:2] == [Choice("torch", "float32"), Choice("onnx", "float32")]
    assert (Choice("openvino", "float32") in found) == backends.installed("openvino")
    with pytest.raises(ConfigError, match="torch runs float32 or bfloat16"):
        candidates(minilm_settings(tmp_path, backend="torch", precision="int8"))
    with pytest.raises(ConfigError, match="onnx float32"):
        candidates(minilm_settings(tmp_path, backend="onnx", precision="bfloat16"))
    with pytest.raises(ConfigError, match="backend"):
        Settings.load({"backend": "tensorrt"}, environ={})


def test_calibration_and_check_passages_are_article_passages_and_apart():
    settings = Settings.load({}, environ={})
    calibrate, check = calibration_passages(settings)
    assert len(calibrate) >= 40 and len(check) >= 40 and not set(calibrate) & set(check)
    assert all(len(p.split()) <= settings.chunk_words + 40 for p in calibrate + check)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """``backend = "auto"`` on the packaged MiniLM: every installed candidate
    exported, measured against torch float32 and recorded (once: a minute or two)."""
    settings = minilm_settings(tmp_path_factory.mktemp("backends"), backend="auto")
    reference = SentenceTransformerEmbedder.load(settings.model, precision="float32")
    choice, results = choose(settings, reference)
    return settings, reference, choice, results


@pytest.mark.slow
def test_auto_takes_the_fastest_backend_that_keeps_the_vectors(measured):
    settings, _, choice, results = measured
    by_name = {r.choice: r for r in results}
    assert {c.name for c in candidates(settings)} == set(by_name)
    for r in results:
        assert r.error is None and r.passed == (r.min_cosine >= MIN_COSINE), r
        assert 0.9 < r.min_cosine <= r.mean_cosine <= 1.0001
    assert by_name[choice.name].passed
    assert by_name[choice.name].passages_per_second == max(r.passages_per_second for r in results if r.passed)
    assert by_name["onnx-float32"].min_cosine > 0.999
    record = json.loads(record_file(settings).read_text())
    assert record["choice"] == choice.name and record["key"]["cpu"]["flags"] == backends.cpu_flags()["flags"]


@pytest.mark.slow
def test_the_recorded_choice_is_reused_and_a_new_cpu_measures_again(measured, monkeypatch):
    settings, _, choice, _ = measured

    def no_measurement(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(backends, "choose", no_measurement)
    assert resolve(settings) == choice
    assert f"backend={choice.backend}" in embedding_key(settings)
    assert recorded_choice(settings.replace(precision="float32")) is None  # other candidates
    other = dict(backends.cpu_flags(), model="another CPU")
    monkeypatch.setattr(backends, "cpu_flags", lambda: other)
    assert recorded_choice(settings) is None


@pytest.mark.slow
def test_every_backend_embeds_as_torch_does_in_any_batch(measured):
    settings, reference, _, _ = measured
    texts = calibration_passages(settings)[1][:24] + ["Irena Kalvos", "x"]
    expected = reference.embed(texts)
    for choice in candidates(settings):
        embedder = open_backend(settings, choice, reference)
        together = embedder.embed(texts)
        alone = np.concatenate([embedder.embed([t]) for t in texts[-4:]])
        assert together.dtype == np.float32 and np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)
        floor = 0.95 if choice.precision == "int8" else 0.999  # int8: 0.978 measured on "x"
        assert (together * expected).sum(axis=1).min() > floor, choice
        assert (alone * expected[-4:]).sum(axis=1).min() > floor, choice
        if choice.backend != "torch":
            assert isinstance(embedder, ExportedEmbedder) and export_path(settings, choice).exists()
            assert embedder.torch() is reference  # the search-query path checks against torch
        assert embedder.embed([]).shape == (0, reference.dimension)


@needs_openvino
@pytest.mark.slow
def test_a_damaged_export_is_not_a_candidate(measured, tmp_path):
    settings, reference, _, _ = measured
    copy = settings.replace(data_dir=tmp_path / "d", precision="bfloat16")
    target = export_path(copy, Choice("openvino", "bfloat16"))
    source = export_path(settings, Choice("openvino", "bfloat16"))
    target.parent.mkdir(parents=True)
    for suffix in (".json", ".bin"):
        target.with_suffix(suffix).write_bytes(source.with_suffix(suffix).read_bytes())
    target.write_text(source.read_text()[:500])  # a torn graph file
    choice, results = choose(copy, reference)
    broken = {r.choice: r for r in results}["openvino-bfloat16"]
    assert not broken.passed and broken.error and choice.name != "openvino-bfloat16"


@pytest.mark.slow
def test_a_reindex_on_an_exported_backend_keeps_its_vectors_apart(measured, tmp_path):
    settings, reference, _, _ = measured
    backend = "openvino" if HAS_OPENVINO else "onnx"
    exported = settings.replace(data_dir=tmp_path / "exported", backend=backend, precision="float32")
    ingest_files(exported, [resources.files("recommender") / "data" / "sample_articles.jsonl"])
    embedder = open_backend(exported, resolve(exported), reference)
    with Store.open(exported.store_path) as store:
        report = reindex(exported, store, lambda: embedder)
        key = embedding_key(exported)
        assert report.published and report.embedded == store.count() and key.endswith(f"backend={backend}")
        assert store.has_embeddings(key)
        ours = np.concatenate([v for _, v in store.iter_embeddings(key)])
    torch_settings = exported.replace(data_dir=tmp_path / "torch", backend="torch")
    ingest_files(torch_settings, [resources.files("recommender") / "data" / "sample_articles.jsonl"])
    with Store.open(torch_settings.store_path) as store:
        reindex(torch_settings, store, lambda: reference)
        theirs = np.concatenate([v for _, v in store.iter_embeddings(embedding_key(torch_settings))])
    assert ours.shape == theirs.shape and (ours * theirs).sum(axis=1).min() > 0.999


@pytest.mark.slow
def test_auto_keeps_the_backend_of_an_index_published_before(measured, tmp_path, monkeypatch):
    """An upgrade does not re-embed an archive unasked: with an index published
    on torch and no record, auto keeps torch (and records that it did)."""
    _, reference, _, _ = measured
    torch_settings = minilm_settings(tmp_path / "d", backend="torch")
    ingest_files(torch_settings, [resources.files("recommender") / "data" / "sample_articles.jsonl"])
    with Store.open(torch_settings.store_path) as store:
        reindex(torch_settings, store, lambda: open_backend(torch_settings, resolve(torch_settings), reference))
    monkeypatch.setattr(backends, "choose", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    auto = torch_settings.replace(backend="auto")
    kept = resolve(auto)
    assert kept == candidates(torch_settings)[0] and embedding_key(auto) == embedding_key(torch_settings)
    assert json.loads(record_file(auto).read_text())["kept"]


@needs_openvino
@pytest.mark.slow
def test_an_int8_export_leaves_a_commands_json_output_clean(tmp_path, monkeypatch, capsys):
    """NNCF draws progress bars on stdout: `--json` must still print only JSON."""
    from recommender.cli import main

    monkeypatch.setenv("RECOMMENDER_BACKEND", "openvino")
    monkeypatch.setenv("RECOMMENDER_PRECISION", "int8")
    assert main(["backends", "--measure", "--json", "--data-dir", str(tmp_path / "d")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["backend"], out["precision"]) == ("openvino", "int8")
    assert {m["choice"] for m in out["measured"]} == {"openvino-int8", "torch-float32"}
