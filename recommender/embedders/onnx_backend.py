"""The model exported to ONNX, run on onnxruntime: the search-query path
(one thread, a query is small) and, with ``backend = "onnx"``, articles.

The export traces the loaded sentence-transformers model offline (the
transformer, its pooling and the L2 normalization, in float32) into
``<data_dir>/models/onnx/<key>/model.onnx``, the key naming the model, its
files and the library versions; nothing is downloaded. Texts are tokenized by
the model's own fast tokenizer with sentence-transformers' truncation, so
the vectors match torch's. Every export is checked against torch where it is
loaded (``check_export``: the search-query path's check and the article
path's, one implementation), and refused when it differs."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recommender import directory
from recommender.embedders.base import Embedder, EmbedderSpec, resolve_model_path
from recommender.embedders.machine import library_versions
from recommender.errors import ConfigError

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
"""Raised when the exported graph or its meta.json change: old exports are then not reused."""
OPSET = 17
MODEL_FILE, META_FILE = "model.onnx", "meta.json"
CHECK_FILE = "checked.json"
"""Beside an export: the checks it passed, each keyed by the checksum of its files, the texts and the floor."""
EXPORTABLE_AFTER_TRANSFORMER = {"Pooling", "Dense", "Normalize"}
"""sentence-transformers modules that trace to ONNX as they run in torch."""
EXPORT_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime")
"""Their versions are part of the export key: another exporter or runtime gets its own export."""


class NotExportable(Exception):
    """The model (or this installation) cannot take the ONNX path."""


class ExportRefused(ConfigError):
    """An export whose vectors differ from torch's on the check's texts (NaN
    from a damaged weight, wrong vectors from another): never used."""


def _model_fingerprint(model_path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times of a local model folder's files:
    new weights under the same path get a new export. (A hub name has none;
    the check against torch where the export is used still refuses a stale one.)"""
    root = Path(model_path)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return found


