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

from recommender.version import IndexVersion
from tests.conftest import make_corpus, write_jsonl


def cli(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "recommender.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, **kwargs)


def embedded_rows(store_path) -> int:
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    except sqlite3.Error:
        return 0


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
