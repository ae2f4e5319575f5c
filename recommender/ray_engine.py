"""Embedding on a Ray cluster, as Ray Data jobs (``recommender reindex --engine ray``).

The driver (the process running ``reindex``) keeps the SQLite store: it reads
the changed articles, sends their passages to the cluster and checkpoints the
vectors as they come back, as with the local engine. Only the model runs on
the cluster.

The pipeline makes jobs of 256 articles lazily. They go out in windows (by
default 4 jobs per worker, at least 32 and at most 512 jobs): one Ray Data
dataset per window, ``from_items(window).map_batches(embed_batch)``, one job
per batch, so the driver holds one window at a time, however large the
archive. ``embed_batch`` runs as Ray tasks, each reserving
``threads_per_worker`` CPUs; a worker process loads the model with its first
task and keeps it, and Ray reuses the idle worker processes of a job, so every
window after the first starts warm. (An actor pool, ``map_batches`` with a
callable class, starts new actors for every dataset: here that reloaded torch
and the model for every window, 15-20 s each on 2 cores.)

Ray is an optional extra (``pip install 'recommender[ray]'``), imported only
when this engine runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from recommender.embed_jobs import EmbeddingError, EmbedJob, EmbedResult, embed_job
from recommender.embedders import Embedder, EmbedderSpec, load_embedder
from recommender.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'recommender[ray]'"
THREADS_PER_WORKER = 2
"""torch threads per worker, and the Ray CPUs each task reserves."""
WINDOW_JOBS_PER_WORKER, MIN_WINDOW_JOBS, MAX_WINDOW_JOBS = 4, 32, 512
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "SENTENCE_TRANSFORMERS_HOME")
"""The driver's environment variables (if set) that the workers get too."""


class RemoteEmbeddingError(Exception):
    """An article could not be embedded on a Ray worker; the message is the worker's."""


def import_ray():
    """Import Ray and Ray Data, or fail with a message saying how to install them."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"the ray engine needs Ray, which is not installed here ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return ray


class RayEngine:
    """Runs the embedding step as Ray Data jobs on a local or remote Ray cluster,
    with the embedder ``spec`` names (resolved by the driver: a worker on
    another CPU embeds on the same backend and precision as the key says).

    ``address``: the cluster (``ray://head:10001``, ``head:6379``, ``auto``). None
    means the cluster named by ``RAY_ADDRESS``, else one started on this machine
    with ``ray start``, else a local Ray started for the run and shut down after
    it. If Ray is already initialized in this process, that connection is used.

    ``concurrency``: workers (model copies) embedding at once; default the
    cluster's CPUs divided by ``threads_per_worker`` (at least 1). Each worker
    reserves ``threads_per_worker`` CPUs and gives torch as many threads, so
    the workers do not oversubscribe the cores.

    ``window_jobs``: jobs per Ray Data dataset; default 4 per worker (32 to 512).
    """

    name = "ray"

    def __init__(
        self,
        spec: EmbedderSpec,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        threads_per_worker: int = THREADS_PER_WORKER,
        window_jobs: int | None = None,
    ):
        for label, value in (("workers", concurrency), ("threads per worker", threads_per_worker),
                             ("jobs per window", window_jobs)):
            if value is not None and value < 1:
                raise ConfigError(f"the number of Ray {label} must be at least 1, got {value}")
        self.spec = spec
        self.address = address
        self.concurrency = concurrency
        self.threads_per_worker = threads_per_worker
        self.window_jobs = window_jobs

    def run(self, jobs: Iterable[EmbedJob]) -> Iterator[tuple[EmbedJob, EmbedResult]]:
        jobs = iter(jobs)
        first = next(jobs, None)
        if first is None:
            return  # nothing to embed: no need for Ray
        ray = import_ray()
        started_here = self._connect(ray)
        try:
            concurrency = self.concurrency or default_concurrency(ray, self.threads_per_worker)
            size = self.window_jobs or min(max(WINDOW_JOBS_PER_WORKER * concurrency, MIN_WINDOW_JOBS), MAX_WINDOW_JOBS)
            log.info("embedding on Ray %s: %d workers x %d threads, %d jobs per window",
                     ray.__version__, concurrency, self.threads_per_worker, size)
            window = [first, *islice(jobs, size - 1)]
            while window:
                yield from self._run_window(ray, window, concurrency)
                window = list(islice(jobs, size))
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Connect to Ray, or start a local one; True when this call did."""
        _quiet_ray_data(ray, chatter=log.isEnabledFor(logging.INFO))
        if ray.is_initialized():
            return False
        check_reachable(self.address or os.environ.get("RAY_ADDRESS"))
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False  # may start a local Ray
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise ConfigError(f"cannot connect to Ray at {where}: {exc}") from None
        return True

    def _run_window(self, ray, window: list[EmbedJob], concurrency: int) -> Iterator[tuple[EmbedJob, EmbedResult]]:
        by_number = {job.number: job for job in window}
        items = [{"number": job.number, "texts": json.dumps(job.texts)} for job in window]
        args = (items, self.spec, self.threads_per_worker, min(concurrency, len(window)))
        try:
            if ray.util.client.ray.is_connected():
                # Ray Data cannot stream to a Ray Client (ray://) driver: the window
                # runs in a task on the cluster, which returns all its rows at once.
                rows = iter(ray.get(ray.remote(num_cpus=0)(collect_window).remote(*args)))
            else:
                rows = iter(window_dataset(ray, *args).iter_rows())
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                job = by_number.pop(int(row["number"]))
                yield job, unpack_result(job, row)
        except ray.exceptions.RayError as exc:  # a worker died, ran out of memory, ...
            raise EmbeddingError(f"the Ray embedding job failed: {exc}") from exc
        if by_number:  # Ray Data returns every row or raises
            raise EmbeddingError(f"Ray returned no result for jobs {sorted(by_number)}")


def window_dataset(ray, items: list[dict], spec: EmbedderSpec, threads: int, concurrency: int):
    """One window of jobs as a Ray Data dataset: one block and one batch per job."""
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        embed_batch,
        fn_args=(spec, threads),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=concurrency),
        num_cpus=threads,
        runtime_env={"env_vars": worker_env(threads)},
    )


