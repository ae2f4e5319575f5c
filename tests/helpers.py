"""Helpers the test modules share: the synthetic corpus, building an index,
the API key, error and polling checks, fault injection and a real
`recommender serve` process. Fixtures are in conftest.py; test modules import
from here (``from tests.helpers import ...``), never from another test module."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recommender.articles import parse_article
from recommender.embedders import Embedder, LazyEmbedder, resolve
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.pipeline import reindex
from recommender.store import SqliteStore, Store, StoredArticle

# A subprocess's timeout guards against a hang only: on 2 cores beside busy
# neighbours a step that takes seconds alone can take minutes, and that is not
# a failure.
HANG_GUARD = 1200

# -- the synthetic corpus ----------------------------------------------------------

TOPICS = {
    "talks": "mediators ceasefire border talks ministers negotiation mountain region peace envoy treaty velmora ostrakia",
    "bridge": "bridge harbour construction cost overrun steel engineers council contract crossing traffic",
    "football": "club league goal striker coach title match stadium season fans penalty",
    "drought": "drought heatwave farmers rain harvest water reservoir crops wells irrigation",
    "bank": "bank interest rate inflation prices economists lending mortgage currency growth",
}
NAMES = ["irena", "kalvos", "marek", "dunhill", "sofia", "brandt", "oskar", "lindqvist"]
FILLER = [f"w{i:03d}" for i in range(400)]  # words any article may use

PEACE_TALKS = {"hl-0001", "hl-0004", "hl-0008", "hl-0020", "hl-0021", "hl-0028"}
"""The peace-talks story of the shipped sample corpus (recommender/data/sample_articles.jsonl)."""


def make_corpus(per_topic: int = 6, seed: int = 7) -> list[dict]:
    """``per_topic`` articles on each of TOPICS, ids ``{topic}-{i}``, topic words among filler."""
    rng = np.random.default_rng(seed)
    rows = []
    for topic, words in TOPICS.items():
        vocab = words.split()
        for i in range(per_topic):
            sentences = []
            for _ in range(6):
                picked = list(rng.choice(vocab, size=4)) + list(rng.choice(FILLER, size=8))
                rng.shuffle(picked)
                sentences.append(" ".join(picked) + ".")
            rows.append({
                "id": f"{topic}-{i}",
                "title": f"{vocab[i % len(vocab)]} {vocab[(i + 3) % len(vocab)]}",
                "body": "\n\n".join([" ".join(sentences[:3]), " ".join(sentences[3:])]),
                "section": "world" if topic == "talks" else "local",
                "published": f"2025-0{1 + i % 9}-1{i % 10}",
                "group": topic,
            })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- an index and the API ----------------------------------------------------------

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def build_index(settings, rows, *, legacy_urls: dict[str, str] | None = None):
    """Ingest and publish ``rows``. ``legacy_urls`` are written straight into
    the store afterwards: URLs that releases before the http(s) check accepted
    (``javascript:``), which every output must still drop."""
    with SqliteStore.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in rows])
        for article_id, url in (legacy_urls or {}).items():
            store.connection.execute("UPDATE articles SET url = ? WHERE id = ?", (url, article_id))
        return reindex(settings, store, lazy(settings, lambda: SentenceTransformerEmbedder.load(settings.model)))


def lazy(settings, embedder: Embedder | Callable[[], Embedder]) -> LazyEmbedder:
    """What an entry point passes down (the backend resolved from ``settings``)
    over a model the test loaded, or a factory of one."""
    return LazyEmbedder(resolve(settings), embedder if callable(embedder) else lambda: embedder)


def samples(text: str, name: str) -> list:
    """The samples of metric ``name`` in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def stored_article(store: Store, article_id: str) -> StoredArticle:
    """``store.get(article_id)``, for an article the test expects in the store."""
    found = store.get(article_id)
    assert found is not None, f"{article_id} is not in the store"
    return found


