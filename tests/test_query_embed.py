"""Search queries on onnxruntime: the export of the packaged MiniLM matches
torch, a damaged export is refused for torch, the setting's choices, and
search gives the same results on either backend."""

from __future__ import annotations

import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recommender.api import create_app
from recommender.cli import main
from recommender.config import Settings
from recommender.embedders import load_embedder, resolve
from recommender.embedders import query as query_module
from recommender.embedders.onnx_backend import OnnxEmbedder, export_file
from recommender.embedders.query import MIN_COSINE, QueryEmbedder, load_query_embedder, open_query_model
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.errors import ConfigError
from recommender.ingest import ingest_files
from recommender.pipeline import reindex
from recommender.service import Engine
from recommender.store import SqliteStore
from tests.helpers import lazy

LOGGER = "recommender.embedders.query"

LONG = " ".join(
    "Negotiators from both sides met again on Thursday in the mountain town, where the envoy said a ceasefire "
    "along the border could hold if the ministers agreed on who would monitor it.".split() * 12
)
TEXTS = [
    "harbour bridge",
    "Irena Kalvos",
    "who pays for the new crossing over the harbour",
    "Wer bezahlt die neue Brücke über den Hafen?",
    "¿Quién paga el nuevo puente del puerto?",
    "ceasefire 停火 谈判",
    "مفاوضات وقف إطلاق النار",
    "Переговоры о перемирии на границе",
    "🌉 bridge cost 2025 €1.2bn",
    "x",
    LONG,
]

