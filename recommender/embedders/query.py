"""Search queries on the ONNX export (``onnx_backend``), one thread: a
query is one short text, for which torch's per-call overhead is most of the
time. The export is checked against torch where it is opened (every sample
text's vector within ``MIN_COSINE``), and refused for torch when it differs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from recommender.embedders.base import Embedder, EmbedderSpec, resolve_model_path
from recommender.embedders.onnx_backend import (
    NotExportable,
    OnnxEmbedder,
    check_export,
    check_exportable,
    export_file,
    export_onnx,
)
from recommender.embedders.torch_backend import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

QUERY_BACKENDS = ("auto", "torch", "onnx")
MIN_COSINE = 0.999
"""An exported model is used only if every sample text's vector is this close to torch's."""
SAMPLE_TEXTS = (
    "harbour bridge cost",
    "Irena Kalvos",
    "who pays for the new crossing over the harbour",
    "ceasefire talks resume in the mountain region after a week of shelling",
    "Präsident trifft Minister in Brüssel",
    "élections municipales à Marseille : les résultats",
    "東京で地震",
    "Переговоры о перемирии",
    " ".join(["The council's engineers said the steel for the crossing cost twice the estimate, and the contract"
              " with the builder was signed before the survey of the harbour floor was finished."] * 12),
)
"""The load-time check: short queries, non-English ones and one passage past the 256-token limit."""
SPEED_QUERIES = SAMPLE_TEXTS[:4]


def median_seconds(embedders: Sequence[Embedder], texts: Sequence[str] = SPEED_QUERIES,
                   rounds: int = 3) -> list[float]:
    """Each embedder's median time for one single-text call, after a warm-up
    round. The calls take turns, so a neighbour's load slows all of them alike."""
    times: list[list[float]] = [[] for _ in embedders]
    for round_ in range(rounds + 1):
        for text in texts:
            for embedder, taken in zip(embedders, times):
                started = time.perf_counter()
                embedder.embed([text])
                if round_:
                    taken.append(time.perf_counter() - started)
    return [float(np.median(taken)) for taken in times]


def open_query_model(spec: EmbedderSpec, reference: SentenceTransformerEmbedder, *,
                     export: bool = True) -> OnnxEmbedder:
    """The checked ONNX embedder of the spec's model, exported first if need be
    (``export``). Raises NotExportable, or any error of the export, the load
    or a check that fails (``ExportRefused``)."""
    check_exportable(reference.model)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise NotExportable("onnxruntime is not installed (pip install onnxruntime)") from None
    target = export_file(spec)
    if not target.exists():
        if not export:
            raise FileNotFoundError(f"no exported query model at {target}")
        export_onnx(reference.model, target)
    embedder = OnnxEmbedder(target, resolve_model_path(spec.model), reference.model_id)
    min_cosine = check_export(embedder, SAMPLE_TEXTS, MIN_COSINE, lambda: reference)
    log.info("query model %s checked against torch: min cosine %.6f", target, min_cosine)
    return embedder


def torch_reference(embedder: Embedder) -> Embedder:
    """The torch model behind an embedder: itself, or an exported backend's ``torch()``."""
    torch_model = getattr(embedder, "torch", None)
    return torch_model() if callable(torch_model) else embedder


def load_query_embedder(spec: EmbedderSpec, query_backend: str, load_reference: Callable[[], Embedder]) -> Embedder:
    """The embedder for search queries: the ONNX model where ``query_backend``
    allows it and it passes the check against torch (and, for "auto", is the
    faster of the two here); the reference (torch) embedder otherwise."""
    reference = torch_reference(load_reference())
    if query_backend == "torch":
        return reference
    complain = log.warning if query_backend == "onnx" else log.info
    if not isinstance(reference, SentenceTransformerEmbedder):
        complain("search queries embed on torch: the embedder is not a sentence-transformers model")
        return reference
    try:
        embedder = open_query_model(spec, reference)
    except NotExportable as exc:
        complain("search queries embed on torch: %s", exc)
        return reference
    except Exception as exc:  # a corrupt file, a failed export, vectors that differ: torch still works
        log.warning("the ONNX query model was refused, search queries embed on torch: %s: %s",
                    type(exc).__name__, exc)
        return reference
    if query_backend == "auto":
        onnx_seconds, torch_seconds = median_seconds([embedder, reference])
        log.info("one query: %.2f ms on onnxruntime, %.2f ms on torch", onnx_seconds * 1e3, torch_seconds * 1e3)
        if onnx_seconds >= torch_seconds:
            log.info("search queries embed on torch: it is as fast here")
            return reference
    log.info("search queries embed on onnxruntime (%s)", embedder.model_file)
    return embedder


class QueryEmbedder:
    """The embedder search queries use (``load_query_embedder``'s choice),
    decided on first use. A server's start prepares it in the background
    (``prepare(background=True)``): with "auto" the ONNX model is an
    optimization that must not delay the start, so queries embed on the
    reference (torch) at once while a thread exports (on a first start),
    checks and times the ONNX model, and they move to it once it passes and
    is the faster here. Everywhere else (a command, the evaluation) the first
    query waits for the choice, so results do not depend on timing."""

    def __init__(self, spec: EmbedderSpec, query_backend: str, load_reference: Callable[[], Embedder]):
        self.spec = spec
        self.query_backend = query_backend
        self.load_reference = load_reference
        self._current: Embedder | None = None
        self._lock = threading.Lock()
        self.preparing: threading.Thread | None = None
        """The background preparation, once started (joined by ``Engine.close`` and tests)."""

    def prepare(self, *, background: bool = False) -> Embedder:
        """The embedder queries use now; the first call decides (``background``: see the class)."""
        with self._lock:
            if self._current is not None:
                return self._current
            if not background or self.query_backend != "auto":
                self._current = load_query_embedder(self.spec, self.query_backend, self.load_reference)
                return self._current
            self._current = torch_reference(self.load_reference())
            self.preparing = threading.Thread(target=self._prepare_onnx, name="query-model", daemon=True)
            self.preparing.start()
            return self._current

    def _prepare_onnx(self) -> None:
        try:
            chosen = load_query_embedder(self.spec, "auto", self.load_reference)
        except Exception:  # the reference keeps answering
            log.exception("the ONNX query model could not be prepared; search queries embed on torch")
            return
        self._current = chosen

    get = prepare

    @property
    def model_id(self) -> str:
        return self.prepare().model_id

    @property
    def dimension(self) -> int:
        return self.prepare().dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        return self.prepare().embed(texts, progress=progress)