def collect_window(items: list[dict], spec: EmbedderSpec, threads: int, concurrency: int) -> list[dict]:
    """Runs a window on the cluster and returns its rows (for Ray Client drivers)."""
    import ray

    _quiet_ray_data(ray)
    return list(window_dataset(ray, items, spec, threads, concurrency).iter_rows())


def _quiet_ray_data(ray, *, chatter: bool = False) -> None:
    """No Ray Data progress bars (the reindex bar counts articles), and without
    -v none of its per-dataset log lines."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not chatter:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        notices = logging.getLogger("ray.data._internal.progress")
        if not any(isinstance(f, _NotProgressBarNotice) for f in notices.filters):
            notices.addFilter(_NotProgressBarNotice())


class _NotProgressBarNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address (host:port) that does not answer: Ray
    itself retries such an address for many minutes."""
    if not address or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return  # "auto", "local"
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach Ray at {address}: {exc}; is the cluster up (`ray status` on its head node)?"
        ) from None


def default_concurrency(ray, threads_per_worker: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // threads_per_worker)


def worker_env(threads: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    return env


_WORKERS: dict[tuple[EmbedderSpec, int], EmbedWorker] = {}
"""This worker process's loaded models, by spec and threads."""


def embed_batch(batch: dict[str, np.ndarray], spec: EmbedderSpec, threads: int) -> dict[str, np.ndarray]:
    """The Ray Data function: embed a batch of jobs with this worker process's
    model, loaded by its first task and kept for the next ones."""
    key = (spec, threads)
    worker = _WORKERS.get(key)
    if worker is None:
        worker = EmbedWorker(spec, threads)
        if worker.error is None:  # a failed load is retried by the next task
            _WORKERS[key] = worker
    return worker(batch)


class EmbedWorker:
    """Loads the model once, then embeds jobs with the pipeline's ``embed_job``
    (one bad article fails alone).

    Results travel as plain columns: the vectors of the job's articles
    concatenated as float32 bytes, the dimension and each article's row count
    (-1: failed), each article's error message or None, and a job error. A model
    that cannot load, or a job whose every article fails, is a job error: it
    stops the run on the driver with the worker's message."""

    def __init__(self, spec: EmbedderSpec, threads: int):
        self.error: str | None = None
        self.embedder: Embedder | None = None
        try:
            import torch

            torch.set_num_threads(threads)
            self.embedder = load_embedder(spec)
        except Exception as exc:  # noqa: BLE001 - sent to the driver with each job
            where = socket.gethostname()
            self.error = f"cannot load the model {spec.model!r} on Ray worker {where}: {_describe(exc)}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list] = {"number": [], "vectors": [], "rows": [], "errors": [], "job_error": []}
        for number, packed in zip(batch["number"], batch["texts"]):
            job = EmbedJob(int(number), json.loads(packed))
            vectors, job_error = b"", self.error or ""
            rows: list = []
            errors: list[str | None] = []
            if not job_error and self.embedder is not None:
                try:
                    results = embed_job(self.embedder, job)
                except Exception as exc:  # noqa: BLE001 - every article failed: the run stops
                    where = socket.gethostname()
                    job_error = f"embedding job {job.number} failed on Ray worker {where}: {_describe(exc)}"
                else:
                    vectors, rows, errors = pack_results(results, self.embedder.dimension)
            columns["number"].append(job.number)
            columns["vectors"].append(vectors)
            columns["rows"].append(json.dumps(rows))
            columns["errors"].append(json.dumps(errors))
            columns["job_error"].append(job_error)
        out = {name: np.asarray(values, dtype=object) for name, values in columns.items()}
        out["number"] = np.asarray(columns["number"], dtype=np.int64)
        return out


def pack_results(results: EmbedResult, dimension: int) -> tuple[bytes, list, list]:
    """(float32 bytes of all vectors, [dimension, rows per article or -1], error per article or None)."""
    blocks: list[np.ndarray] = []
    rows: list[int] = []
    errors: list[str | None] = []
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
    """A result row back in the pipeline's form: per article an (n, dim) float32
    array, or a RemoteEmbeddingError with the worker's message."""
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