QUERIES = [
    "Irena Kalvos",
    "who pays for the new crossing over the harbour",
    "farmers and the drought",
    "interest rates and inflation",
    "ceasefire talks in the mountains",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The packaged MiniLM on torch, its ONNX export, and the demo corpus indexed by torch."""
    settings = Settings.load({"backend": "torch", "precision": "float32", "data_dir": tmp_path_factory.mktemp("onnx")},
                             environ={})
    reference = load_embedder(resolve(settings))
    assert isinstance(reference, SentenceTransformerEmbedder)
    onnx = open_query_model(resolve(settings), reference)
    ingest_files(settings, [Path(str(resources.files("recommender") / "data" / "sample_articles.jsonl"))])
    with SqliteStore.open(settings.store_path) as store:
        reindex(settings, store, lazy(settings, reference))
    return settings, reference, onnx


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


@pytest.mark.slow
def test_onnx_vectors_match_torch(minilm):
    settings, reference, onnx = minilm
    assert onnx.max_seq_length == 256 < len(onnx.tokenizer(LONG)["input_ids"])  # the long text is truncated
    expected = reference.embed(TEXTS)
    together = onnx.embed(TEXTS)
    alone = np.concatenate([onnx.embed([text]) for text in TEXTS])
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for got in (together, alone):
        cosines = _cosines(expected, got)
        assert (cosines >= MIN_COSINE).all(), dict(zip(TEXTS, cosines))
    assert onnx.min_cosine is not None and onnx.min_cosine >= MIN_COSINE
    assert onnx.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_threads_embed_at_once(minilm):
    """Requests run in a thread pool: one session and one tokenizer serve them all."""
    from concurrent.futures import ThreadPoolExecutor

    _, _, onnx = minilm
    texts = TEXTS[:-1] * 8
    expected = onnx.embed(texts)
    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate(list(pool.map(lambda text: onnx.embed([text]), texts)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_the_export_is_reused_not_written_again(minilm, caplog):
    settings, reference, _ = minilm
    target = export_file(resolve(settings))
    assert target.parent.parent == settings.data_dir / "models" / "onnx"
    before = target.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = load_query_embedder(resolve(settings), "onnx", lambda: reference)
    assert isinstance(again, OnnxEmbedder) and target.stat().st_mtime_ns == before
    assert "exported" not in caplog.text and "min cosine" in caplog.text
    assert not list(target.parent.glob("*.tmp"))


def _damaged_copy(settings: Settings, tmp_path, damage) -> Settings:
    """A data folder holding a copy of the good export, damaged by ``damage(bytes) -> bytes``."""
    damaged = settings.replace(data_dir=tmp_path / "data", query_backend="onnx")
    source, target = export_file(resolve(settings)), export_file(resolve(damaged))
    shutil.copytree(source.parent, target.parent)
    target.write_bytes(damage(target.read_bytes()))
    return damaged


@pytest.mark.slow
@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: b"", id="empty"),
    # Weights overwritten in place: the file still parses, the vectors are wrong (NaN for 0xff).
    pytest.param(lambda data: data[: len(data) // 2] + b"\xff" * 4_000_000 + data[len(data) // 2 + 4_000_000:],
                 id="nan-weights"),
    pytest.param(lambda data: data[: len(data) // 2] + b"\x00" * 4_000_000 + data[len(data) // 2 + 4_000_000:],
                 id="zeroed-weights"),
])
def test_a_damaged_export_is_refused_for_torch(minilm, tmp_path, caplog, damage):
    settings, reference, _ = minilm
    damaged = _damaged_copy(settings, tmp_path, damage)
    size = export_file(resolve(damaged)).stat().st_size
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        chosen = load_query_embedder(resolve(damaged), damaged.query_backend, lambda: reference)
    assert chosen is reference
    assert "refused" in caplog.text
    assert export_file(resolve(damaged)).stat().st_size == size  # refused, not silently replaced


@pytest.mark.slow
def test_torch_is_used_without_export_when_asked(minilm, tmp_path):
    settings, reference, _ = minilm
    chosen = load_query_embedder(resolve(settings.replace(data_dir=tmp_path / "data")), "torch", lambda: reference)
    assert chosen is reference and not (tmp_path / "data" / "models").exists()


@pytest.mark.slow
@pytest.mark.parametrize("onnx_ms, torch_ms, faster", [(2.0, 9.0, OnnxEmbedder), (9.0, 2.0, SentenceTransformerEmbedder),
                                                       (5.0, 5.0, SentenceTransformerEmbedder)])
def test_auto_takes_the_faster_of_onnx_and_torch(minilm, monkeypatch, onnx_ms, torch_ms, faster):
    """"auto" times both on this machine and takes onnxruntime only where it is
    faster (a tie stays on torch); the timings are given here, so the choice,
    not the race, is what is checked (scripts/bench_query_embed.py measures the race)."""
    settings, reference, _ = minilm
    timed = []

    def median_seconds(embedders, *args, **kwargs):
        timed.append([type(e) for e in embedders])
        return [onnx_ms / 1e3, torch_ms / 1e3]

    monkeypatch.setattr(query_module, "median_seconds", median_seconds)
    assert isinstance(load_query_embedder(resolve(settings), "auto", lambda: reference), faster)
    assert timed == [[OnnxEmbedder, SentenceTransformerEmbedder]]


@pytest.mark.slow
def test_auto_answers_on_torch_at_once_and_moves_to_onnx_when_it_is_ready(minilm, tmp_path, monkeypatch):
    """A server's start does not wait for the ONNX model: with "auto", queries
    embed on torch from the first, while the export (a first start's: this
    data folder has none), its check and its timing run in a thread beside
    serving; then queries move to it."""
    settings, reference, _ = minilm
    fresh = settings.replace(data_dir=tmp_path / "data")
    monkeypatch.setattr(query_module, "median_seconds", lambda embedders, *a, **k: [0.002, 0.009])
    embedder = QueryEmbedder(resolve(fresh), "auto", lambda: reference)
    assert embedder.prepare(background=True) is reference and embedder.preparing is not None
    vector = embedder.embed(["Irena Kalvos"])
    embedder.preparing.join()
    assert isinstance(embedder.prepare(), OnnxEmbedder) and export_file(resolve(fresh)).exists()
    assert float(vector[0] @ embedder.embed(["Irena Kalvos"])[0]) > MIN_COSINE
    waiting = QueryEmbedder(resolve(fresh), "auto", lambda: reference)  # a command, the evaluation: no thread
    assert isinstance(waiting.prepare(), OnnxEmbedder) and waiting.preparing is None


@pytest.mark.slow
def test_search_gives_the_same_results_on_both_backends(minilm):
    settings, reference, _ = minilm
    results = {}
    for backend in ("torch", "onnx"):
        chosen = settings.replace(query_backend=backend)
        with Engine.open(chosen, lazy(chosen, reference)) as engine:
            results[backend] = [[(i.id, i.hit.score) for i in engine.search(q, 5)] for q in QUERIES]
            kind = type(engine.query_embedder.get())
            assert kind is (SentenceTransformerEmbedder if backend == "torch" else OnnxEmbedder)
    for query, by_torch, by_onnx in zip(QUERIES, results["torch"], results["onnx"]):
        assert [i for i, _ in by_onnx] == [i for i, _ in by_torch], query
        np.testing.assert_allclose([s for _, s in by_onnx], [s for _, s in by_torch], atol=1e-3)


@pytest.mark.slow
def test_the_http_search_gives_the_same_results_on_both_backends(minilm):
    settings, reference, _ = minilm
    ids = {}
    for backend in ("torch", "onnx"):
        chosen = settings.replace(query_backend=backend)
        app = create_app(chosen, embedder=lazy(chosen, reference))
        with TestClient(app) as client:
            ids[backend] = [[i["id"] for i in client.get("/v1/search", params={"q": q, "k": 5}).json()["items"]]
                            for q in QUERIES]
    assert ids["onnx"] == ids["torch"] and all(ids["torch"])


@pytest.mark.slow
def test_the_command_exports_checks_and_times(minilm, tmp_path, capsys):
    settings, reference, _ = minilm
    data_dir = tmp_path / "data"
    assert main(["export-query-model", "--json", "--data-dir", str(data_dir)], load_embedder=lambda s: reference) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["min_cosine"] >= MIN_COSINE and result["onnx_ms"] > 0 and result["torch_ms"] > 0
    assert result["path"] == str(export_file(resolve(settings.replace(data_dir=data_dir))))
    damaged = _damaged_copy(settings, tmp_path / "damaged", lambda data: data[:1000])
    args = ["export-query-model", "--data-dir", str(damaged.data_dir)]
    assert main(args, load_embedder=lambda s: reference) == 1
    assert "refused" in capsys.readouterr().err
    assert main([*args, "--force"], load_embedder=lambda s: reference) == 0  # written again, and it passes


# -- without the model ------------------------------------------------------------


def test_the_setting_choices(tmp_path):
    assert Settings().query_backend == "auto"
    assert Settings.load({}, environ={"RECOMMENDER_QUERY_BACKEND": "onnx"}).query_backend == "onnx"
    with pytest.raises(ConfigError, match="setting 'query_backend' must be 'auto', 'torch' or 'onnx'"):
        Settings.load({"query_backend": "openvino"}, environ={})


@pytest.mark.parametrize("backend, level", [("auto", logging.INFO), ("onnx", logging.WARNING)])
def test_a_model_that_cannot_be_exported_stays_on_torch(settings, caplog, backend, level):
    """The tests' tiny model is a static word-embedding model, not a transformer."""
    reference = SentenceTransformerEmbedder.load(settings.model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = load_query_embedder(resolve(settings), backend, lambda: reference)
    assert chosen is reference and not (settings.data_dir / "models").exists()
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [level] and "StaticEmbedding" in records[0].getMessage()


def test_new_model_files_get_a_new_export(settings, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    copied = resolve(settings.replace(model=str(model)))
    first = export_file(copied)
    assert export_file(copied) == first and export_file(resolve(settings)) != first  # another path, another key
    (model / "modules.json").write_text((model / "modules.json").read_text() + "\n")
    assert export_file(copied) != first
