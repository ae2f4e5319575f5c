"""Offline, deterministic fixtures: a tiny sentence-transformers model built
here (a static word-embedding model with its own tokenizer), real SQLite and
real FAISS."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from recommender.config import Settings

TOPICS = {
    "talks": "mediators ceasefire border talks ministers negotiation mountain region peace envoy treaty velmora ostrakia",
    "bridge": "bridge harbour construction cost overrun steel engineers council contract crossing traffic",
    "football": "club league goal striker coach title match stadium season fans penalty",
    "drought": "drought heatwave farmers rain harvest water reservoir crops wells irrigation",
    "bank": "bank interest rate inflation prices economists lending mortgage currency growth",
}
NAMES = ["irena", "kalvos", "marek", "dunhill", "sofia", "brandt", "oskar", "lindqvist"]
FILLER = [f"w{i:03d}" for i in range(400)]  # words any article may use


def make_corpus(per_topic: int = 6, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for topic, words in TOPICS.items():
        vocab = words.split()
        for i in range(per_topic):
            sentences = []
            for _ in range(6):
                picked = list(rng.choice(vocab, size=4)) + list(rng.choice(FILLER, size=8))
                rng.shuffle(picked)
                sentences.append(" ".join(picked) + ".")
            rows.append({
                "id": f"{topic}-{i}",
                "title": f"{vocab[i % len(vocab)]} {vocab[(i + 3) % len(vocab)]}",
                "body": "\n\n".join([" ".join(sentences[:3]), " ".join(sentences[3:])]),
                "section": "world" if topic == "talks" else "local",
                "published": f"2025-0{1 + i % 9}-1{i % 10}",
                "group": topic,
            })
    return rows


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
        from sentence_transformers.models import StaticEmbedding

    words = sorted({w for text in TOPICS.values() for w in text.split()} | set(NAMES) | set(FILLER) | {"updated", "x"})
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((len(vocab), 24)).astype(np.float32)
    # Words of one topic share a direction, so the model "knows" paraphrases.
    for t, text in enumerate(TOPICS.values()):
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
    return Settings.load({"data_dir": tmp_path / "data", "model": str(tiny_model_dir), "min_confidence": 0.0},
                         environ={})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class PoisonEmbedder:
    """A real embedder that fails on any text holding "POISON" (a tokenizer
    bug, say): fault injection for the partial-failure paths."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dimension = inner, inner.model_id, inner.dimension

    def embed(self, texts, *, progress=False):
        if any("POISON" in t for t in texts):
            raise ValueError("cannot embed this text")
        return self.inner.embed(texts)
