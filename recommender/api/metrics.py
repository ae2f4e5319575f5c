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
import math
import os
import re
import shutil
import socket
import time
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """One app's metrics. ``observe`` after each request; ``refresh`` then
    ``render`` (or ``generate_latest(metrics.registry)``) for a scrape."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(ENV) or None
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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def reindex_run(self) -> None:
        """A background reindex job of this worker finished (``Reindexer(on_run=...)``)."""
        self.reindex_runs.inc()

    def refresh(self, *, index_articles: int | None, index_built_at: float | None) -> None:
        """Before a scrape: the index this worker serves (none: 0 articles, NaN times)."""
        self.index_articles.set(index_articles or 0)
        self.index_built.set(index_built_at if index_built_at else math.nan)
        self.index_age.set(time.time() - index_built_at if index_built_at else math.nan)

    def render(self) -> bytes:
        return generate_latest(self.registry)

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


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """Before uvicorn starts its workers: an empty PROMETHEUS_MULTIPROC_DIR, set
    in this process's environment, which the workers inherit.

    Unset: ``<data_dir>/metrics/<host>-<pid>/``, this server's own, so two
    servers on one data folder never mix or wipe each other's counts. It is
    removed at a clean exit; uvicorn ends a SIGTERM by re-raising the signal,
    which skips ``atexit``, so each start also removes the folders of this
    host's servers that are gone. Set by the user: that directory (made if
    missing), with the ``*.db`` files that prometheus_client writes deleted, as
    its documentation asks between runs (old counts would otherwise be added to
    the new ones); nothing else in it is touched. One such directory per server.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        host = socket.gethostname()
        root = Path(data_dir) / "metrics"
        for old in root.glob(f"{host}-*"):
            pid = old.name[len(host) + 1:]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        path = root / f"{host}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)  # a dead server's, whose pid this one got
        path.mkdir(parents=True)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ[ENV] = str(path)
    # prometheus_client picks its value class when it is imported, and it has
    # been (by this module): with one worker uvicorn serves in this very process.
    prometheus_values.ValueClass = prometheus_values.get_value_class()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
