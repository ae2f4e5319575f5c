"""Articles on torch, onnxruntime or OpenVINO: the settings' candidates, the
exports of the packaged MiniLM and their cosine to torch float32, the
measurement ``recommender backends --measure`` makes and keeps per machine,
``auto`` deciding at once without one, and a reindex on an exported backend
(its vectors under a key of their own)."""

from __future__ import annotations

import json
import os
import stat
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recommender.config import Settings
from recommender.embedders import Choice, EmbedderSpec, candidates, load_embedder, resolve
from recommender.embedders import choice as choice_module
from recommender.embedders.choice import MIN_COSINE, choose, measurement, recorded_choice, records_file, resolve_choice
from recommender.embedders.load import ExportedEmbedder
from recommender.embedders.machine import cpu_info, has_native_bf16, installed
from recommender.embedders.openvino_backend import calibration_passages, export_path
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.errors import ConfigError
from recommender.ingest import ingest_files
from recommender.pipeline import reindex
from recommender.store import SqliteStore
from tests.helpers import lazy

HAS_OPENVINO = installed("openvino") and installed("nncf")
if not HAS_OPENVINO and os.environ.get("REQUIRE_OPENVINO"):
    raise RuntimeError("REQUIRE_OPENVINO is set but openvino or nncf is not installed (pip install '.[openvino]')")
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
SAMPLE = Path(str(resources.files("recommender") / "data" / "sample_articles.jsonl"))


def minilm_settings(data_dir, **values) -> Settings:
    return Settings.load({"data_dir": data_dir, **values}, environ={})


