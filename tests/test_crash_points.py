"""Crash points at every file operation of a publish, as storage engines test
them (SQLite's crash tests, Lucene's ``MockDirectoryWrapper``): not a few
chosen points, nor a timer, but each call of the directory module that
writes, renames, fsyncs, removes or locks, enumerated by running the publish
once with every such function recorded; then the publish again from the
same folder for each recorded call, SIGKILLed just before it and just after
it. After each kill the index folder verifies (``recommender.repair.verify``:
CURRENT, every version and segment, the store's ``integrity_check``), the
live view is the state before the publish or the state after it (so every
acknowledged write is served), and the next plain reindex publishes
everything the store holds.

For the context managers (``lock``, ``staging_version``,
``temporary_folder``) the call is the making of the manager: "after" is
before it is entered, and what it does inside is bounded by the calls it
makes and the next point."""

from __future__ import annotations

import inspect
import os
import shutil
import sqlite3
import time

import numpy as np
import pytest

from recommender import directory
from recommender.articles import parse_article
from recommender.config import Settings
from recommender.embed_jobs import LocalEngine, embed_stale
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.pipeline import ReindexReport, reindex
from recommender.repair import verify
from recommender.store import SqliteStore
from recommender.view import load_view
from tests.helpers import CLI, lazy, make_corpus, recorded_calls, run_killed_at

FILE_OPERATIONS = (
    "fsync", "fsync_dir", "replace", "write_atomically", "write_text", "lock", "write_current",
    "new_staging", "staging_version", "publish_version", "place_segment", "prune_segments",
    "remove_leftovers", "temporary_folder",
)
"""The public functions of ``recommender.directory`` that write, rename,
fsync, remove or lock: the crash points."""
READ_ONLY = ("new_name", "version_dir", "segments_dir", "read_current", "process_alive", "writer_pid")
"""Its public functions that only name or read."""

CONFIG = 'backend = "torch"\nmin_confidence = 0.0\nsegment_merge_fraction = 0.5\nkeep_versions = 1\n'
"""The few writes of these tests go into segments, articles embed on torch,
and a full build removes the version before it."""


def test_every_public_function_of_the_directory_module_is_a_crash_point_or_reads_only():
    """A new function that touches files is crash-tested below once it is
    named in FILE_OPERATIONS."""
    public = {name for name, value in vars(directory).items()
              if inspect.isfunction(value) and value.__module__ == directory.__name__ and not name.startswith("_")}
    assert public == set(FILE_OPERATIONS) | set(READ_ONLY)


def live_ids(index_root) -> list[int]:
    view = load_view(index_root)
    return sorted(view.doc_ids[view.live(np.arange(len(view)))].tolist())


