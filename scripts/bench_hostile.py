#!/usr/bin/env python
"""The hostile review, replayed against a real `recommender serve`.

Sends what the review sent (docs/reliability.md, "Hostile review") to a server
started from a source tree, and prints what came back: status codes, seconds,
the server's memory growth, connections still open. Run it once on this tree
and once on an older one to fill the table's "before" and "after" columns:

    git worktree add /tmp/before bae1bd8
    python scripts/bench_hostile.py --out docs/bench-hostile.json                # this tree
    python scripts/bench_hostile.py --tree /tmp/before --out /tmp/before.json    # the tree before the fixes

Then ``--throughput`` measures the widget's hot path with wrk (2 workers,
c = 2 and 8; all servers up at once, timed back to back in alternating order
each round; medians over the rounds, and of each round's ratio to "before")
for the protocol choices: plain httptools (what `serve` ran before), httptools with
our limits (what it runs now), and uvicorn's h11 with
``h11_max_incomplete_event_size``:

    python scripts/bench_hostile.py --throughput --before-tree /tmp/before --rounds 6 --seconds 4 \\
        --out docs/bench-hostile-http.json

The data folder holds 300 BBC articles embedded with the packaged MiniLM,
plus one embargoed article. Needs wrk for --throughput (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, stop, wrk  # noqa: E402

from recommender.embedders.machine import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
SECRET = {"id": "embargoed-1", "title": "Minister to resign", "body": "The minister will resign next week. " * 20,
          "published": "2999-01-01T00:00:00+00:00", "internal_note": "source: a leak, do not publish"}


def cpu_flags() -> dict:
    return cpu_info()


def cli(tree: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH
    return subprocess.run([sys.executable, "-m", "recommender.cli", *args], capture_output=True, text=True, cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", **(env or {})})


def build(tree: Path, data: Path, folder: Path, n: int) -> None:
    rows = [json.loads(line) for line in open(data / "bbc_news.jsonl", encoding="utf-8")][:n]
    source = folder.parent / "articles.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows + [SECRET]), encoding="utf-8")
    for args in (("ingest", str(source)), ("reindex", "--no-progress")):
        done = cli(tree, *args, "--data-dir", str(folder))
        if done.returncode != 0:
            raise SystemExit(f"{args[0]} failed: {done.stderr[-2000:]}")


class Served:
    """A `recommender serve` process from ``tree``, or uvicorn run by hand (``command``)."""

    def __init__(self, tree: Path, folder: Path, *, workers: int = 1, command: list[str] | None = None,
                 env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "RECOMMENDER_API_KEY": KEY,
                   "RECOMMENDER_DATA_DIR": str(folder), "RECOMMENDER_WORKERS": str(workers), **(env or {})}
        command = command or [sys.executable, "-m", "recommender.cli", "serve", "--port", str(self.port),
                              "--workers", str(workers), "--data-dir", str(folder)]
        command = [c.replace("{port}", str(self.port)) for c in command]
        self.process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, cwd=tree)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit("server not ready")

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60) -> tuple[int, bytes, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers, in MB."""
        pids = [self.process.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True).stdout.split()]
        total = 0
        for pid in set(pids):
            try:
                for line in open(f"/proc/{pid}/status", encoding="utf-8"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return round(total / 1024, 1)

    def close(self) -> None:
        stop(self.process)


def timed(fn, *args, **kw):
    started = time.perf_counter()
    result = fn(*args, **kw)
    return result, round(time.perf_counter() - started, 3)


def raw(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        reply = b""
        while time.monotonic() - started < wait:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
    return reply, round(time.monotonic() - started, 2)


def status_line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode("latin-1") if reply else "connection closed, no answer"


def still_open(sockets: list[socket.socket]) -> int:
    """Connections the server has not closed (it may have answered first: read to the end)."""
    alive = 0
    for s in sockets:
        s.settimeout(0.05)
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            alive += 1  # no end of stream: still open
        except OSError:
            pass
    return alive


PASSAGE_MEMORY = """
import sys, tracemalloc, types, numpy as np
from recommender.rank.search import passage_scores
rng = np.random.default_rng(0)
lengths = rng.integers(1, 5, 20_000)  # 2.5 passages an article, as BBC's
offsets = np.concatenate([[0], np.cumsum(lengths)])
vectors = rng.standard_normal((int(offsets[-1]), 384)).astype(np.float32)
version = types.SimpleNamespace(chunk_offsets=offsets, chunk_vectors=vectors)
query = vectors[0].copy()
tracemalloc.start()
passage_scores(version, np.arange(20_000), query)
print(round(tracemalloc.get_traced_memory()[1] / 2**20, 1), round(vectors.nbytes / 2**20, 1))
"""


def passage_memory(tree: Path) -> str:
    """Peak memory that one search's passage scoring allocates over 20,000 allowed articles."""
    done = subprocess.run([sys.executable, "-c", PASSAGE_MEMORY], capture_output=True, text=True, cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode:
        return f"failed: {done.stderr[-300:]}"
    peak, total = done.stdout.split()
    return f"{peak} MiB allocated at the peak ({total} MiB of passage vectors)"


def probes(tree: Path, data: Path, work: Path, n: int) -> dict:
    folder = work / "data"
    build(tree, data, folder, n)
    results: dict = {}
    server = Served(tree, folder)
    try:
        article = json.loads(open(data / "bbc_news.jsonl", encoding="utf-8").readline())["id"]
        # 1. embargo
        secret = SECRET["id"]
        s, body, _ = server.get(f"/v1/articles/{secret}")
        shown = "shown" if b"leak" in body else "not shown"
        results["1 embargoed article, GET /v1/articles/{id}"] = f"{s}, internal note {shown}"
        related, fragment = server.get(f"/v1/articles/{secret}/related")[0], server.get(f"/widget/related/{secret}")[0]
        unknown = server.get("/v1/articles/no-such-id/related")[0]
        results["1 embargoed article, /related and /widget/related"] = f"{related} / {fragment} (unknown id: {unknown})"
        s, body, _ = server.get(f"/v1/articles/{article}")
        results["1 public article read"] = f"{s}, {'with' if b'metadata' in body else 'without'} metadata"
        # 2. a 2 MB run-on draft, alone and four at once beside a search
        run_on = {"title": "t", "body": "a " * 999_999}
        (s, _, _), seconds = timed(server.request, "POST", "/v1/related", run_on)
        results["2 POST /v1/related, 2 MB run-on body"] = f"{s} in {seconds} s"
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            drafts = [pool.submit(timed, server.request, "POST", "/v1/related", run_on) for _ in range(4)]
            time.sleep(0.2)
            search = pool.submit(timed, server.get, "/v1/search?q=bank+rates")
            draft_seconds = [f.result()[1] for f in drafts]
            results["2 four such drafts at once, and a search"] = (
                f"drafts {min(draft_seconds)}-{max(draft_seconds)} s, search {search.result()[1]} s")
        (s, _, _), seconds = timed(server.request, "POST", "/v1/related", {"title": "t", "body": "a " * 49_999})
        results["2 POST /v1/related, 100 kB run-on body"] = f"{s} in {seconds} s"
        # 5. headers and deadlines
        for size in (2, 32):
            before = server.rss_mb()
            reply, seconds = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (size << 20)
                                 + b"\r\n\r\n", 30)
            results[f"5 {size} MB request header"] = (f"{status_line(reply)} after {seconds} s, "
                                                      f"server memory +{round(server.rss_mb() - before)} MB")
        half_open = []
        for _ in range(500):
            c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            half_open.append(c)
        time.sleep(30)
        results["5 500 half-open connections, after 30 s"] = f"{still_open(half_open)} still open"
        for c in half_open:
            c.close()
        reply, seconds = raw(server.port, b"POST /v1/related HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          b"Content-Length: 1000\r\n\r\n{", 45)
        results["5 declared body that never arrives"] = (f"{status_line(reply)} after {seconds} s"
                                                        if reply or seconds < 44 else "still waiting after 45 s")
        # 6. expensive public requests (in process: memory of one filtered search's passage scoring)
        results["6 passage scoring of a filter allowing 20,000 articles"] = passage_memory(tree)
        results["6 half_life=1.000001 .. 1.000005"] = "see tests/test_hostile.py (cache entries are in-process)"
        # 7-9. one validation
        hostile: dict[str, dict[str, Any]] = {
            "7 batch: 5 MB title": {"title": "t" * 5_000_000},
            "7 batch: 1 MB section": {"section": "s" * 1_000_000},
            "7 batch: 200,000 tags": {"tags": [f"t{i}" for i in range(200_000)]},
            "8 batch: metadata 700 levels deep": {"deep": json.loads("[" * 700 + "]" * 700)},
            "9 batch: javascript: URL": {"url": "javascript:alert(1)"},
            "9 batch: data: URL": {"url": "data:text/html,<script>alert(1)</script>"},
        }
        for name, fields in hostile.items():
            record = {"id": "h-" + str(abs(hash(name))), "title": "t", "body": "b", **fields}
            good = {"id": "g-" + str(abs(hash(name))), "title": "Fine", "body": "A fine article."}
            s, body, _ = server.request("POST", "/v1/articles", [good, record], {"Authorization": f"Bearer {KEY}"})
            try:
                answer = json.loads(body)
                rejected = answer.get("rejected", [])
                results[name] = (f"{s}: record rejected ({rejected[0]['reason'][:60]})" if rejected
                                 else f"{s}: stored ({answer.get('added')} added)")
            except (json.JSONDecodeError, IndexError, KeyError):
                results[name] = f"{s}: {body[:80]!r}"
        # 11. smaller points
        s, _, headers = server.get("/")
        headers = {k.lower(): v for k, v in headers.items()}
        results["11 editors' page headers"] = ", ".join(f"{h}: {'yes' if h in headers else 'no'}" for h in (
            "content-security-policy", "x-content-type-options", "x-frame-options"))
        results["11 GET /docs"] = str(server.get("/docs")[0])
        chunk = b"x" * 1_000_000
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9)) + b"0\r\n\r\n"
        reply, _ = raw(server.port, b"POST /v1/related HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body, 30)
        results["11 chunked body of 9 MB"] = status_line(reply)
        s, body, _ = server.request("POST", "/v1/rules", {"kind": "pin", "article": article, "target": SECRET["id"],
                                                        "position": "1"}, {"Authorization": f"Bearer {KEY}"})
        results["11 rule with position \"1\""] = str(s)
        req = urllib.request.Request(server.base + f"/v1/articles/{article}", data=b'{"not json', method="PUT",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e:
            results["11 PUT without key, malformed body"] = str(e.code)
    finally:
        server.close()
    # 4. restart: acknowledged writes the index never got
    extra = work / "late.jsonl"
    extra.write_text("".join(json.dumps({"id": f"late-{i}", "title": f"Late story {i}",
                                         "body": f"Story number {i} about the harbour bridge. " * 10}) + "\n"
                             for i in range(50)), encoding="utf-8")
    cli(tree, "ingest", str(extra), "--data-dir", str(folder))
    server = Served(tree, folder)
    try:
        started, articles = time.monotonic(), 0
        while time.monotonic() - started < 60:
            articles = json.loads(server.get("/readyz")[1])["articles"]
            if articles >= n + 50:
                break
            time.sleep(0.5)
        results["4 restart with 50 acknowledged, unpublished articles"] = (
            f"published after {round(time.monotonic() - started, 1)} s" if articles >= n + 50
            else f"index still at {articles} articles after 60 s")
    finally:
        server.close()
    # 10. information exposure: a server over an empty folder
    empty = work / "empty"
    server_env = {"RECOMMENDER_INDEX_POLL_SECONDS": "0.2"}
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                                "--data-dir", str(empty)], env={**os.environ, "PYTHONPATH": str(tree), **server_env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tree)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            results["10 503 before any index"] = "names the data folder" if str(empty) in text else "no path"
    finally:
        stop(process)
    return results


def throughput(trees: dict[str, Path], data: Path, work: Path, n: int, seconds: int, rounds: int) -> dict:
    folder = work / "data"
    build(trees["after"], data, folder, n)
    ids = [json.loads(line)["id"] for line in open(data / "bbc_news.jsonl", encoding="utf-8")][:200]
    paths = [f"/v1/articles/{i}/related?k=10" for i in ids]
    uvicorn = [sys.executable, "-m", "uvicorn", "recommender.api.app:app_from_environment", "--factory",
               "--port", "{port}", "--workers", "2", "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
    variants = {
        "before: plain httptools (bae1bd8)": (trees["before"], None),
        "plain httptools, this tree": (trees["after"], uvicorn + ["--http", "httptools"]),
        "after: httptools with limits (serve)": (trees["after"], None),
        "h11, 16 KiB header limit": (trees["after"], uvicorn + ["--http", "h11", "--h11-max-incomplete-event-size",
                                                                "16384"]),
    }
    kinds = {f"{label} c={c}": (ps, c) for c in (2, 8)
             for label, ps in (("related, 200 hot ids", paths), ("healthz", ["/healthz"]))}
    # All servers run at once; each round times every kind on every server
    # back to back, in alternating order, so a slow spell of the machine hits
    # all of them and the per-round ratio to "before" survives it.
    servers = {name: Served(tree, folder, workers=2, command=command) for name, (tree, command) in variants.items()}
    runs: dict[str, dict[str, list]] = {name: {kind: [] for kind in kinds} for name in variants}
    try:
        for round_no in range(rounds):
            for kind, (ps, c) in kinds.items():
                order = list(variants) if round_no % 2 == 0 else list(reversed(variants))
                for name in order:
                    runs[name][kind].append(wrk(servers[name].base, ps, seconds, c))
    finally:
        for server in servers.values():
            server.close()
    baseline = next(iter(variants))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_kind in runs.items():
        table[name] = {}
        for kind, rs in by_kind.items():
            ratios = [r["rps"] / b["rps"] for r, b in zip(rs, runs[baseline][kind]) if b["rps"]]
            table[name][kind] = {"rps": statistics.median(r["rps"] for r in rs),
                                 "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                                 "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                                 "non_2xx": sum(r["non_2xx"] for r in rs),
                                 "rps_vs_before": round(statistics.median(ratios), 3),
                                 "rps_each_round": [r["rps"] for r in rs]}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tree", type=Path, default=ROOT, help="source tree whose server is probed (default: this one)")
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--throughput", action="store_true", help="measure the protocol choices with wrk instead")
    parser.add_argument("--before-tree", type=Path, help="with --throughput: the tree before the fixes")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"cpu": cpu_flags(), "date": time.strftime("%Y-%m-%d"), "articles": args.articles}
    print("cpu:", json.dumps(report["cpu"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.throughput:
            if not shutil.which("wrk"):
                raise SystemExit("needs wrk: apt-get install wrk")
            if not args.before_tree:
                raise SystemExit("--throughput needs --before-tree")
            report["throughput"] = throughput({"before": args.before_tree.resolve(), "after": args.tree.resolve()},
                                              args.data, Path(tmp), args.articles, args.seconds, args.rounds)
            for name, kinds in report["throughput"].items():
                print(name)
                for kind, r in kinds.items():
                    print(f"  {kind:24s} {r['rps']:6.0f} req/s ({r['rps_vs_before']:.2f}x before)  "
                          f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}  "
                          f"rounds: {' '.join(f'{x:.0f}' for x in r['rps_each_round'])}")
        else:
            report["tree"] = str(args.tree)
            report["results"] = probes(args.tree.resolve(), args.data, Path(tmp), args.articles)
            for item, result in report["results"].items():
                print(f"{item:58s} {result}")
    print(json.dumps(report["cpu"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
