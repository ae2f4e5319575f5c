"""Search queries embedded on onnxruntime.

For one short text torch spends more time in per-call overhead than in
arithmetic; the same model exported to ONNX (float32) and run on one
onnxruntime thread embeds a query several times faster (docs/performance.md).
Only queries take this path: bulk embedding (reindex) and drafts stay on torch,
which is also the reference each exported model is checked against at load.

The exported model is derived data: it is written under the data folder at the
first serve (or by ``recommender export-query-model``), keyed by the model and
the versions of the libraries that made and run it, and never downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recommender.config import Settings
from recommender.embed import Embedder, SentenceTransformerEmbedder, model_id_for, resolve_model_path

log = logging.getLogger(__name__)

QUERY_BACKENDS = ("auto", "torch", "onnx")
EXPORT_FORMAT = 1
"""Raised when the exported graph or its meta.json change: old exports are then not reused."""
OPSET = 17
MIN_COSINE = 0.999
"""An exported model is used only if every sample text's vector is this close to torch's."""
MODEL_FILE, META_FILE = "model.onnx", "meta.json"
EXPORTABLE_AFTER_TRANSFORMER = {"Pooling", "Dense", "Normalize"}
"""sentence-transformers modules that trace to ONNX as they run in torch."""
LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime")
"""Their versions are part of the export key: another exporter or runtime gets its own export."""

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


class NotExportable(Exception):
    """The model (or this installation) cannot take the ONNX query path."""


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _model_fingerprint(model_path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times of a local model folder's files:
    new weights under the same path get a new export. (A hub name has none;
    the load-time check against torch still refuses a stale export.)"""
    root = Path(model_path)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return found


