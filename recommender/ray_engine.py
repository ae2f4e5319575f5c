"""Embedding on a Ray cluster, as a Ray Data job (``recommender reindex --engine ray``).

The driver (the process running ``reindex``) keeps the SQLite store: it reads
the changed articles, sends their passages to the cluster, and checkpoints the
vectors as they come back, exactly as with the local engine. Only the model
runs on the cluster, in a pool of actors that each load it once.

The jobs arrive lazily from the store, 64 articles each. They are sent in
windows of ``window_jobs`` jobs (default 64, about 4,000 articles): one Ray
Data dataset per window, ``from_items`` -> ``map_batches(EmbedActor)``, one job
per batch. Memory on the driver stays bounded on a million-article archive,
and each window's actors start once and embed many jobs.

Ray is an optional extra (``pip install 'recommender[ray]'``) and is imported
only when this engine runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from recommender.config import Settings
from recommender.errors import ConfigError
from recommender.pipeline import EmbeddingError, EmbedJob, EmbedResult

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'recommender[ray]'"
WINDOW_JOBS = 64
"""Jobs (of 64 articles) per Ray Data dataset; a new actor pool starts per window."""
THREADS_PER_ACTOR = 2
"""torch threads (and Ray CPUs reserved) per actor; actors = cluster CPUs // this."""
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "SENTENCE_TRANSFORMERS_HOME")
"""Environment variables of the driver that the actors get too (if set)."""


class RemoteEmbeddingError(Exception):
    """An article's embedding failed on a Ray worker; carries the worker's message."""


def import_ray():
    """Import Ray, or fail with a message saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the part we need
    except ImportError as exc:
        raise ConfigError(
            f"the ray engine needs Ray, which is not installed here ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return ray


class RayEngine:
    """Runs the embedding step as Ray Data jobs on a local or remote Ray cluster.

    ``address``: a cluster (``ray://head:10001``, ``head:6379``, ``auto``); None
    connects to the cluster named by ``RAY_ADDRESS`` or started on this machine
    with ``ray start``, else starts a local one for the run. If Ray is already
    initialized in this process, that connection is used as it is.

    ``concurrency``: actors (model copies); default the cluster's CPUs divided by
    ``threads_per_actor``, at least 1. Each actor reserves ``threads_per_actor``
    CPUs and limits torch to as many threads, so actors do not oversubscribe.
    """

    name = "ray"

    def __init__(
        self,
        settings: Settings,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        threads_per_actor: int = THREADS_PER_ACTOR,
        window_jobs: int = WINDOW_JOBS,
    ):
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"the number of Ray actors must be at least 1, got {concurrency}")
        if threads_per_actor < 1 or window_jobs < 1:
            raise ConfigError("threads_per_actor and window_jobs must be at least 1")
        self.settings = settings
        self.address = address
        self.concurrency = concurrency
        self.threads_per_actor = threads_per_actor
        self.window_jobs = window_jobs

    def run(self, jobs: Iterable[EmbedJob]) -> Iterator[tuple[EmbedJob, EmbedResult]]:
        jobs = iter(jobs)
        first = list(islice(jobs, self.window_jobs))
        if not first:
            return
        ray = import_ray()
        started_here = self._connect(ray)
        try:
            concurrency = self.concurrency or default_concurrency(ray, self.threads_per_actor)
            log.info("embedding on Ray %s with %d actors x %d threads", ray.__version__, concurrency,
                     self.threads_per_actor)
            window = first
            while window:
                yield from self._run_window(ray, window, concurrency)
                window = list(islice(jobs, self.window_jobs))
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Connect (or start a local Ray); True when this call started it."""
        ray.data.DataContext.get_current().enable_progress_bars = False  # the reindex bar counts articles
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise ConfigError(f"cannot connect to Ray at {where}: {exc}") from None
        return True

    def _run_window(self, ray, window: list[EmbedJob], concurrency: int) -> Iterator[tuple[EmbedJob, EmbedResult]]:
        by_number = {job.number: job for job in window}
        items = [{"number": job.number, "texts": json.dumps(job.texts)} for job in window]
        common = dict(batch_size=1, batch_format="numpy", num_cpus=self.threads_per_actor,
                      runtime_env={"env_vars": actor_env(self.threads_per_actor)})
        if os.environ.get("RAYMODE") == "tasks":
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                embed_batch, fn_args=(self.settings, self.threads_per_actor),
                compute=ray.data.TaskPoolStrategy(size=min(concurrency, len(window))), **common)
        else:
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                EmbedActor,
                fn_constructor_args=(self.settings, self.threads_per_actor),
                compute=ray.data.ActorPoolStrategy(size=min(concurrency, len(window))), **common)
        for row in dataset.iter_rows():
            job = by_number.pop(int(row["number"]))
            yield job, unpack_result(job, row)
        if by_number:  # Ray Data returns every row or raises; this would be a bug
            raise EmbeddingError(f"Ray returned no result for jobs {sorted(by_number)}")


