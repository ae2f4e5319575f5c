"""Commands killed with SIGKILL at named points of the code (``killed_at``:
the process kills itself there, so every run dies at the same place): a
reindex resumes without re-embedding and ends with the index of an
uninterrupted run, an ingest keeps whole batches, a publish leaves a whole
version serving."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from recommender import directory
from recommender.embed_jobs import EMBED_BATCH_DOCS
from recommender.ingest import BATCH as INGEST_BATCH
from recommender.version import IndexVersion
from recommender.view import load_view
from tests.helpers import CLI, make_corpus, run_killed_at, write_jsonl


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
    """Killed right after its third embedding job was checkpointed: those
    articles are kept and not embedded again, nothing is published, and the
    rerun ends with the index of an uninterrupted run."""
    rows = make_corpus(per_topic=400)  # 2,000 articles: 8 jobs of 256
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for folder in (killed, clean):
        assert cli("ingest", data, "--data-dir", folder).returncode == 0

    run_killed_at("recommender.store.sqlite:SqliteStore.save_embeddings", 3, "after", CLI,
                  "reindex", "--no-progress", "--data-dir", killed, "--model", tiny_model_dir)
    done_before = embedded_rows(killed / "store.sqlite")
    assert done_before == 3 * EMBED_BATCH_DOCS  # three whole jobs, checkpointed
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


def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, corpus):
    """Killed right after its third batch was committed: whole batches only,
    the old index serves, and a rerun adds the rest without duplicates."""
    folder = tmp_path / "d"
    common = ["--data-dir", folder, "--model", tiny_model_dir]
    cli("ingest", write_jsonl(tmp_path / "first.jsonl", corpus), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)
    served = cli("related", "talks-1", "--json", *common, check=True).stdout

    big = [dict(r, id="new-" + r["id"]) for r in make_corpus(per_topic=1000)]  # 5,000 articles
    run_killed_at("recommender.store.sqlite:SqliteStore.upsert", 3, "after", CLI,
                  "ingest", write_jsonl(tmp_path / "big.jsonl", big), *common)
    after_kill = store_count(folder / "store.sqlite")
    assert after_kill == len(corpus) + 3 * INGEST_BATCH

    with sqlite3.connect(folder / "store.sqlite") as db:  # opens cleanly
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert cli("related", "talks-1", "--json", *common, check=True).stdout == served  # the old index serves

    report = json.loads(cli("ingest", tmp_path / "big.jsonl", "--json", *common, check=True).stdout)
    assert report["unchanged"] == after_kill - len(corpus) and report["added"] == len(corpus) + len(big) - after_kill
    with sqlite3.connect(folder / "store.sqlite") as db:
        total, distinct = db.execute("SELECT count(*), count(DISTINCT id) FROM articles").fetchone()
    assert total == distinct == len(corpus) + len(big)


@pytest.mark.parametrize("point, when, serves", [
    ("recommender.directory:publish_version", "before", "middle"),  # the new version written, not in place
    ("recommender.directory:write_current", "before", "middle"),  # in place, CURRENT not yet replaced
    ("recommender.directory:write_current", "after", "new"),  # CURRENT replaced, old versions not yet pruned
])
def test_sigkill_during_publish_keeps_a_whole_version_serving(tmp_path, tiny_model_dir, corpus, point, when, serves):
    folder = tmp_path / "d"
    common = ["--data-dir", folder, "--model", tiny_model_dir]
    cli("ingest", write_jsonl(tmp_path / "first.jsonl", corpus), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)
    old = (folder / "index" / "CURRENT").read_text()
    cli("ingest", write_jsonl(tmp_path / "more.jsonl", make_corpus(per_topic=600, seed=3)), *common, check=True)
    cli("reindex", "--no-progress", *common, check=True)  # embeds the 3,000 new articles; publishes
    middle = (folder / "index" / "CURRENT").read_text()
    assert middle != old

    # No embedding: straight to build and publish, killed at the point.
    run_killed_at(point, 1, when, CLI, "reindex", "--force", "--no-progress", *common)
    current = (folder / "index" / "CURRENT").read_text()
    assert (current == middle) == (serves == "middle")
    version = IndexVersion.load(folder / "index")  # a whole version
    assert len(version) == store_count(folder / "store.sqlite") == 3000
    assert directory.read_current(folder / "index") == (version.name, ())
    with sqlite3.connect(folder / "store.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    report = json.loads(cli("reindex", "--force", "--json", "--no-progress", *common, check=True).stdout)
    assert report["embedded"] == 0 and report["published"]
    assert load_view(folder / "index").live_count == 3000
