"""What runs the model for articles: torch, onnxruntime or OpenVINO.

Embedding is most of a reindex job. The same model, exported offline from
the loaded sentence-transformers model (never downloaded), can run on
onnxruntime or OpenVINO, and on OpenVINO in int8 after **static**
quantization (NNCF, calibrated on article passages; dynamic quantization
measured cosines of 0.80-0.93 here). Which one is fastest depends on the CPU
(AMX, AVX512-BF16, VNNI), so ``backend = "auto"`` measures each installed
candidate once on this machine against torch float32 and takes the fastest
whose vectors keep ``MIN_COSINE`` on every passage of a calibration sample.
The measurement is recorded in ``<data_dir>/models/backend.json`` and reused
while the model, the CPU and the libraries are the same; the embedding cache
key names the backend, so its vectors are never mixed with another's.

Exports live under ``<data_dir>/models/`` (``onnx/<key>`` is shared with the
search-query model, ``openvino/<key>`` and ``openvino-int8/<key>``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recommender.config import Settings
from recommender.embed import (
    Embedder,
    SentenceTransformerEmbedder,
    cpu_has_native_bf16,
    model_id_for,
    resolve_model_path,
    resolve_precision,
)
from recommender.errors import ConfigError
from recommender.query_embed import (
    META_FILE,
    OnnxQueryEmbedder,
    _export_lock,
    _write_atomically,
    export_file,
    export_query_model,
    library_versions,
)

log = logging.getLogger(__name__)

MIN_COSINE = 0.995
"""A backend is used only if every calibration passage's vector is this close to torch float32's."""
RECORD_FILE = "backend.json"
RECORD_FORMAT = 1
OV_MODEL = "model.xml"
CALIBRATION_BATCH = 16
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
"""The flags that decide which kernels a runtime takes (printed with every measurement)."""
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
"""The package each exported backend needs (``int8`` on OpenVINO needs ``nncf`` too)."""


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


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name and the flags in ``CPU_FLAGS`` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": len(os.sched_getaffinity(0))}


def candidates(settings: Settings) -> list[Choice]:
    """What ``backend`` and ``precision`` allow, among what is installed.
    Raises ConfigError for a pair that cannot run (torch int8, onnx bfloat16)
    or an explicit backend that is not installed."""
    precision, native = settings.precision, resolve_precision("auto", settings.device)
    wanted = ["torch", "onnx", "openvino"] if settings.backend == "auto" else [settings.backend]
    found: list[Choice] = []
    for backend in wanted:
        options: list[str]
        if backend == "torch":
            options = [native] if precision == "auto" else [precision] if precision != "int8" else []
        elif backend == "onnx":
            options = ["float32"] if precision in ("auto", "float32") else []
        else:
            options = ["int8", native] if precision == "auto" else [precision]
            if "int8" in options and not installed("nncf"):
                if settings.backend == "openvino" and precision == "int8":
                    raise ConfigError("precision int8 on openvino needs NNCF: pip install 'recommender[openvino]'")
                options.remove("int8")
        if backend != "torch" and not installed(RUNTIMES[backend]):
            if settings.backend == backend:
                raise ConfigError(f"backend {backend!r} needs {RUNTIMES[backend]}: pip install 'recommender[{backend}]'")
            options = []
        found += [Choice(backend, p) for p in dict.fromkeys(options)]
    if not found:
        raise ConfigError(f"backend {settings.backend!r} cannot run in precision {precision!r}: torch runs float32 "
                          "or bfloat16, onnx float32, openvino float32, bfloat16 or int8")
    return found


# -- exports -----------------------------------------------------------------


@functools.cache
def _versions() -> dict[str, str | None]:
    out = library_versions()
    for name in ("openvino", "nncf"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def export_path(settings: Settings, choice: Choice) -> Path:
    """Where the exported model for ``choice`` lives (the ONNX float32 one is the query model's)."""
    onnx_file = export_file(settings)
    if choice.backend == "onnx":
        return onnx_file
    folder = "openvino-int8" if choice.precision == "int8" else "openvino"
    key = json.dumps({"onnx": onnx_file.parent.name, "versions": _versions(), "calibration": CALIBRATION_VERSION},
                     sort_keys=True)
    return settings.data_dir / "models" / folder / hashlib.sha256(key.encode()).hexdigest()[:16] / OV_MODEL


CALIBRATION_VERSION = 1
"""Raised when the calibration passages or the NNCF settings change: int8 exports are made again."""


def calibration_passages(settings: Settings) -> tuple[list[str], list[str]]:
    """Article passages, cut as the reindex cuts them, from the packaged
    sample articles (48 articles in 11 stories, 100 passages): the even ones
    calibrate int8, the odd ones check every backend against torch float32."""
    from recommender.text import chunk_article

    sample = Path(__file__).parent / "data" / "sample_articles.jsonl"
    passages: list[str] = []
    with sample.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                passages += chunk_article(row["title"], row["body"], settings.chunk_words, settings.max_chunks)
    return passages[0::2], passages[1::2]


def export(settings: Settings, choice: Choice, reference: SentenceTransformerEmbedder) -> Path:
    """Make the exported model ``choice`` runs (kept if it exists): ONNX by
    tracing the loaded model; OpenVINO by converting that ONNX file; int8 by
    NNCF's static quantization of it, calibrated on article passages."""
    onnx_file = export_file(settings)
    if not onnx_file.exists():
        export_query_model(reference.model, onnx_file)
    if choice.backend == "onnx":
        return onnx_file
    import openvino as ov

    target = export_path(settings, choice)
    with _export_lock(target.parent):
        if target.exists():
            return target
        started = time.perf_counter()
        model = ov.convert_model(str(onnx_file))
        calibration = 0
        if choice.precision == "int8":
            import nncf

            texts = calibration_passages(settings)[0]
            tokenizer = reference.model.tokenizer
            max_length = int(reference.model.max_seq_length)
            names = [i.get_any_name() for i in model.inputs]

            def feed(start: int) -> dict[str, np.ndarray]:
                encoded = tokenizer(texts[start:start + CALIBRATION_BATCH], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="np")
                return {name: np.asarray(encoded[name], dtype=np.int64) for name in names}

            batches = [feed(start) for start in range(0, len(texts), CALIBRATION_BATCH)]
            calibration = len(texts)
            # NNCF draws progress bars on stdout and logs there: a command's --json output must stay JSON.
            nncf.set_log_level(logging.WARNING)
            with contextlib.redirect_stdout(sys.stderr):
                model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(batches))
        meta = json.loads((onnx_file.parent / META_FILE).read_text(encoding="utf-8"))
        meta.update(backend=choice.backend, precision=choice.precision, calibration_passages=calibration,
                    versions=_versions())
        _write_atomically(target.with_suffix(".json"),
                          lambda path: path.write_text(json.dumps(meta, indent=2), encoding="utf-8"))

        def save(path: Path) -> None:
            ov.save_model(model, str(path.with_suffix(".xml")), compress_to_fp16=False)
            os.replace(path.with_suffix(".bin"), target.with_suffix(".bin"))
            os.replace(path.with_suffix(".xml"), path)

        _write_atomically(target, save)  # the weights first, then the graph that names them
        log.info("exported the %s model to %s in %.1f s", choice.name, target, time.perf_counter() - started)
    return target