@pytest.fixture
def template(tmp_path, tiny_model_dir, corpus):
    """A data folder with a version and a segment published (the
    acknowledged writes) and writes in the store that are not yet published:
    an update, new articles and a deletion, enough that the segment they make
    is merged with the one before it; those writes already embedded. Returns
    its settings, the embedder, the live state (doc ids), the state the
    store holds, and the acknowledged articles."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    settings = Settings.load({"data_dir": tmp_path / "template", "model": str(tiny_model_dir)},
                             environ={}, config_file=config)
    embedder = lazy(settings, SentenceTransformerEmbedder.load(settings.model))
    extra = make_corpus(per_topic=1, seed=11)
    by_id = {r["id"]: r for r in corpus}
    acknowledged = [dict(r, id="acked-" + r["id"]) for r in extra[:2]]
    with SqliteStore.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in corpus])
        reindex(settings, store, embedder)
        store.upsert([parse_article(r) for r in
                      [*acknowledged, dict(by_id["talks-2"], body=by_id["talks-2"]["body"] + " kalvos updated")]])
        acked = reindex(settings, store, embedder)
        assert acked.segment and acked.version
        # Past the readers' grace: the segment publish below removes this one once it is merged away.
        aged = time.time() - 2 * directory.SEGMENT_GRACE_SECONDS
        os.utime(directory.segments_dir(settings.index_root, acked.version) / acked.segment, (aged, aged))
        store.upsert([parse_article(r) for r in
                      [*(dict(r, id="pending-" + r["id"]) for r in extra[2:]), dict(by_id["bridge-1"], section="world")]])
        store.upsert([parse_article(dict(by_id["football-1"], body=by_id["football-1"]["body"] + " brandt updated"))])
        store.delete(["drought-3"])
        # Embedded now (as a reindex that died after its embedding step leaves them): the killed
        # publishes embed nothing, so they never load torch (seconds each).
        embed_stale(settings, store, LocalEngine(embedder.get), store.stale_embeddings(embedder.key), embedder.key,
                    ReindexReport())
        new = sorted(store.content_hashes())
    old = live_ids(settings.index_root)
    assert old != new
    return settings, embedder, old, new, [r["id"] for r in acknowledged]


def problems_after_the_kill(settings: Settings, embedder, old, new, acknowledged) -> list[str]:
    """What is wrong with the folder a killed publish left ([] when nothing)."""
    report = verify(settings)
    if not report.ok:
        return [f"verify: {c.kind} {c.name}: {c.problems}" for c in report.failed()]
    problems = []
    live = live_ids(settings.index_root)  # CURRENT names a view that loads
    if live not in (old, new):
        problems.append(f"the live view is neither the state before the publish nor the one after: {len(live)} articles")
    with sqlite3.connect(settings.store_path) as db:
        if (check := db.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {check}")
    with SqliteStore.open(settings.store_path) as store:
        served = set(live)
        problems += [f"acknowledged {a} is not served" for a in acknowledged
                     if (article := store.get(a)) is None or article.doc_id not in served]
        reindex(settings, store, embedder)  # the next plain reindex
        if live_ids(settings.index_root) != sorted(store.content_hashes()):
            problems.append("the next reindex did not publish what the store holds")
    if not (after := verify(settings)).ok:
        problems += [f"verify after the next reindex: {c.kind} {c.name}: {c.problems}" for c in after.failed()]
    return problems


@pytest.mark.parametrize("publish, args", [
    ("segment", ()),  # the writes as a segment, merged with the one before it; CURRENT; the old segments pruned
    ("full", ("--full",)),  # a new version built, placed, CURRENT, the old versions and stagings pruned
])
def test_sigkill_before_and_after_every_file_operation_of_a_publish(template, tmp_path, publish, args):
    settings, embedder, old, new, acknowledged = template

    def command(folder) -> list:
        return ["reindex", *args, "--json", "--no-progress", "--data-dir", folder, "--model", settings.model,
                "--config", settings.config_file]

    recorded = tmp_path / "recorded"
    shutil.copytree(settings.data_dir, recorded)
    operations, out = recorded_calls("recommender.directory", FILE_OPERATIONS, CLI, *command(recorded))
    assert '"published": true' in out and '"embedded": 0' in out and ('"segment": null' in out) == (publish == "full"), out
    assert live_ids(recorded / "index") == new
    # What the live view no longer names was removed: the version before a full build; the segment
    # before a segment publish, past its grace (the new one it was merged with stays within its own).
    versions = sorted((recorded / "index" / directory.VERSIONS).iterdir())
    segments = directory.segments_dir(recorded / "index", versions[-1].name)
    assert len(versions) == 1 and len(list(segments.glob("*"))) == (2 if publish == "segment" else 0)
    names = {name for name, _ in operations}
    assert {"replace", "write_current", "fsync", "fsync_dir", "lock"} <= names
    assert ("place_segment" in names) == (publish == "segment") and ("publish_version" in names) == (publish == "full")

    failures = []
    for name, nth in operations:
        for when in ("before", "after"):
            folder = tmp_path / "killed"
            shutil.copytree(settings.data_dir, folder)
            try:
                run_killed_at(f"recommender.directory:{name}", nth, when, CLI, *command(folder))
                problems = problems_after_the_kill(settings.replace(data_dir=folder), embedder, old, new, acknowledged)
            except Exception as exc:  # a folder that does not even load: reported with the others
                problems = [f"{type(exc).__name__}: {exc}"]
            failures += [f"{when} {name} #{nth}: {p}" for p in problems]
            shutil.rmtree(folder)
    print(f"{publish} publish: {len(operations)} file operations, {2 * len(operations)} kill points")
    if failures:
        pytest.fail(f"{len(failures)} of {2 * len(operations)} kill points:\n" + "\n".join(failures))