def assert_error(response, status, field=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    if field:
        assert error["field"] == field


# -- fault injection ---------------------------------------------------------------


class PoisonEmbedder:
    """A real embedder that fails on any text holding "POISON" (a tokenizer
    bug, say): fault injection for the partial-failure paths."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dimension = inner, inner.model_id, inner.dimension

    def embed(self, texts, *, progress=False):
        if any("POISON" in t for t in texts):
            raise ValueError("cannot embed this text")
        return self.inner.embed(texts)


class NanEmbedder(PoisonEmbedder):
    """A real embedder whose vectors come back NaN for any text holding
    "POISON" (a damaged weight only some words reach), or for every text
    with ``everything``: the fault the embedding step must catch."""

    def __init__(self, inner, *, everything: bool = False):
        super().__init__(inner)
        self.everything = everything

    def embed(self, texts, *, progress=False):
        vectors = np.array(self.inner.embed(texts), dtype=np.float32)
        for row, text in enumerate(texts):
            if self.everything or "POISON" in text:
                vectors[row] = np.nan
        return vectors


KILLED_AT = """
import os, signal, sys
from importlib import import_module

target, nth, when, script = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
module_name, _, path = target.partition(":")
*owner_path, name = path.split(".")
owner = import_module(module_name)
for part in owner_path:
    owner = getattr(owner, part)
real = getattr(owner, name)
calls = 0

def at_the_point(*args, **kwargs):
    global calls
    calls += 1
    if calls == nth and when == "before":
        print(f"killed before call {nth} of {target}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if calls == nth and when == "after":
        print(f"killed after call {nth} of {target}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, name, at_the_point)
sys.argv = [sys.argv[0], *sys.argv[5:]]
exec(compile(script, "<killed-at>", "exec"))
"""
"""Runs ``script`` (its argv after the point) in a child that SIGKILLs itself
at a named point of the code: just before, or just after, the ``nth`` call
of ``module:attribute`` (a function, or a class's method)."""

CLI = "import sys\nfrom recommender.cli import main\nsys.exit(main(sys.argv[1:]))\n"

RECORDED = """
import sys
from importlib import import_module

module = import_module(sys.argv[1])
names, script = sys.argv[2].split(","), sys.argv[3]
calls = dict.fromkeys(names, 0)

def recording(name, real):
    def recorded(*args, **kwargs):
        calls[name] += 1
        print(f"operation {name} {calls[name]}", flush=True)
        return real(*args, **kwargs)
    return recorded

for name in names:
    setattr(module, name, recording(name, getattr(module, name)))
sys.argv = [sys.argv[0], *sys.argv[4:]]
exec(compile(script, "<recorded>", "exec"))
"""
"""Runs ``script`` (its argv after the names) in a child that prints
``operation <name> <n>`` before the ``n``-th call of each named function of
a module (the calls a function of the module makes to another go through
the module too, so they are recorded as well)."""


def recorded_calls(module: str, names: Sequence[str], script: str, *args) -> tuple[list[tuple[str, int]], str]:
    """Run a ``RECORDED`` child to its end (it must succeed): the calls it
    made, in order, as ``(name, n)`` (the ``n``-th call of ``module:name``,
    what ``killed_at`` takes), and the rest of its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", RECORDED, module, ",".join(names), script, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-2000:]
    calls, rest = [], []
    for line in done.stdout.splitlines():
        if line.startswith("operation "):
            _, name, nth = line.split()
            calls.append((name, int(nth)))
        else:
            rest.append(line)
    return calls, "\n".join(rest)


def killed_at(target: str, nth: int, when: str, script: str, *args, **popen) -> subprocess.Popen:
    """The child of ``KILLED_AT``, started; its stdout is a pipe of text lines
    (the last is the point where it died)."""
    assert when in ("before", "after")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", KILLED_AT, target, str(nth), when, script, *map(str, args)],
                            env=env, stdout=subprocess.PIPE, text=True, **popen)


def run_killed_at(target: str, nth: int, when: str, script: str, *args) -> list[str]:
    """Run a ``killed_at`` child to its end, assert that the point was reached
    (the child died by SIGKILL there), and return its stdout lines."""
    process = killed_at(target, nth, when, script, *args, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=HANG_GUARD)
    lines = out.splitlines()
    assert process.returncode == -signal.SIGKILL, f"the point was not reached ({process.returncode}): {err[-2000:]}"
    assert lines and lines[-1] == f"killed {when} call {nth} of {target}", lines[-3:]
    return lines


# -- a real server process ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`recommender serve` as a real process on 127.0.0.1, for end-to-end tests."""

    def __init__(self, data_dir: Path, model: Path | str, *, workers: int = 1, env: dict | None = None,
                 ready: bool = True):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(data_dir.parent / f"server-{self.port}.log", "w+")  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recommender.cli", "serve", "--port", str(self.port), "--workers", str(workers),
             "--data-dir", str(data_dir), "--model", str(model)],
            # The confidence floor is calibrated on MiniLM lists, not on the tiny test model.
            env={**os.environ, "HF_HUB_OFFLINE": "1", "RECOMMENDER_INDEX_POLL_SECONDS": "0.2",
                 "RECOMMENDER_MIN_CONFIDENCE": "0", **(env or {})},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready(path="/readyz" if ready else "/healthz")

    def wait_ready(self, timeout: float = 90.0, path: str = "/readyz") -> None:
        """Until ``path`` answers 200 (``/healthz``: the server is up, whether or not an index serves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, Any]:
        """The status and the body: parsed JSON where the answer is JSON, else its text."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in kind else raw.decode()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