def default_concurrency(ray, threads_per_actor: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // threads_per_actor)


def actor_env(threads: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    return env


class EmbedActor:
    """A Ray Data callable class: loads the model once, then embeds one job per
    call with the pipeline's ``embed_job`` (per-article failure isolation).

    Results travel as plain columns: the article vectors concatenated as float32
    bytes, their row counts, and per article an error message or None. A model
    that cannot load, or a job where every article fails, comes back as a job
    error, which stops the run on the driver with the worker's message."""

    def __init__(self, settings: Settings, threads: int):
        self.error: str | None = None
        self.embedder = None
        try:
            import torch

            torch.set_num_threads(threads)
            from recommender.embed import SentenceTransformerEmbedder

            self.embedder = SentenceTransformerEmbedder.from_settings(settings)
        except Exception as exc:  # noqa: BLE001 - reported to the driver with each job
            self.error = f"cannot load the model {settings.model!r} on Ray worker {_node()}: {_describe(exc)}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from recommender.pipeline import embed_job

        out: dict[str, list] = {"number": [], "vectors": [], "rows": [], "errors": [], "job_error": []}
        for number, packed in zip(batch["number"], batch["texts"]):
            job = EmbedJob(int(number), json.loads(packed))
            vectors, rows, errors, job_error = b"", [], [], ""
            if self.error:
                job_error = self.error
            else:
                try:
                    results = embed_job(self.embedder, job)
                except Exception as exc:  # noqa: BLE001 - every article failed: the run stops
                    job_error = f"embedding job {job.number} failed on Ray worker {_node()}: {_describe(exc)}"
                else:
                    vectors, rows, errors = pack_results(results, self.embedder.dimension)
            out["number"].append(job.number)
            out["vectors"].append(vectors)
            out["rows"].append(json.dumps(rows))
            out["errors"].append(json.dumps(errors))
            out["job_error"].append(job_error)
        return {
            "number": np.asarray(out["number"], dtype=np.int64),
            "vectors": np.asarray(out["vectors"], dtype=object),
            "rows": np.asarray(out["rows"], dtype=object),
            "errors": np.asarray(out["errors"], dtype=object),
            "job_error": np.asarray(out["job_error"], dtype=object),
        }


_WORKER_EMBEDDERS: dict = {}


def embed_batch(batch, settings, threads):
    key = (settings, threads)
    if key not in _WORKER_EMBEDDERS:
        _WORKER_EMBEDDERS[key] = EmbedActor(settings, threads)
    return _WORKER_EMBEDDERS[key](batch)


def pack_results(results: EmbedResult, dimension: int) -> tuple[bytes, list, list]:
    """(concatenated float32 bytes, [dimension, rows per article], error per article)."""
    blocks, rows, errors = [], [], []
    for result in results:
        if isinstance(result, Exception):
            rows.append(-1)
            errors.append(_describe(result))
        else:
            block = np.ascontiguousarray(result, dtype=np.float32).reshape(-1, dimension)
            blocks.append(block)
            rows.append(len(block))
            errors.append(None)
    data = np.concatenate(blocks).tobytes() if blocks else b""
    return data, [dimension, rows], errors


def unpack_result(job: EmbedJob, row: dict[str, Any]) -> EmbedResult:
    """A result row back into the pipeline's form: per article an (n, dim)
    float32 array, or a RemoteEmbeddingError with the worker's message."""
    if row["job_error"]:
        raise EmbeddingError(row["job_error"])
    dimension, rows = json.loads(row["rows"])
    errors = json.loads(row["errors"])
    if len(rows) != len(job.texts):
        raise EmbeddingError(f"Ray returned {len(rows)} results for the {len(job.texts)} articles of job {job.number}")
    flat = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, dimension).copy()
    results: EmbedResult = []
    start = 0
    for count, error in zip(rows, errors):
        if count < 0:
            results.append(RemoteEmbeddingError(error))
        else:
            results.append(flat[start : start + count])
            start += count
    return results


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _node() -> str:
    import socket

    return socket.gethostname()