def export_file(spec: EmbedderSpec) -> Path:
    """Where the export of the spec's model lives: ``<models_dir>/onnx/<key>/model.onnx``."""
    model_path = resolve_model_path(spec.model)
    key = json.dumps({
        "format": EXPORT_FORMAT, "opset": OPSET, "model": spec.model_id, "path": model_path,
        "files": _model_fingerprint(model_path), "versions": library_versions(EXPORT_LIBRARIES),
    }, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return spec.models_dir / "onnx" / digest / MODEL_FILE


def check_exportable(st_model: Any) -> None:
    """Raise NotExportable unless the model is a Transformer, then modules that trace as they run."""
    modules = [type(module).__name__ for module in st_model]
    if not modules or modules[0] != "Transformer" or not set(modules[1:]) <= EXPORTABLE_AFTER_TRANSFORMER:
        raise NotExportable(f"modules {modules}: only a Transformer followed by {sorted(EXPORTABLE_AFTER_TRANSFORMER)}")
    tokenizer = getattr(st_model[0], "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise NotExportable("the model has no fast (Rust) tokenizer")


def _dimension(st_model: Any) -> int:
    getter = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    return int(getter())


def export_onnx(st_model: Any, target: Path, *, force: bool = False) -> Path:
    """Trace ``st_model`` (a loaded SentenceTransformer) to a float32 ONNX file:
    the transformer and the model's own pooling, then L2 normalization, so the
    graph returns what ``SentenceTransformerEmbedder.embed`` returns. An
    existing export is kept unless ``force``."""
    check_exportable(st_model)
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
        "dimension": _dimension(st_model), "versions": library_versions(EXPORT_LIBRARIES),
    }
    with directory.lock(target.parent / directory.EXPORT_LOCK):
        if target.exists() and not force:
            return target
        started = time.perf_counter()
        directory.write_text(target.parent / META_FILE, json.dumps(meta, indent=2))
        directory.write_atomically(target, write_model)
        log.info("exported the model to ONNX at %s in %.1f s", target, time.perf_counter() - started)
    return target


class ExportedModel:
    """An exported model, tokenized by the model's own fast tokenizer with
    sentence-transformers' truncation; the runtime runs the batches
    (``run_batches``). Texts are sorted by length first: little padding per batch."""

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
        object ("Already borrowed" when two threads do it at once); the runtime runs unlocked."""
        self.input_names: list[str] = list(meta["inputs"])
        self.open(model_file, threads)
        self.min_cosine: float | None = None
        """Set by ``check_against``."""

    def open(self, model_file: Path, threads: int) -> None:
        raise NotImplementedError

    def run_batches(self, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Each batch's vectors, in the batches' order."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[start:start + self.batch_size] for start in range(0, len(texts), self.batch_size)]
        feeds = []
        for rows in batches:
            chosen = [texts[i].lower() if self.do_lower_case else texts[i] for i in rows]
            with self._tokenizer_lock:
                encoded = self.tokenizer(chosen, padding=True, truncation=True, max_length=self.max_seq_length,
                                         return_tensors="np")
            feeds.append({name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names})
        for rows, vectors in zip(batches, self.run_batches(feeds)):
            out[rows] = vectors
        return out

    def check_against(self, reference: Embedder, texts: Sequence[str]) -> float:
        """The smallest cosine between this model's vectors and the reference's
        over ``texts``, embedded together (padded) and one by one."""
        expected = reference.embed(list(texts))
        together = self.embed(list(texts))
        alone = np.concatenate([self.embed([text]) for text in texts])
        self.min_cosine = float(min((expected * together).sum(axis=1).min(), (expected * alone).sum(axis=1).min()))
        return self.min_cosine


class OnnxEmbedder(ExportedModel):
    """The ONNX export on onnxruntime's CPU provider, ``threads`` intra-op threads."""

    def open(self, model_file: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run_batches(self, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        return [self.session.run(None, feed)[0] for feed in feeds]


def export_checksum(model_file: Path) -> str:
    """sha256 over an export's files: the graph and, beside it, its weights
    (OpenVINO's ``.bin``). About 0.1 s for MiniLM's 90 MB."""
    digest = hashlib.sha256()
    for path in (model_file, model_file.with_suffix(".bin")):
        if path.exists():
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()


def check_export(model: ExportedModel, texts: Sequence[str], floor: float, reference: Callable[[], Embedder], *,
                 label: str = "onnx") -> float:
    """The check every export passes where it is loaded, for queries and for
    articles alike: the smallest cosine between its vectors and torch's
    (``reference()``) over ``texts``, embedded together and one by one
    (``check_against``), at least ``floor``; else ExportRefused (NaN fails too).
    A pass is kept beside the export (``CHECK_FILE``), keyed by the checksum
    of its files, the texts, the floor and the runtime's arithmetic: a later
    load of the same bytes costs the checksum, not torch."""
    key = hashlib.sha256(json.dumps({
        "format": EXPORT_FORMAT, "files": export_checksum(model.model_file), "texts": list(texts), "floor": floor,
        "runner": type(model).__name__, "hint": getattr(model, "hint", ""),
    }, sort_keys=True).encode()).hexdigest()[:16]
    verdicts_file = model.model_file.parent / CHECK_FILE
    verdicts = _read_verdicts(verdicts_file)
    kept = verdicts.get(key)
    if isinstance(kept, dict) and isinstance(kept.get("min_cosine"), float) and kept["min_cosine"] >= floor:
        model.min_cosine = kept["min_cosine"]
        return model.min_cosine
    min_cosine = model.check_against(reference(), texts)
    if not min_cosine >= floor:  # NaN (a damaged weight) fails too
        raise ExportRefused(f"the {label} export at {model.model_file} gives vectors that differ from torch "
                            f"(min cosine {min_cosine:.6f}, at least {floor} needed)")
    verdicts[key] = {"min_cosine": min_cosine, "texts": len(texts), "floor": floor}
    try:
        directory.write_text(verdicts_file, json.dumps(verdicts, indent=2))
    except OSError as exc:  # a read-only models folder: the check runs again next time
        log.info("the check of %s is not kept: %s", model.model_file, exc)
    return min_cosine


def _read_verdicts(path: Path) -> dict[str, Any]:
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}