def spec_of(settings: Settings, choice: Choice) -> EmbedderSpec:
    return EmbedderSpec.of(settings, choice)


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    """Each test's own $XDG_CACHE_HOME: measurements kept by one test are not another's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "recommender"


def test_candidates_follow_the_settings_and_refuse_pairs_that_cannot_run(tmp_path):
    native = "bfloat16" if has_native_bf16() else "float32"
    assert candidates(minilm_settings(tmp_path, backend="torch")) == [Choice("torch", native)]
    assert candidates(minilm_settings(tmp_path, backend="torch", precision="float32")) == [Choice("torch", "float32")]
    assert candidates(minilm_settings(tmp_path, backend="onnx")) == [Choice("onnx", "float32")]
    found = candidates(minilm_settings(tmp_path, backend="auto", precision="float32"))
    assert found[:2] == [Choice("torch", "float32"), Choice("onnx", "float32")]
    assert (Choice("openvino", "float32") in found) == installed("openvino")
    with pytest.raises(ConfigError, match="torch runs float32 or bfloat16"):
        candidates(minilm_settings(tmp_path, backend="torch", precision="int8"))
    with pytest.raises(ConfigError, match="onnx float32"):
        candidates(minilm_settings(tmp_path, backend="onnx", precision="bfloat16"))
    with pytest.raises(ConfigError, match="backend"):
        Settings.load({"backend": "tensorrt"}, environ={})


def test_calibration_and_check_passages_are_article_passages_and_apart():
    settings = Settings.load({}, environ={})
    calibrate, check = calibration_passages(spec_of(settings, Choice("torch", "float32")))
    assert len(calibrate) >= 40 and len(check) >= 40 and not set(calibrate) & set(check)
    assert all(len(p.split()) <= settings.chunk_words + 40 for p in calibrate + check)


def test_auto_decides_at_once_on_torch_in_the_cpus_native_precision(tmp_path, monkeypatch):
    """No job waits for a measurement: without one, auto is torch in the
    precision the CPU runs natively, and nothing is measured or exported."""

    def no_measurement(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(choice_module, "measure", no_measurement)
    settings = minilm_settings(tmp_path, backend="auto")
    spec = resolve(settings)
    native = "bfloat16" if has_native_bf16() else "float32"
    assert (spec.backend, spec.precision) == ("torch", native)
    assert spec.key.endswith(f"|precision={native}|backend=torch")
    assert resolve_choice(settings)[1].startswith("the default")
    assert not (tmp_path / "models").exists()


def test_a_measurement_kept_for_this_machine_decides_for_new_data_folders(tmp_path, monkeypatch, machine_cache):
    settings = minilm_settings(tmp_path / "a", backend="auto", precision="float32")
    choice_module.keep(settings, Choice("onnx", "float32"), [])
    assert (machine_cache / "backends.json").exists()
    fresh = settings.replace(data_dir=tmp_path / "b")  # another data folder on this machine
    assert resolve(fresh).choice == Choice("onnx", "float32")
    assert "measured on this machine" in resolve_choice(fresh)[1]
    assert recorded_choice(settings.replace(precision="auto")) is None  # other candidates: another key
    other = dict(cpu_info(), model="another CPU")
    monkeypatch.setattr(choice_module, "cpu_info", lambda: other)
    assert recorded_choice(settings) is None  # another CPU measures again


def test_without_a_writable_cache_nothing_is_kept_and_nothing_fails(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    settings = minilm_settings(tmp_path / "d", backend="auto", precision="float32")
    assert choice_module.keep(settings, Choice("onnx", "float32"), []) is None
    assert measurement(settings) is None and resolve(settings).choice == Choice("torch", "float32")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only))
    try:
        if os.access(read_only, os.W_OK):  # root writes anyway: the file case above stands for it
            return
        assert choice_module.keep(settings, Choice("onnx", "float32"), []) is None
        assert resolve(settings).choice == Choice("torch", "float32")
    finally:
        read_only.chmod(stat.S_IRWXU)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """``recommender backends --measure`` on the packaged MiniLM: every
    installed candidate exported, measured against torch float32 and kept
    (once: a minute or two)."""
    cache = tmp_path_factory.mktemp("measured-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        settings = minilm_settings(tmp_path_factory.mktemp("backends"), backend="auto")
        reference = SentenceTransformerEmbedder.load(settings.model, precision="float32")
        choice, results = choose(settings, reference)
        record = json.loads(records_file().read_text())
    return settings, reference, choice, results, record


@pytest.mark.slow
def test_the_measurement_takes_the_fastest_backend_that_keeps_the_vectors(measured):
    settings, _, choice, results, record = measured
    by_name = {r.choice: r for r in results}
    assert {c.name for c in candidates(settings)} | {"torch-float32"} == set(by_name)
    for r in results:
        assert r.error is None and r.passed == (r.min_cosine >= MIN_COSINE), r
        assert 0.9 < r.min_cosine <= r.mean_cosine <= 1.0001
    assert by_name[choice.name].passed
    assert by_name[choice.name].passages_per_second == max(r.passages_per_second for r in results if r.passed)
    assert by_name["onnx-float32"].min_cosine > 0.999
    (kept,) = record.values()
    assert kept["choice"] == choice.name and kept["key"]["cpu"]["flags"] == cpu_info()["flags"]


@pytest.mark.slow
def test_every_backend_embeds_as_torch_does_in_any_batch(measured):
    settings, reference, _, _, _ = measured
    texts = calibration_passages(spec_of(settings, Choice("torch", "float32")))[1][:24] + ["Irena Kalvos", "x"]
    expected = reference.embed(texts)
    for choice in candidates(settings):
        embedder = load_embedder(spec_of(settings, choice), reference)
        together = embedder.embed(texts)
        alone = np.concatenate([embedder.embed([t]) for t in texts[-4:]])
        assert together.dtype == np.float32 and np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)
        floor = 0.95 if choice.precision == "int8" else 0.999  # int8: 0.978 measured on "x"
        assert (together * expected).sum(axis=1).min() > floor, choice
        assert (alone * expected[-4:]).sum(axis=1).min() > floor, choice
        if choice.backend == "openvino":
            assert export_path(spec_of(settings, choice), choice).exists()
        if choice.backend != "torch":
            assert isinstance(embedder, ExportedEmbedder)
            assert embedder.torch() is reference  # the search-query path checks against torch
        assert embedder.embed([]).shape == (0, reference.dimension)


@needs_openvino
@pytest.mark.slow
def test_a_damaged_export_is_not_a_candidate(measured, tmp_path):
    settings, reference, _, _, _ = measured
    copy = settings.replace(data_dir=tmp_path / "d", precision="bfloat16")
    bf16 = Choice("openvino", "bfloat16")
    target, source = export_path(spec_of(copy, bf16), bf16), export_path(spec_of(settings, bf16), bf16)
    target.parent.mkdir(parents=True)
    for suffix in (".json", ".bin"):
        target.with_suffix(suffix).write_bytes(source.with_suffix(suffix).read_bytes())
    target.write_text(source.read_text()[:500])  # a torn graph file
    choice, results = choose(copy, reference)
    broken = {r.choice: r for r in results}["openvino-bfloat16"]
    assert not broken.passed and broken.error and choice.name != "openvino-bfloat16"


@pytest.mark.slow
def test_a_reindex_on_an_exported_backend_keeps_its_vectors_apart(measured, tmp_path):
    settings, reference, _, _, _ = measured
    backend = "openvino" if HAS_OPENVINO else "onnx"
    exported = settings.replace(data_dir=tmp_path / "exported", backend=backend, precision="float32")
    ingest_files(exported, [SAMPLE])
    spec = resolve(exported)
    embedder = load_embedder(spec, reference)
    with SqliteStore.open(exported.store_path) as store:
        report = reindex(exported, store, lazy(exported, embedder))
        assert report.published and report.embedded == store.count() and spec.key.endswith(f"backend={backend}")
        assert store.has_embeddings(spec.key)
        ours = np.concatenate([v for _, v in store.iter_embeddings(spec.key)])
    torch_settings = exported.replace(data_dir=tmp_path / "torch", backend="torch")
    ingest_files(torch_settings, [SAMPLE])
    with SqliteStore.open(torch_settings.store_path) as store:
        reindex(torch_settings, store, lazy(torch_settings, reference))
        theirs = np.concatenate([v for _, v in store.iter_embeddings(resolve(torch_settings).key)])
    assert ours.shape == theirs.shape and (ours * theirs).sum(axis=1).min() > 0.999


def test_an_index_keeps_the_backend_it_was_built_with(tmp_path, tiny_model_dir):
    """A data folder of an earlier release, or one built before a measurement:
    auto keeps the backend its index was embedded on, even where this machine's
    measurement chose another (nothing is embedded again unasked)."""
    torch_settings = minilm_settings(tmp_path / "d", model=str(tiny_model_dir), backend="torch", precision="float32")
    ingest_files(torch_settings, [SAMPLE])
    with SqliteStore.open(torch_settings.store_path) as store:
        reindex(torch_settings, store, lazy(torch_settings, lambda: SentenceTransformerEmbedder.load(str(tiny_model_dir))))
    auto = torch_settings.replace(backend="auto")
    choice_module.keep(auto, Choice("onnx", "float32"), [])  # this machine measured onnx as the fastest
    assert recorded_choice(auto) == Choice("onnx", "float32")
    assert resolve(auto).key == resolve(torch_settings).key
    assert resolve_choice(auto)[1] == "the published index was embedded on it"
    assert resolve(auto.replace(data_dir=tmp_path / "new")).choice == Choice("onnx", "float32")


@needs_openvino
@pytest.mark.slow
def test_an_int8_export_writes_nothing_of_its_own_to_a_commands_output(tmp_path, monkeypatch, capsys):
    """NNCF draws progress bars and logs: neither may reach a command's
    output (`--json` prints only JSON, and stderr stays the command's own)."""
    from recommender.cli import main

    monkeypatch.setenv("RECOMMENDER_BACKEND", "openvino")
    monkeypatch.setenv("RECOMMENDER_PRECISION", "int8")
    assert main(["backends", "--measure", "--json", "--data-dir", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["backend"], out["precision"]) == ("openvino", "int8")
    assert {m["choice"] for m in out["measured"]} == {"openvino-int8", "torch-float32"}
    assert "%|" not in captured.err and "nncf" not in captured.err.lower() and "Loading weights" not in captured.err