class OpenVinoEmbedder(OnnxQueryEmbedder):
    """An exported model on OpenVINO's CPU plugin, tokenized as on onnxruntime.
    ``precision`` sets the inference hint: bfloat16 or float32 for the
    operations int8 quantization left in floating point. It runs in
    OpenVINO's throughput mode: batches go to several streams at once (two on
    two cores), which measured 1.6-1.7x the one-stream latency mode here for
    a model this small."""

    def __init__(self, model_file: Path, model_path: str, model_id: str, *, precision: str, threads: int,
                 batch_size: int = 32):
        self.hint = "bf16" if precision == "bfloat16" or (precision == "int8" and cpu_has_native_bf16()) else "f32"
        super().__init__(model_file, model_path, model_id, threads=threads, batch_size=batch_size,
                         meta_file=model_file.with_suffix(".json"))

    def _open(self, model_file: Path, threads: int) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(model_file), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "THROUGHPUT",
        })
        self._queue = ov.AsyncInferQueue(self.compiled)
        self._queue_lock = threading.Lock()

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.embed_batches([feed])[0]

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # little padding per batch
        rows = [order[start:start + self.batch_size] for start in range(0, len(texts), self.batch_size)]
        feeds = []
        for batch in rows:
            chosen = [texts[i].lower() if self.do_lower_case else texts[i] for i in batch]
            with self._tokenizer_lock:
                encoded = self.tokenizer(chosen, padding=True, truncation=True, max_length=self.max_seq_length,
                                         return_tensors="np")
            feeds.append({name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names})
        for batch, vectors in zip(rows, self.embed_batches(feeds)):
            out[batch] = vectors
        return out

    def embed_batches(self, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
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


class ExportedEmbedder:
    """Articles on an exported backend. ``model`` and ``torch()`` give the
    torch model where one is needed (the search-query path checks its own
    export against it), loaded on first use only."""

    def __init__(self, runner: OnnxQueryEmbedder, choice: Choice, settings: Settings,
                 reference: SentenceTransformerEmbedder | None = None):
        self.runner = runner
        self.choice = choice
        self.settings = settings
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
                self._reference = _load_torch(self.settings, "float32")
            return self._reference


def _load_torch(settings: Settings, precision: str) -> SentenceTransformerEmbedder:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SentenceTransformerEmbedder.load(settings.model, device=settings.device, batch_size=settings.batch_size,
                                            precision=precision)


def _threads() -> int:
    """torch's thread count where torch is loaded already; else the cores this
    process may use (an exported backend need not import torch at all)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else len(os.sched_getaffinity(0))


def open_backend(settings: Settings, choice: Choice, reference: SentenceTransformerEmbedder | None = None) -> Embedder:
    """The embedder for ``choice``, exported first if need be (which loads torch)."""
    if choice.backend == "torch":
        if reference is not None and reference.precision == choice.precision:
            return reference
        return _load_torch(settings, choice.precision)
    target = export_path(settings, choice)
    if not target.exists():
        reference = reference or _load_torch(settings, "float32")
        export(settings, choice, reference)
    model_path = resolve_model_path(settings.model)
    runner: OnnxQueryEmbedder
    if choice.backend == "onnx":
        runner = OnnxQueryEmbedder(target, model_path, model_id_for(settings.model), threads=_threads(),
                                   batch_size=settings.batch_size)
    else:
        runner = OpenVinoEmbedder(target, model_path, model_id_for(settings.model), precision=choice.precision,
                                  threads=_threads(), batch_size=settings.batch_size)
    return ExportedEmbedder(runner, choice, settings, reference)


# -- the choice ---------------------------------------------------------------


def record_file(settings: Settings) -> Path:
    return settings.data_dir / "models" / RECORD_FILE


def _record_key(settings: Settings) -> dict[str, Any]:
    """What a recorded measurement holds for: the model (and its files), the
    settings that pick candidates, the CPU and the libraries."""
    return {
        "format": RECORD_FORMAT, "export": export_file(settings).parent.name, "backend": settings.backend,
        "precision": settings.precision, "device": settings.device, "chunk_words": settings.chunk_words,
        "min_cosine": MIN_COSINE, "cpu": cpu_flags(), "versions": _versions(),
    }


def recorded_choice(settings: Settings) -> Choice | None:
    """The choice recorded for these settings on this machine, if any."""
    try:
        record = json.loads(record_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != json.loads(json.dumps(_record_key(settings))):
        return None
    return Choice.parse(record["choice"])


@dataclass
class Measured:
    choice: str
    seconds: float
    passages_per_second: float
    min_cosine: float
    mean_cosine: float
    passed: bool
    error: str | None = None


def measure(settings: Settings, choices: Sequence[Choice], reference: SentenceTransformerEmbedder,
            rounds: int = 2) -> list[Measured]:
    """Each choice's speed on the check passages (fastest of ``rounds``, the
    choices taking turns) and its cosine to torch float32 there."""
    texts = calibration_passages(settings)[1]
    expected = reference.embed(texts)
    embedders: dict[Choice, Embedder] = {}
    failed: dict[Choice, str] = {}
    for choice in choices:
        try:
            embedders[choice] = open_backend(settings, choice, reference)
            embedders[choice].embed(texts[:8])  # warm-up: kernels set up per shape
        except Exception as exc:  # a backend that cannot export or load here is not a candidate
            log.warning("backend %s cannot run here: %s: %s", choice.name, type(exc).__name__, exc)
            failed[choice] = f"{type(exc).__name__}: {exc}"
    seconds: dict[Choice, float] = {c: float("inf") for c in embedders}
    cosines: dict[Choice, np.ndarray] = {}
    for _ in range(rounds):
        for choice, embedder in embedders.items():
            started = time.perf_counter()
            vectors = embedder.embed(texts)
            seconds[choice] = min(seconds[choice], time.perf_counter() - started)
            cosines[choice] = (vectors * expected).sum(axis=1)
    out = []
    for choice in choices:
        if choice in failed:
            out.append(Measured(choice.name, 0.0, 0.0, 0.0, 0.0, False, failed[choice]))
            continue
        low = float(cosines[choice].min())
        out.append(Measured(choice.name, round(seconds[choice], 4), round(len(texts) / seconds[choice], 2),
                            round(low, 5), round(float(cosines[choice].mean()), 5), bool(low >= MIN_COSINE)))
    return out


def choose(settings: Settings, reference: SentenceTransformerEmbedder | None = None, *,
           force: bool = False) -> tuple[Choice, list[Measured]]:
    """Measure the candidates, record and return the fastest that passes.
    Torch float32 always passes (it is the reference)."""
    reference = reference or _load_torch(settings, "float32")
    choices = candidates(settings)
    log.info("measuring embedding backends once on this machine: %s", ", ".join(c.name for c in choices))
    results = measure(settings, choices, reference)
    passing = [r for r in results if r.passed]
    best = Choice.parse(max(passing, key=lambda r: r.passages_per_second).choice) if passing else TORCH_FLOAT32
    target = _write_record(settings, best, results)
    for r in results:
        log.info("backend %s: %.1f passages/s, min cosine %.5f%s", r.choice, r.passages_per_second, r.min_cosine,
                 "" if r.passed else " (refused)")
    log.info("articles embed on %s (recorded in %s)", best.name, target)
    return best, results


def _write_record(settings: Settings, choice: Choice, results: Sequence[Measured], kept: str | None = None) -> Path:
    record = {"key": _record_key(settings), "choice": choice.name, "measured": [asdict(r) for r in results],
              "passages": len(calibration_passages(settings)[1]), "kept": kept,
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    target = record_file(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, lambda path: path.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    return target


def resolve(settings: Settings, reference: SentenceTransformerEmbedder | None = None) -> Choice:
    """The backend articles embed on with these settings: the only candidate;
    else the recorded measurement; else, where an index is published already,
    the candidate its vectors were made on (an upgrade does not re-embed an
    archive unasked: ``recommender backends --measure`` chooses again); else
    a new measurement (once; it loads torch and makes the exports)."""
    choices = candidates(settings)
    if len(choices) == 1:
        return choices[0]
    found = recorded_choice(settings)
    if found is not None and found in choices + [TORCH_FLOAT32]:
        return found
    with _export_lock(record_file(settings).parent):  # a server's workers start together
        found = recorded_choice(settings)
        if found is not None:
            return found
        published = _published_choice(settings)
        if published is not None and published in choices:
            _write_record(settings, published, [], kept="the published index was embedded on it")
            log.info("articles embed on %s, as the published index was; `recommender backends --measure` "
                     "measures the others", published.name)
            return published
        return choose(settings, reference)[0]


def _published_choice(settings: Settings) -> Choice | None:
    """The backend and precision the live index's vectors were made on, from its embedding key."""
    from recommender.version import read_current_manifest

    try:
        manifest = read_current_manifest(settings.index_root)
    except Exception:  # unreadable: measure
        return None
    key = manifest.embedding_key if manifest is not None else ""
    fields = dict(part.split("=", 1) for part in key.split("|") if "=" in part)
    if "backend" not in fields or "precision" not in fields:
        return None
    return Choice(fields["backend"], fields["precision"])
