"""Articles and queries on torch: any sentence-transformers model, as loaded
(the reference every exported backend is checked against), in float32 or,
for bulk calls on a CPU with native bfloat16 units, in bfloat16.

torch and sentence-transformers are imported only when a model is loaded, so
``import recommender`` and the CLI's help stay light."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from recommender.embedders.base import EmbedderSpec, model_id_for, resolve_model_path
from recommender.embedders.machine import has_native_bf16
from recommender.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
"""Those torch runs (int8 runs on OpenVINO)."""
BF16_MIN_TEXTS = 16
"""bfloat16 is used for calls with at least this many texts (bulk embedding)."""


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """Turn the configured precision into "float32" or "bfloat16": "auto" is
    bfloat16 only on a CPU that multiplies it natively."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device != "cpu":
        return "float32"
    return "bfloat16" if has_native_bf16() else "float32"


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, by local path or by name (from the local
    Hugging Face cache when offline)."""

    def __init__(self, model: Any, model_id: str, batch_size: int = 32, precision: str = "float32"):
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
        _quiet_transformers()
        try:
            model = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load sentence-transformers model {name!r}: {exc}. "
                "Give a local model folder, or a name already in the Hugging Face cache."
            ) from exc
        return cls(model, model_id_for(name), batch_size=batch_size, precision=precision)

    @classmethod
    def of(cls, spec: EmbedderSpec, precision: str | None = None) -> SentenceTransformerEmbedder:
        """The spec's model on torch, in its precision (or ``precision``: the float32 reference)."""
        return cls.load(spec.model, device=spec.device, batch_size=spec.batch_size,
                        precision=precision or spec.precision)

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

    def _model_for(self, n_texts: int) -> Any:
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


def _quiet_transformers() -> None:
    """transformers draws a progress bar on stderr for every model it loads
    ("Loading weights"): a command's output is its own."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()
