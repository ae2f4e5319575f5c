"""Which backend embeds articles: torch, onnxruntime or OpenVINO.

Embedding is most of a reindex job, and which runtime is fastest depends on
the CPU (AMX, AVX512-BF16, VNNI). ``resolve`` answers at once, without
loading anything: the only candidate the settings allow; else, where an
index is published, the backend its vectors were made on (an index keeps
its backend: nothing is embedded again unasked); else the choice measured on
this machine (``recommender backends --measure``), kept in
``$XDG_CACHE_HOME/recommender/backends.json`` per model, settings, CPU and
library versions; else torch in the precision the CPU runs natively. No job
waits for a measurement: only ``measure`` measures, and only that command
calls it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from recommender import directory
from recommender.clock import utc_stamp
from recommender.config import Settings
from recommender.embedders.base import TORCH_FLOAT32, Choice, Embedder, EmbedderSpec
from recommender.embedders.load import load_embedder
from recommender.embedders.machine import cache_dir, cpu_info, installed, library_versions
from recommender.embedders.onnx_backend import export_file
from recommender.embedders.openvino_backend import calibration_passages
from recommender.embedders.torch_backend import SentenceTransformerEmbedder, resolve_precision
from recommender.errors import ConfigError
from recommender.version import read_current_manifest

log = logging.getLogger(__name__)

MIN_COSINE = 0.995
"""A backend is chosen only if every check passage's vector is this close to
torch float32's (each load checks its export too: ``load.MIN_COSINE``)."""
RECORDS_FILE = "backends.json"
RECORD_FORMAT = 2
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
"""The package each exported backend needs (``int8`` on OpenVINO needs ``nncf`` too)."""


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


def resolve(settings: Settings) -> EmbedderSpec:
    """The spec articles embed with under these settings, decided at once (see the module's docstring)."""
    return EmbedderSpec.of(settings, resolve_choice(settings)[0])


def resolve_choice(settings: Settings) -> tuple[Choice, str]:
    """The choice, and why it is the one."""
    choices = candidates(settings)
    if len(choices) == 1:
        return choices[0], "the only candidate of these settings"
    published = published_choice(settings)
    if published is not None and published in choices:
        return published, "the published index was embedded on it"
    measured = recorded_choice(settings)
    if measured is not None and measured in choices + [TORCH_FLOAT32]:
        return measured, f"the fastest measured on this machine ({records_file()})"
    default = next((c for c in choices if c.backend == "torch"), choices[0])
    return default, "the default until `recommender backends --measure` measures the others"


def published_choice(settings: Settings) -> Choice | None:
    """The backend and precision the live index's vectors were made on, from its embedding key."""
    try:
        manifest = read_current_manifest(settings.index_root)
    except (OSError, ValueError):  # unreadable: not a choice
        return None
    key = manifest.embedding_key if manifest is not None else ""
    fields = dict(part.split("=", 1) for part in key.split("|") if "=" in part)
    if "backend" not in fields or "precision" not in fields:
        return None
    return Choice(fields["backend"], fields["precision"])


# -- measurements, kept per machine ---------------------------------------------


def records_file() -> Path:
    return cache_dir() / RECORDS_FILE


def record_key(settings: Settings) -> dict[str, Any]:
    """What a measurement holds for: the model (and its files), the settings
    that pick candidates, the CPU and the libraries."""
    spec = EmbedderSpec.of(settings, TORCH_FLOAT32)
    return {
        "format": RECORD_FORMAT, "export": export_file(spec).parent.name, "backend": settings.backend,
        "precision": settings.precision, "device": settings.device, "chunk_words": settings.chunk_words,
        "max_chunks": settings.max_chunks, "min_cosine": MIN_COSINE, "cpu": cpu_info(), "versions": library_versions(),
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_records() -> dict[str, Any]:
    try:
        records = json.loads(records_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def measurement(settings: Settings) -> dict[str, Any] | None:
    """The measurement kept for these settings on this machine, if any."""
    record = _read_records().get(_digest(record_key(settings)))
    return record if isinstance(record, dict) and "choice" in record else None


def recorded_choice(settings: Settings) -> Choice | None:
    record = measurement(settings)
    return None if record is None else Choice.parse(record["choice"])


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
    choices taking turns) and its cosine to torch float32 there. Exports
    what it measures (``<data_dir>/models``)."""
    check = calibration_passages(EmbedderSpec.of(settings, TORCH_FLOAT32))[1]
    expected = reference.embed(check)
    embedders: dict[Choice, Embedder] = {}
    failed: dict[Choice, str] = {}
    for choice in choices:
        try:
            # explicit: an export that fails its check at load fails here, not measured as torch
            embedders[choice] = load_embedder(replace(EmbedderSpec.of(settings, choice), explicit=True), reference)
            embedders[choice].embed(check[:8])  # warm-up: kernels set up per shape
        except Exception as exc:  # a backend that cannot export or load here is not a candidate
            log.warning("backend %s cannot run here: %s: %s", choice.name, type(exc).__name__, exc)
            failed[choice] = f"{type(exc).__name__}: {exc}"
    seconds: dict[Choice, float] = {c: float("inf") for c in embedders}
    cosines: dict[Choice, np.ndarray] = {}
    for _ in range(rounds):
        for choice, embedder in embedders.items():
            started = time.perf_counter()
            vectors = embedder.embed(check)
            seconds[choice] = min(seconds[choice], time.perf_counter() - started)
            cosines[choice] = (vectors * expected).sum(axis=1)
    out = []
    for choice in choices:
        if choice in failed:
            out.append(Measured(choice.name, 0.0, 0.0, 0.0, 0.0, False, failed[choice]))
            continue
        low = float(cosines[choice].min())
        out.append(Measured(choice.name, round(seconds[choice], 4), round(len(check) / seconds[choice], 2),
                            round(low, 5), round(float(cosines[choice].mean()), 5), bool(low >= MIN_COSINE)))
    return out


def choose(settings: Settings, reference: SentenceTransformerEmbedder | None = None) -> tuple[Choice, list[Measured]]:
    """Measure the candidates (torch float32 too, the reference, which always
    passes), keep the result for this machine and return the fastest that passes."""
    reference = reference or SentenceTransformerEmbedder.of(EmbedderSpec.of(settings, TORCH_FLOAT32), "float32")
    choices = list(dict.fromkeys([*candidates(settings), TORCH_FLOAT32]))
    log.info("measuring embedding backends on this machine: %s", ", ".join(c.name for c in choices))
    results = measure(settings, choices, reference)
    allowed = set(candidates(settings))
    passing = [r for r in results if r.passed and Choice.parse(r.choice) in allowed]
    best = Choice.parse(max(passing, key=lambda r: r.passages_per_second).choice) if passing else TORCH_FLOAT32
    keep(settings, best, results)
    return best, results


def keep(settings: Settings, choice: Choice, results: Sequence[Measured]) -> Path | None:
    """Keep a measurement in this machine's cache; None where that folder cannot be written."""
    key = record_key(settings)
    record = {"key": key, "choice": choice.name, "measured": [asdict(r) for r in results],
              "passages": len(calibration_passages(EmbedderSpec.of(settings, TORCH_FLOAT32))[1]), "at": utc_stamp()}
    target = records_file()
    try:
        with directory.lock(target.with_suffix(".lock")):
            records = _read_records()
            records[_digest(key)] = record
            directory.write_text(target, json.dumps(records, indent=2))
    except OSError as exc:
        log.warning("the measurement is not kept: %s cannot be written (%s)", target, exc)
        return None
    return target