def export_file(settings: Settings) -> Path:
    """Where the export for these settings lives: ``<data_dir>/models/onnx/<key>/model.onnx``."""
    model_path = resolve_model_path(settings.model)
    key = json.dumps({
        "format": EXPORT_FORMAT, "opset": OPSET, "model": model_id_for(settings.model), "path": model_path,
        "files": _model_fingerprint(model_path), "versions": library_versions(),
    }, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return settings.data_dir / "models" / "onnx" / digest / MODEL_FILE


def _check_exportable(st_model: Any) -> None:
    modules = [type(module).__name__ for module in st_model]
    if not modules or modules[0] != "Transformer" or not set(modules[1:]) <= EXPORTABLE_AFTER_TRANSFORMER:
        raise NotExportable(f"modules {modules}: only a Transformer followed by {sorted(EXPORTABLE_AFTER_TRANSFORMER)}")
    tokenizer = getattr(st_model[0], "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise NotExportable("the model has no fast (Rust) tokenizer")


def _dimension(st_model: Any) -> int:
    getter = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    return int(getter())


@contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """One export at a time: the server's workers start together."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "export.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` into a temporary file beside ``target``, then rename it over:
    a reader finds the old file, the new one, or none, never a partial one."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def export_query_model(st_model: Any, target: Path, *, force: bool = False) -> Path:
    """Trace ``st_model`` (a loaded SentenceTransformer) to a float32 ONNX file:
    the transformer and the model's own pooling, then L2 normalization, so the
    graph returns what ``SentenceTransformerEmbedder.embed`` returns. An
    existing export is kept unless ``force``."""
    _check_exportable(st_model)
    import torch

    tokenizer = st_model[0].tokenizer
    max_length = int(st_model.max_seq_length)
    # Two texts of different lengths: the traced graph applies the padding mask
    # (a batch without padding could let transformers skip the mask in the trace).
    example = tokenizer(["a query", "a longer example text for the trace"], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
    names = list(example.keys())
    device = next(st_model.parameters()).device
    inputs = tuple(example[name].to(device) for name in names)

    class QueryGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = st_model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features: dict[str, Any] = dict(zip(names, tensors))
            for module in self.model:
                features = module(features)
            return torch.nn.functional.normalize(features["sentence_embedding"].float(), p=2.0, dim=1)

    def write_model(path: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of the dynamo one
            warnings.simplefilter("ignore")
            torch.onnx.export(
                QueryGraph(), inputs, str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=names, output_names=["embedding"],
                dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in names}, "embedding": {0: "batch"}},
            )

    meta = {
        "format": EXPORT_FORMAT, "inputs": names, "max_seq_length": max_length,
        "do_lower_case": bool(getattr(st_model[0], "do_lower_case", False)),
        "dimension": _dimension(st_model), "versions": library_versions(),
    }
    with _export_lock(target.parent):
        if target.exists() and not force:
            return target
        started = time.perf_counter()
        _write_atomically(target.parent / META_FILE,
                          lambda path: path.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
        _write_atomically(target, write_model)
        log.info("exported the query model to %s in %.1f s", target, time.perf_counter() - started)
    return target


class OnnxQueryEmbedder:
    """An exported model on onnxruntime, tokenized by the model's own fast
    tokenizer with sentence-transformers' truncation. One intra-op thread:
    a query is too small to share out, and the workers share the cores."""

    def __init__(self, model_file: Path, model_path: str, model_id: str, *, threads: int = 1, batch_size: int = 32,
                 meta_file: Path | None = None):
        from transformers import AutoTokenizer

        meta_file = meta_file or model_file.parent / META_FILE
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{meta_file} is of another export format")
        self.model_file = model_file
        self.model_id = model_id
        self.dimension = int(meta["dimension"])
        self.max_seq_length = int(meta["max_seq_length"])
        self.do_lower_case = bool(meta["do_lower_case"])
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._tokenizer_lock = threading.Lock()
        """A fast tokenizer call sets its padding and truncation on the shared Rust
        object ("Already borrowed" when two threads do it at once); the session runs unlocked."""
        self.input_names: list[str] = list(meta["inputs"])
        self._open(model_file, threads)
        self.min_cosine: float | None = None
        """Set by ``check_against``."""

    def _open(self, model_file: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # little padding per batch
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = [texts[i].lower() if self.do_lower_case else texts[i] for i in rows]
            with self._tokenizer_lock:
                encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length,
                                         return_tensors="np")
            feed = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names}
            out[rows] = self._run(feed)
        return out

    def check_against(self, reference: Embedder, texts: Sequence[str] = SAMPLE_TEXTS) -> float:
        """The smallest cosine between this model's vectors and the reference's
        over ``texts``, embedded together (padded) and one by one."""
        expected = reference.embed(list(texts))
        together = self.embed(list(texts))
        alone = np.concatenate([self.embed([text]) for text in texts])
        self.min_cosine = float(min((expected * together).sum(axis=1).min(), (expected * alone).sum(axis=1).min()))
        return self.min_cosine


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


def open_query_model(settings: Settings, reference: SentenceTransformerEmbedder, *,
                     export: bool = True) -> OnnxQueryEmbedder:
    """The checked ONNX embedder for these settings, exported first if need be
    (``export``). Raises NotExportable, or any error of the export, the load
    or a check that fails (ValueError)."""
    _check_exportable(reference.model)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise NotExportable("onnxruntime is not installed (pip install onnxruntime)") from None
    target = export_file(settings)
    if not target.exists():
        if not export:
            raise FileNotFoundError(f"no exported query model at {target}")
        export_query_model(reference.model, target)
    embedder = OnnxQueryEmbedder(target, resolve_model_path(settings.model), reference.model_id)
    min_cosine = embedder.check_against(reference)
    if not min_cosine >= MIN_COSINE:  # NaN (a damaged weight) fails too
        raise ValueError(f"its vectors differ from torch's (min cosine {min_cosine:.6f} < {MIN_COSINE})")
    log.info("query model %s checked against torch: min cosine %.6f", target, min_cosine)
    return embedder


def load_query_embedder(settings: Settings, load_reference: Callable[[], Embedder]) -> Embedder:
    """The embedder for search queries: the ONNX model where ``query_backend``
    allows it and it passes the check against torch (and, for "auto", is the
    faster of the two here); the reference (torch) embedder otherwise."""
    reference = load_reference()
    torch_model = getattr(reference, "torch", None)  # articles on an exported backend: queries check against torch
    if callable(torch_model):
        reference = torch_model()
    backend = settings.query_backend
    if backend == "torch":
        return reference
    complain = log.warning if backend == "onnx" else log.info
    if not isinstance(reference, SentenceTransformerEmbedder):
        complain("search queries embed on torch: the embedder is not a sentence-transformers model")
        return reference
    try:
        embedder = open_query_model(settings, reference)
    except NotExportable as exc:
        complain("search queries embed on torch: %s", exc)
        return reference
    except Exception as exc:  # a corrupt file, a failed export, vectors that differ: torch still works
        log.warning("the ONNX query model was refused, search queries embed on torch: %s: %s",
                    type(exc).__name__, exc)
        return reference
    if backend == "auto":
        onnx_seconds, torch_seconds = median_seconds([embedder, reference])
        log.info("one query: %.2f ms on onnxruntime, %.2f ms on torch", onnx_seconds * 1e3, torch_seconds * 1e3)
        if onnx_seconds >= torch_seconds:
            log.info("search queries embed on torch: it is as fast here")
            return reference
    log.info("search queries embed on onnxruntime (%s)", embedder.model_file)
    return embedder
