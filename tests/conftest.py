"""Offline, deterministic fixtures: a tiny sentence-transformers model built
here (a static word-embedding model with its own tokenizer), real SQLite and
real FAISS. Fixtures only: the helpers test modules share are in
tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Articles embed on torch in the tests (servers and CLIs they start inherit it): the measurement that
# backend = "auto" makes at first use has its own tests (test_backends.py).
os.environ.setdefault("RECOMMENDER_BACKEND", "torch")

from recommender.config import Settings
from tests.helpers import FILLER, NAMES, TOPICS, make_corpus


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory) -> Iterator[Path]:
    """The tests' own $XDG_RUNTIME_DIR: the servers they start keep their metrics files there (the
    default metrics_dir), never in the machine's /dev/shm."""
    path = tmp_path_factory.mktemp("runtime")
    path.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def corpus() -> list[dict]:
    return make_corpus()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real sentence-transformers model folder, loadable by path like any other."""
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import StaticEmbedding  # type: ignore[no-redef]

    words = sorted({w for text in TOPICS.values() for w in text.split()} | set(NAMES) | set(FILLER) | {"updated", "x"})
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((len(vocab), 24)).astype(np.float32)
    # Words of one topic share a direction, so the model "knows" paraphrases.
    for text in TOPICS.values():
        direction = rng.standard_normal(24).astype(np.float32)
        for w in text.split():
            weights[vocab[w]] += direction
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=weights)], device="cpu")
    path = tmp_path_factory.mktemp("tiny-model")
    model.save(str(path))
    return path


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    # The confidence floor is calibrated on MiniLM lists; the tests of the floor set their own.
    # Articles on torch: the backend measurement has tests of its own (test_backends.py).
    return Settings.load({"data_dir": tmp_path / "data", "model": str(tiny_model_dir), "min_confidence": 0.0,
                          "backend": "torch"}, environ={})
