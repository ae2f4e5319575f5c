"""/metrics through prometheus_client: label escaping, one registry per app, and
with two workers every scrape counts every request once, whichever worker answers."""

from __future__ import annotations

import calendar
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recommender.api import create_app
from recommender.config import Settings
from tests.helpers import HANG_GUARD, Server, build_index, samples

RELATED = "/v1/articles/{article_id}/related"


def requests_on(text: str, route: str) -> float:
    return sum(s.value for s in samples(text, "recommender_requests_total") if s.labels["route"] == route)


# -- in one process (no PROMETHEUS_MULTIPROC_DIR) ------------------------------

def test_labels_are_escaped_and_each_metrics_object_has_its_own_registry():
    from recommender.api.metrics import Metrics

    one, two = Metrics(), Metrics()  # the same metric names twice in one process: no clash
    route = 'a "quoted"\\ route\nwith a newline'
    one.observe("GET", route, 200, 0.003)
    one.refresh(index_articles=3, index_built_at=time.time() - 60)
    text = one.render().decode()
    assert 'route="a \\"quoted\\"\\\\ route\\nwith a newline"' in text
    assert text.count("\n") == len([line for line in text.splitlines()])  # no raw newline inside a label
    (sample,) = samples(text, "recommender_requests_total")
    assert sample.labels == {"method": "GET", "route": route, "status": "200"} and sample.value == 1
    (bucket,) = [s for s in samples(text, "recommender_request_seconds_bucket") if s.labels["le"] == "0.005"]
    assert bucket.value == 1
    assert 59 <= samples(text, "recommender_index_age_seconds")[0].value < 70
    assert samples(text, "recommender_index_articles")[0].value == 3
    assert samples(text, "process_cpu_seconds_total") and samples(text, "python_info")  # process metrics
    two.refresh(index_articles=None, index_built_at=None)
    other = two.render().decode()
    assert requests_on(other, route) == 0  # nothing leaked from the first object
    assert samples(other, "recommender_index_articles")[0].value == 0


def test_two_apps_in_one_process(settings):
    from recommender.api import create_app

    first, second = create_app(settings), create_app(settings)
    first.state.metrics.observe("GET", "/healthz", 200, 0.001)
    assert requests_on(first.state.metrics.render().decode(), "/healthz") == 1
    assert requests_on(second.state.metrics.render().decode(), "/healthz") == 0


