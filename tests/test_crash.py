"""A reindex killed with SIGKILL partway resumes without re-embedding, and ends
with the same index as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np

from recommender.segments import load_view
from recommender.version import IndexVersion
from tests.helpers import make_corpus, write_jsonl


def cli(*args, check: bool = False, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "recommender.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, check=check, **kwargs)


def count_rows(store_path, table: str) -> int:
    """Rows in a store table, read-only while another process may write (0 if unreadable)."""
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def embedded_rows(store_path) -> int:
    return count_rows(store_path, "embeddings")


def test_sigkill_during_embedding_then_rerun(tmp_path, tiny_model_dir):
    rows = make_corpus(per_topic=400)  # 2,000 articles: a few seconds of embedding
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for folder in (killed, clean):
        assert cli("ingest", data, "--data-dir", folder).returncode == 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "recommender.cli", "reindex", "--no-progress", "--data-dir", str(killed),
         "--model", str(tiny_model_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    store = killed / "store.sqlite"
    deadline = time.monotonic() + 120
    while embedded_rows(store) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = embedded_rows(store)
    assert 0 < done_before < len(rows), "the kill should land partway through embedding"
    assert not (killed / "index" / "CURRENT").exists()  # nothing half-published

    resumed = cli("reindex", "--json", "--no-progress", "--data-dir", killed, "--model", tiny_model_dir, check=True)
    report = json.loads(resumed.stdout)
    assert report["embedded"] == len(rows) - done_before and report["skipped"] == done_before
    assert cli("reindex", "--json", "--data-dir", killed, "--model", tiny_model_dir).stdout.count('"embedded": 0') == 1
    cli("reindex", "--no-progress", "--data-dir", clean, "--model", tiny_model_dir, check=True)

    a = IndexVersion.load(killed / "index")
    b = IndexVersion.load(clean / "index")
    np.testing.assert_array_equal(a.doc_ids, b.doc_ids)
    np.testing.assert_allclose(np.asarray(a.doc_vectors), np.asarray(b.doc_vectors), atol=1e-6)
    np.testing.assert_array_equal(a.story_ids, b.story_ids)
    np.testing.assert_array_equal(a.chunk_offsets, b.chunk_offsets)


def test_dry_run_changes_nothing(tmp_path, tiny_model_dir, corpus):
    folder = tmp_path / "d"
    cli("ingest", write_jsonl(tmp_path / "a.jsonl", corpus), "--data-dir", folder, check=True)
    out = cli("reindex", "--dry-run", "--data-dir", folder, "--model", tiny_model_dir, check=True).stdout
    assert "would embed 30 of 30 articles" in out and "no index published yet" in out
    assert not (folder / "index" / "CURRENT").exists() and embedded_rows(folder / "store.sqlite") == 0
    cli("reindex", "--data-dir", folder, "--model", tiny_model_dir, check=True)
    out = cli("reindex", "--dry-run", "--data-dir", folder, "--model", tiny_model_dir, check=True).stdout
    assert "would embed 0 of 30" in out and "current" in out
    report = json.loads(cli("reindex", "--dry-run", "--json", "--data-dir", folder, check=True).stdout)
    assert report["to_embed"] == 30 and "full rebuild" in report["reason"]  # the default model differs


def store_count(store_path) -> int:
    return count_rows(store_path, "articles")


def kill_when(process, ready, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def spawn(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "recommender.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, corpus):
    folder = tmp_path / "d"
    common = ["--data-dir", folder, "--model", tiny_model_dir]
    cli("ingest", write_jsonl(tmp_path / "first.jsonl", corpus), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)
    served = cli("related", "talks-1", "--json", *common, check=True).stdout

    big = [dict(r, id="new-" + r["id"]) for r in make_corpus(per_topic=3000)]  # 15,000 articles
    process = spawn("ingest", write_jsonl(tmp_path / "big.jsonl", big), *common)
    kill_when(process, lambda: store_count(folder / "store.sqlite") > len(corpus))
    after_kill = store_count(folder / "store.sqlite")
    assert len(corpus) < after_kill < len(corpus) + len(big), "the kill should land partway through the ingest"

    with sqlite3.connect(folder / "store.sqlite") as db:  # opens cleanly; whole batches only
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (after_kill - len(corpus)) % 1000 == 0
    assert cli("related", "talks-1", "--json", *common, check=True).stdout == served  # the old index serves

    report = json.loads(cli("ingest", tmp_path / "big.jsonl", "--json", *common, check=True).stdout)
    assert report["unchanged"] == after_kill - len(corpus) and report["added"] == len(corpus) + len(big) - after_kill
    with sqlite3.connect(folder / "store.sqlite") as db:
        total, distinct = db.execute("SELECT count(*), count(DISTINCT id) FROM articles").fetchone()
    assert total == distinct == len(corpus) + len(big)


def test_sigkill_during_publish_keeps_a_whole_version_serving(tmp_path, tiny_model_dir, corpus):
    folder = tmp_path / "d"
    common = ["--data-dir", folder, "--model", tiny_model_dir]
    cli("ingest", write_jsonl(tmp_path / "first.jsonl", corpus), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)
    old = (folder / "index" / "CURRENT").read_text()
    cli("ingest", write_jsonl(tmp_path / "more.jsonl", make_corpus(per_topic=600, seed=3)), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)  # embeds the 3,000 new articles; publishes
    middle = (folder / "index" / "CURRENT").read_text()
    assert middle != old

    staging = folder / "index" / "staging"
    process = spawn("reindex", "--force", "--no-progress", *common)  # no embedding: straight to build + publish
    kill_when(process, lambda: staging.is_dir() and any(any(p.iterdir()) for p in staging.iterdir()))
    current = (folder / "index" / "CURRENT").read_text()
    version = IndexVersion.load(folder / "index")  # a whole version, the old one or the new one
    assert len(version) == store_count(folder / "store.sqlite") == 3000
    assert current in (middle, version.name)
    with sqlite3.connect(folder / "store.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    report = json.loads(cli("reindex", "--force", "--json", "--no-progress", *common, check=True).stdout)
    assert report["embedded"] == 0 and report["published"]
    assert load_view(folder / "index").live_count == 3000
