"""Prometheus metrics with prometheus_client, whole-server under ``--workers N``.

``recommender serve`` runs prometheus_client in multiprocess mode
(:func:`prepare_multiprocess_dir`): each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR``, and a scrape, whichever worker answers it, adds
up the files of all of them, so counters never seem to reset when the next
scrape lands on another worker. Without the variable (an app in a test, with
TestClient) each :class:`Metrics` keeps its own registry: two apps in one
process do not share, or clash over, prometheus_client's global one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from functools import partial
from pathlib import Path
from stat import S_IMODE, S_ISDIR

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from recommender import directory

log = logging.getLogger(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """One app's metrics. ``observe`` after each request; ``refresh`` then
    ``render`` (or ``generate_latest(metrics.registry)``) for a scrape."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(ENV) or None
        self.failing = False
        """Set at the first metric that could not be recorded or read (logged once)."""
        # Multiprocess: values live in the shared directory (one app per worker
        # process: two there would write the same entries); the metric objects
        # are registered nowhere and the scrape registry reads the files.
        own = None if self.multiprocess_dir else CollectorRegistry()
        self.requests = Counter("recommender_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=own)
        self.latency = Histogram("recommender_request_seconds", "HTTP request latency by route.",
                                 ["method", "route"], buckets=BUCKETS, registry=own)
        # The index gauges are set by the worker answering the scrape, just before
        # it collects: "livemostrecent" then shows that worker's view of the index
        # it serves (the workers converge within index_poll_seconds), with the age
        # computed now, so it grows between scrapes whichever worker answers. "max"
        # would keep a bigger count after deletes or a newer build after a rollback
        # (and an age frozen at an old worker's last scrape); "sum" would multiply
        # by the workers; "live" drops a worker's values once it is marked dead.
        self.index_articles = Gauge("recommender_index_articles", "Articles in the served index.",
                                    registry=own, multiprocess_mode="livemostrecent")
        self.index_built = Gauge("recommender_index_built_timestamp_seconds",
                                 "Unix time the served index was built.", registry=own,
                                 multiprocess_mode="livemostrecent")
        self.index_age = Gauge("recommender_index_age_seconds", "Seconds since the served index was built.",
                               registry=own, multiprocess_mode="livemostrecent")
        self.reindex_runs = Counter("recommender_reindex_runs", "Background reindex jobs run by the server's workers.",
                                    registry=own)
        if own is not None:
            # This process is the whole server: its own process and GC metrics.
            ProcessCollector(registry=own)
            GCCollector(registry=own)
            PlatformCollector(registry=own)
            self.registry = own
        else:
            # prometheus_client does not aggregate process metrics across processes
            # (ProcessCollector reads one process; one worker's CPU seconds in one
            # scrape and another's in the next is the false reset again). Each live
            # worker's are exported labelled by pid instead (WorkerProcesses);
            # GC metrics are left out; python_info is the same in every worker.
            shared = self.multiprocess_dir or ""
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=shared)
            self.registry.register(WorkerProcesses(shared))
            PlatformCollector(registry=self.registry)

    # A metric that cannot be recorded never fails what is measured: each of
    # these logs its first failure, and the request, the job or the scrape goes on.

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        try:
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(seconds)
        except Exception:
            self._failed("record a request")

    def reindex_run(self) -> None:
        """A background reindex job of this worker finished (``Reindexer(on_run=...)``)."""
        try:
            self.reindex_runs.inc()
        except Exception:
            self._failed("count a reindex job")

    def refresh(self, *, index_articles: int | None, index_built_at: float | None) -> None:
        """Before a scrape: the index this worker serves (none: 0 articles, NaN times)."""
        try:
            self.index_articles.set(index_articles or 0)
            self.index_built.set(index_built_at if index_built_at else math.nan)
            self.index_age.set(time.time() - index_built_at if index_built_at else math.nan)
        except Exception:
            self._failed("set the index gauges")

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def scrape(self) -> bytes | None:
        """:meth:`render`, or None where the files cannot be read (/metrics then answers 503)."""
        try:
            return self.render()
        except Exception:
            self._failed("render the metrics")
            return None

    def _failed(self, what: str) -> None:
        if not self.failing:
            self.failing = True
            log.exception("metrics: could not %s (in %s); requests go on, later failures are not logged",
                          what, self.multiprocess_dir or "memory")

    def close(self) -> None:
        """When the worker stops: its live gauges leave the aggregate."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


class WorkerProcesses:
    """process_* metrics of each live worker (those with live gauge files in the
    multiprocess directory, which mark_process_dead removes), labelled by pid.
    A worker that died without its shutdown reads as nothing (no /proc entry)."""

    def __init__(self, path: str):
        self.path = path

    def collect(self):
        pids = sorted({int(m.group(1)) for name in os.listdir(self.path) if (m := _LIVE_FILE.fullmatch(name))})
        families: dict[str, Metric] = {}
        for pid in pids:
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                                 family.unit))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(families.values())


SHARED_MEMORY = "/dev/shm"
MIN_FREE_BYTES = 16 * 2**20
"""A default folder with less room than this is passed over (Docker's /dev/shm is 64 MiB)."""


def metrics_root(configured: Path | None = None) -> Path:
    """Where servers keep their multiprocess folders: ``configured`` (the
    ``metrics_dir`` setting), else ``recommender-<uid>/metrics`` in the first
    of ``$XDG_RUNTIME_DIR``, ``/dev/shm`` and the temporary folder where that
    subfolder is this user's own (not a link, not another user's; made
    private: mode 0700) with at least ``MIN_FREE_BYTES`` free; else, as a last
    resort, the temporary folder's whatever its room (logged). Raises
    ``PermissionError`` where not even that one is this user's own.

    Never the data folder by default: prometheus_client memory-maps these files
    with gaps, and when the disk holding them is full, a request that needs a
    new slot dies of SIGBUS, which no ``except`` can catch."""
    if configured is not None:
        return Path(configured)
    candidates = [os.environ.get("XDG_RUNTIME_DIR"), SHARED_MEMORY, tempfile.gettempdir()]
    for parent in filter(None, candidates):
        own = _own_folder(Path(parent))
        if own is not None and _has_room(own):
            return own / "metrics"
    last = Path(tempfile.gettempdir())
    own = _own_folder(last)
    if own is None:
        raise PermissionError(f"no private folder for the metrics files: {last / f'recommender-{os.getuid()}'} "
                              "is not this user's own folder; set metrics_dir (RECOMMENDER_METRICS_DIR)")
    log.warning("metrics files in %s, which has less than %d MiB free", own, MIN_FREE_BYTES >> 20)
    return own / "metrics"


def _own_folder(parent: Path) -> Path | None:
    """``parent/recommender-<uid>``, made private to this user, or None where it cannot be."""
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return None
    folder = parent / f"recommender-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # not through a link
    except OSError:
        log.info("metrics: %s is passed over: not a folder this user can open", folder)
        return None
    try:
        stat = os.fstat(fd)
        if not S_ISDIR(stat.st_mode) or stat.st_uid != os.getuid():  # another user's
            log.info("metrics: %s is passed over: not this user's own folder", folder)
            return None
        if S_IMODE(stat.st_mode) != 0o700:  # made by hand, or under another umask: private again
            os.fchmod(fd, 0o700)
    except OSError:
        return None
    finally:
        os.close(fd)
    return folder


def _has_room(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        log.info("metrics: %s is passed over: %.1f MiB free, %d MiB wanted", folder, free / 2**20,
                 MIN_FREE_BYTES >> 20)
        return False
    return True


def prepare_multiprocess_dir(root: Path, *, legacy: Path | None = None) -> Path:
    """Before uvicorn starts its workers: an empty PROMETHEUS_MULTIPROC_DIR, set
    in this process's environment, which the workers inherit.

    Unset: ``<root>/<host>-<pid>/`` (``root``: :func:`metrics_root`), this
    server's own, so two servers never mix or wipe each other's counts. It is
    removed at a clean exit; uvicorn ends a SIGTERM by re-raising the signal,
    which skips ``atexit``, so each start also removes the folders of this
    host's servers that are gone (in ``root``, and in ``legacy``: where an
    older release kept them, ``<data_dir>/metrics``). Set by the user: that
    directory (made if missing), with the ``*.db`` files that prometheus_client
    writes deleted, as its documentation asks between runs (old counts would
    otherwise be added to the new ones); nothing else in it is touched. One
    such directory per server.
    """
    given = os.environ.get(ENV)
    host = socket.gethostname()
    for old_root in filter(None, (legacy,)):
        _remove_dead(old_root, host)
        with contextlib.suppress(OSError):
            old_root.rmdir()  # once empty
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        root = Path(root)
        _remove_dead(root, host)
        path = root / f"{host}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)  # a dead server's, whose pid this one got
        path.mkdir(parents=True)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ[ENV] = str(path)
    # prometheus_client picks its value class when it is imported, and it has
    # been (by this module): with one worker uvicorn serves in this very process.
    prometheus_values.ValueClass = prometheus_values.get_value_class()
    return path


def _remove_dead(root: Path, host: str) -> None:
    """The folders of this host's servers that are gone."""
    for old in root.glob(f"{host}-*"):
        pid = old.name[len(host) + 1:]
        if pid.isdigit() and not directory.process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
