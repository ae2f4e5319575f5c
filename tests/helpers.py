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
from pathlib import Path

import numpy as np

from recommender.articles import parse_article
from recommender.embed import SentenceTransformerEmbedder
from recommender.pipeline import reindex
from recommender.store import Store

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
    with Store.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in rows])
        for article_id, url in (legacy_urls or {}).items():
            store.connection.execute("UPDATE articles SET url = ? WHERE id = ?", (url, article_id))
        return reindex(settings, store, lambda: SentenceTransformerEmbedder.load(settings.model))


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


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


# -- a real server process ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`recommender serve` as a real process on 127.0.0.1, for end-to-end tests."""

    def __init__(self, data_dir: Path, model: Path, *, workers: int = 1, env: dict | None = None):
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
        self.wait_ready()
    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict | str]:
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
