"""Opening what a spec names: the one factory the CLI, the server, the
evaluation and the Ray workers use (``load_embedder``), and the lazily
loaded embedder the commands and the server hold (``LazyEmbedder``)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

from recommender.embedders.base import Choice, Embedder, EmbedderSpec, resolve_model_path
from recommender.embedders.onnx_backend import (
    ExportedModel,
    ExportRefused,
    OnnxEmbedder,
    check_export,
    export_file,
    export_onnx,
)
from recommender.embedders.openvino_backend import (
    OpenVinoEmbedder,
    calibration_passages,
    export_openvino,
    export_path,
)
from recommender.embedders.torch_backend import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

MIN_COSINE = {"float32": 0.995, "bfloat16": 0.995, "int8": 0.95}
"""An export embeds articles only if every check passage's vector is this
close to torch float32's, by precision. The check catches a damaged export
(NaN, or vectors of another model: cosines far below), not a quantization's
rounding: int8 keeps 0.98-0.99 on short passages, which ``recommender
backends --measure`` weighs against its speed (a candidate there needs 0.995)."""
CHECK_PASSAGES = 4
"""Article passages checked at each load: a few, so a load stays cheap."""


class ExportedEmbedder:
    """Articles on an exported backend. ``torch()`` gives the torch model
    where one is needed (the search-query path checks its own export against
    it), loaded on first use only."""

    def __init__(self, runner: ExportedModel, spec: EmbedderSpec, reference: SentenceTransformerEmbedder | None = None):
        self.runner = runner
        self.spec = spec
        self.model_id = runner.model_id
        self.dimension = runner.dimension
        self._reference = reference
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.runner.embed(list(texts))
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def torch(self) -> SentenceTransformerEmbedder:
        with self._lock:
            if self._reference is None:
                self._reference = SentenceTransformerEmbedder.of(self.spec, "float32")
            return self._reference


def load_embedder(spec: EmbedderSpec, reference: SentenceTransformerEmbedder | None = None) -> Embedder:
    """The embedder the spec names. An exported backend's export is made
    first where it is missing (from ``reference``, or the model loaded on
    torch), then checked against torch float32 on a few article passages
    (``check_export``, the search-query path's check; a pass is kept beside
    the export, so a later load costs a checksum). An export that fails is
    never used for articles: where the settings name its backend
    (``spec.explicit``) loading fails (``ExportRefused``); under ``auto`` the
    articles embed on torch float32, with one warning saying why."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if spec.backend == "torch":
        if reference is not None and reference.precision == spec.precision:
            return reference
        return SentenceTransformerEmbedder.of(spec)
    choice = spec.choice
    target = export_file(spec) if spec.backend == "onnx" else export_path(spec, choice)
    if not target.exists():
        reference = reference or SentenceTransformerEmbedder.of(spec, "float32")
        if spec.backend == "onnx":
            export_onnx(reference.model, target)
        else:
            export_openvino(spec, choice, reference)
    runner = _runner(spec, choice, target)
    loaded: list[SentenceTransformerEmbedder] = [reference] if reference is not None else []

    def torch_reference() -> SentenceTransformerEmbedder:
        if not loaded:
            loaded.append(SentenceTransformerEmbedder.of(spec, "float32"))
        return loaded[0]

    try:
        check_export(runner, check_passages(spec), MIN_COSINE.get(choice.precision, 0.995), torch_reference,
                     label=choice.name)
    except ExportRefused as exc:
        if spec.explicit:
            raise ExportRefused(f"{exc}; backend {spec.backend!r} is set, so nothing is embedded. Delete "
                                f"{target.parent} (it is exported again from the model at the next load), "
                                "or set backend to auto or torch") from None
        log.warning("%s; embedding with torch (float32). Delete %s to export it again", exc, target.parent)
        return torch_reference()
    return ExportedEmbedder(runner, spec, loaded[0] if loaded else None)


def check_passages(spec: EmbedderSpec) -> list[str]:
    """The article passages an export is checked on at load: a few of those
    ``recommender backends --measure`` checks on (never the calibration ones)."""
    return calibration_passages(spec)[1][:CHECK_PASSAGES]


def _runner(spec: EmbedderSpec, choice: Choice, target) -> ExportedModel:
    model_path = resolve_model_path(spec.model)
    if choice.backend == "onnx":
        return OnnxEmbedder(target, model_path, spec.model_id, threads=_threads(), batch_size=spec.batch_size)
    return OpenVinoEmbedder(target, model_path, spec.model_id, precision=choice.precision, threads=_threads(),
                            batch_size=spec.batch_size)


def _threads() -> int:
    """torch's thread count where torch is loaded already; else the cores this
    process may use (an exported backend need not import torch at all)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else len(os.sched_getaffinity(0))


class LazyEmbedder:
    """The spec's embedder, loaded on first use, once, whichever thread asks
    first: commands that need no model (related lists of indexed articles,
    rules) never load it; the server loads it at start (``get()``).
    ``load`` replaces the factory (the tests' tiny model)."""

    def __init__(self, spec: EmbedderSpec, load: Callable[[], Embedder] | None = None):
        self.spec = spec
        self._load = load or (lambda: load_embedder(spec))
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        """The embedding cache key of the vectors this embedder makes."""
        return self.spec.key

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

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
