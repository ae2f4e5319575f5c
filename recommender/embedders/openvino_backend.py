"""Articles on OpenVINO (the ``openvino`` extra): the ONNX export converted
by OpenVINO, in float32 or bfloat16, or in int8 after **static**
quantization by NNCF, calibrated on article passages (dynamic quantization
measured cosines of 0.80-0.93 here). Exports live under
``<data_dir>/models/openvino/<key>`` and ``openvino-int8/<key>``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recommender import directory
from recommender.embedders.base import Choice, EmbedderSpec
from recommender.embedders.machine import has_native_bf16, library_versions
from recommender.embedders.onnx_backend import META_FILE, ExportedModel, export_file, export_onnx
from recommender.passages import chunk_article

log = logging.getLogger(__name__)

OV_MODEL = "model.xml"
CALIBRATION_BATCH = 16
CALIBRATION_VERSION = 1
"""Raised when the calibration passages or the NNCF settings change: int8 exports are made again."""
SAMPLE_ARTICLES = Path(__file__).resolve().parents[1] / "data" / "sample_articles.jsonl"


def export_path(spec: EmbedderSpec, choice: Choice) -> Path:
    """Where the OpenVINO model for ``choice`` lives."""
    onnx_file = export_file(spec)
    folder = "openvino-int8" if choice.precision == "int8" else "openvino"
    key = json.dumps({"onnx": onnx_file.parent.name, "versions": library_versions(), "calibration": CALIBRATION_VERSION},
                     sort_keys=True)
    return spec.models_dir / folder / hashlib.sha256(key.encode()).hexdigest()[:16] / OV_MODEL


def calibration_passages(spec: EmbedderSpec) -> tuple[list[str], list[str]]:
    """Article passages, cut as the reindex cuts them, from the packaged
    sample articles (48 articles in 11 stories, 100 passages): the even ones
    calibrate int8, the odd ones check every backend against torch float32."""
    passages: list[str] = []
    with SAMPLE_ARTICLES.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                passages += chunk_article(row["title"], row["body"], spec.chunk_words, spec.max_chunks)
    return passages[0::2], passages[1::2]


def export_openvino(spec: EmbedderSpec, choice: Choice, reference: Any) -> Path:
    """Make the OpenVINO model ``choice`` runs (kept if it exists), from the
    ONNX export (made first if need be, from ``reference``, the loaded torch
    embedder); int8 by NNCF's static quantization, calibrated on article passages."""
    onnx_file = export_file(spec)
    if not onnx_file.exists():
        export_onnx(reference.model, onnx_file)
    import openvino as ov

    target = export_path(spec, choice)
    with directory.lock(target.parent / directory.EXPORT_LOCK):
        if target.exists():
            return target
        started = time.perf_counter()
        model = ov.convert_model(str(onnx_file))
        calibration = 0
        if choice.precision == "int8":
            texts = calibration_passages(spec)[0]
            model = _quantize(model, texts, reference)
            calibration = len(texts)
        meta = json.loads((onnx_file.parent / META_FILE).read_text(encoding="utf-8"))
        meta.update(backend=choice.backend, precision=choice.precision, calibration_passages=calibration,
                    versions=library_versions())
        directory.write_text(target.with_suffix(".json"), json.dumps(meta, indent=2))
        with directory.temporary_folder(target.parent) as staging:
            ov.save_model(model, str(staging / OV_MODEL), compress_to_fp16=False)
            # The weights first, then the graph that names them: a graph in place always has its weights.
            directory.replace((staging / OV_MODEL).with_suffix(".bin"), target.with_suffix(".bin"))
            directory.replace(staging / OV_MODEL, target)
        log.info("exported the %s model to %s in %.1f s", choice.name, target, time.perf_counter() - started)
    return target


def _quantize(model: Any, texts: Sequence[str], reference: Any) -> Any:
    """NNCF's static int8 quantization (transformer preset), calibrated on ``texts``.
    NNCF draws progress bars and logs on stdout and stderr: they go to this
    module's log (debug), not to a command's output."""
    import nncf

    tokenizer = reference.model.tokenizer
    max_length = int(reference.model.max_seq_length)
    names = [i.get_any_name() for i in model.inputs]

    def feed(start: int) -> dict[str, np.ndarray]:
        encoded = tokenizer(list(texts[start:start + CALIBRATION_BATCH]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="np")
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in names}

    batches = [feed(start) for start in range(0, len(texts), CALIBRATION_BATCH)]
    nncf.set_log_level(logging.ERROR)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        quantized = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(batches))
    log.debug("NNCF: %s", captured.getvalue())
    return quantized


class OpenVinoEmbedder(ExportedModel):
    """An exported model on OpenVINO's CPU plugin. ``precision`` sets the
    inference hint: bfloat16 or float32 for the operations int8 quantization
    left in floating point. It runs in OpenVINO's throughput mode: batches go
    to several streams at once (two on two cores), which measured 1.6-1.7x
    the one-stream latency mode here for a model this small."""

    def __init__(self, model_file: Path, model_path: str, model_id: str, *, precision: str, threads: int,
                 batch_size: int = 32):
        self.hint = "bf16" if precision == "bfloat16" or (precision == "int8" and has_native_bf16()) else "f32"
        super().__init__(model_file, model_path, model_id, threads=threads, batch_size=batch_size,
                         meta_file=model_file.with_suffix(".json"))

    def open(self, model_file: Path, threads: int) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(model_file), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "THROUGHPUT",
        })
        self._queue = ov.AsyncInferQueue(self.compiled)
        self._queue_lock = threading.Lock()

    def run_batches(self, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Run the batches on the streams at once; results in the batches' order."""
        results: list[np.ndarray | None] = [None] * len(feeds)

        def done(request: Any, number: int) -> None:
            results[number] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        with self._queue_lock:  # one caller's batches at a time
            self._queue.set_callback(done)
            for number, feed in enumerate(feeds):
                self._queue.start_async(feed, number)
            self._queue.wait_all()
        if any(r is None for r in results):
            raise RuntimeError("OpenVINO returned no output for a batch")
        return [r for r in results if r is not None]