def _run(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=HANG_GUARD,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_prepare_multiprocess_dir(tmp_path):
    """In a child process: it sets the environment of the process that calls it."""
    code = ("import json, os, sys; from pathlib import Path; "
            "from recommender.api.metrics import prepare_multiprocess_dir; "
            "path = prepare_multiprocess_dir(Path(sys.argv[1]), legacy=Path(sys.argv[2])); "
            "print(json.dumps({'path': str(path), 'env': os.environ['PROMETHEUS_MULTIPROC_DIR'], "
            "'files': sorted(os.listdir(path))}))")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    root = tmp_path / "run" / "metrics"
    legacy = tmp_path / "data" / "metrics"  # where a release before kept them: in the data folder
    dead = f"{socket.gethostname()}-{2**22 + 1}"  # a server that died (no such pid)
    for gone in (root / dead, legacy / dead):
        gone.mkdir(parents=True)
        (gone / "counter_1.db").write_bytes(b"old counts")
    fresh = _run([code, str(root), str(legacy)], env)
    assert fresh["path"] == fresh["env"] and fresh["files"] == []
    assert Path(fresh["path"]).parent == root
    assert not Path(fresh["path"]).exists()  # removed at exit
    assert not (root / dead).exists()  # removed at the next start
    assert not legacy.exists()  # the data folder's, emptied, is gone
    theirs = tmp_path / "prom"
    theirs.mkdir()
    (theirs / "counter_12345.db").write_bytes(b"old counts")
    (theirs / "notes.txt").write_text("not ours")
    kept = _run([code, str(root), str(legacy)], {**env, "PROMETHEUS_MULTIPROC_DIR": str(theirs)})
    assert kept["path"] == kept["env"] == str(theirs) and kept["files"] == ["notes.txt"]  # old counts gone
    assert theirs.is_dir()  # a directory the user set is left in place


def test_metrics_files_live_off_the_data_folder(tmp_path, monkeypatch, caplog):
    """The default root: this user's folder under $XDG_RUNTIME_DIR, else /dev/shm, else the temporary
    folder; never the data folder (a full data disk kills a process whose mapped metrics file cannot
    grow); each made private (0700), passed over where it is not this user's own or has too little
    room; ``metrics_dir`` wins. (/dev/shm and the temporary folder are folders of the test's here.)"""
    from recommender.api import metrics
    from recommender.api.metrics import metrics_root

    user = f"recommender-{os.getuid()}"
    runtime, shm, temp = (tmp_path / name for name in ("xdg", "shm", "tmp"))
    for folder in (runtime, shm, temp):
        folder.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(metrics, "SHARED_MEMORY", str(shm))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert metrics_root() == runtime / user / "metrics"
    assert (runtime / user).stat().st_mode & 0o777 == 0o700  # private to this user
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert metrics_root() == shm / user / "metrics"
    (shm / user).chmod(0o777)  # an existing folder, opened to everyone: private again
    assert metrics_root() == shm / user / "metrics" and (shm / user).stat().st_mode & 0o777 == 0o700

    # Not this user's own folder (a link to another's): passed over, the last fallback included.
    (shm / user).rmdir()
    (tmp_path / "elsewhere").mkdir()
    (shm / user).symlink_to(tmp_path / "elsewhere")
    assert metrics_root() == temp / user / "metrics"
    shutil.rmtree(temp / user)
    (temp / user).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not this user's own folder"):
        metrics_root()
    (temp / user).unlink()
    (shm / user).unlink()

    # Too little room everywhere: passed over, said in the log; the temporary folder's as a last resort.
    free = os.statvfs(tmp_path)
    monkeypatch.setattr(metrics, "MIN_FREE_BYTES", free.f_bavail * free.f_frsize + 2**40)
    with caplog.at_level(logging.INFO, logger=metrics.__name__):
        assert metrics_root() == temp / user / "metrics"
    assert f"{shm / user} is passed over" in caplog.text and "less than" in caplog.text
    assert (temp / user).stat().st_mode & 0o777 == 0o700

    assert metrics_root(tmp_path / "mine") == tmp_path / "mine"
    assert Settings.load({"metrics_dir": str(tmp_path / "m")}, environ={}).metrics_dir == tmp_path / "m"
    assert Settings.load({}, environ={"RECOMMENDER_METRICS_DIR": ""}).metrics_dir is None


def test_a_metric_that_fails_never_fails_the_request(settings, corpus, caplog):
    """Whatever recording a request raises, the request is answered (and the failure logged once); a
    scrape that cannot render answers 503 with the one error body."""
    from fastapi.testclient import TestClient

    build_index(settings, corpus)
    app = create_app(settings)

    class Broken:
        def labels(self, *args):
            raise OSError("no room for a metrics slot")

    with TestClient(app) as client:
        app.state.metrics.requests = app.state.metrics.latency = Broken()
        app.state.metrics.registry = None  # generate_latest fails on it
        for _ in range(2):
            assert client.get("/v1/articles/talks-0/related").status_code == 200
            assert client.get("/healthz").status_code == 200
        scrape = client.get("/metrics")
        assert scrape.status_code == 503 and scrape.json()["error"]["code"] == "metrics_unavailable"
    assert sum("metrics: could not" in r.getMessage() for r in caplog.records) == 1


# -- a real server with two workers --------------------------------------------

def per_worker(prom_dir: Path) -> dict[str, float]:
    """Requests to the related route each live worker counted in its own file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for live in prom_dir.glob("gauge_live*_*.db"):
        pid = live.stem.rsplit("_", 1)[1]
        counter = prom_dir / f"counter_{pid}.db"
        merged = MultiProcessCollector.merge([str(counter)]) if counter.exists() else []
        counts[pid] = sum(s.value for m in merged for s in m.samples
                          if s.name == "recommender_requests_total" and s.labels["route"] == RELATED)
    return counts


def test_two_workers_count_every_request_once_on_every_scrape(settings, corpus, tmp_path):
    build_index(settings, corpus)
    prom_dir = tmp_path / "prom"  # set by the user: the test can see which worker counted what
    server = Server(settings.data_dir, settings.model, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)})
    try:
        built = calendar.timegm(time.strptime(server.request("GET", "/readyz")[1]["built_at"], "%Y-%m-%dT%H:%M:%SZ"))
        # urllib opens a new connection per request, and the kernel hands each to
        # whichever worker accepts first (the second may still be loading): send
        # batches until both have answered some
        n, deadline = 0, time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:
            while n < 40 or (min(per_worker(prom_dir).values(), default=0) == 0 and time.monotonic() < deadline):
                statuses = list(pool.map(lambda i: server.request("GET", f"/v1/articles/talks-{i % 6}/related")[0],
                                         range(20)))
                assert statuses == [200] * 20
                n += 20
        # the last answer is sent just before its worker counts it: wait for the first complete scrape
        deadline = time.monotonic() + 5
        while requests_on(text := server.request("GET", "/metrics")[1], RELATED) != n:
            assert time.monotonic() < deadline, f"never {n}: {requests_on(text, RELATED)}\n{text}"
            time.sleep(0.05)
        scrapes = []
        for _ in range(12):
            text = server.request("GET", "/metrics")[1]
            scrapes.append(text)
            assert requests_on(text, RELATED) == n, text
            time.sleep(0.02)
        counted = [requests_on(t, "/metrics") for t in scrapes]
        assert all(b >= a for a, b in itertools.pairwise(counted)) and counted[-1] - counted[0] >= len(scrapes) - 2
        for text in scrapes:
            age = samples(text, "recommender_index_age_seconds")[0].value
            assert abs(age - (time.time() - built)) < 5
            assert samples(text, "recommender_index_built_timestamp_seconds")[0].value == built
            assert samples(text, "recommender_index_articles")[0].value == len(corpus)
        pids = {s.labels["pid"] for s in samples(scrapes[-1], "process_resident_memory_bytes")}
        assert len(pids) == 2, scrapes[-1]  # each live worker's process metrics, labelled by pid
        counts = per_worker(prom_dir)
        assert set(counts) == pids and sum(counts.values()) == n and all(counts.values()), counts
    finally:
        server.stop()
    assert not list(prom_dir.glob("gauge_live*")), "workers that stopped are marked dead"
