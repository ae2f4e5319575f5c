"""Segments: writes published beside the live version, in seconds.

A segment plus its version ranks as a full rebuild with the version's
keyword statistics frozen; the in-memory filters select what the SQL they
replace selects; a killed writer leaves the old state or the new one; readers
never fail while segments and full builds are published; a replica copied
file by file (CURRENT last) never serves a torn state."""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import threading
import time

import numpy as np
import pytest

import recommender.view as views_module
from recommender import build, directory, integrity, pipeline
from recommender.articles import parse_article
from recommender.directory import CURRENT
from recommender.embedders import model_id_for
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.filters import FilterColumns, Filters
from recommender.lexical import Bm25Model, TfidfModel, keyword_rows
from recommender.pipeline import reindex
from recommender.rank.related import related_to_row
from recommender.rank.search import search
from recommender.service import Engine, LiveIndex, Reindexer
from recommender.store import SqliteStore
from recommender.store.sqlite import filter_sql
from recommender.version import IndexVersion
from recommender.view import load_view
from tests.helpers import HANG_GUARD, lazy, make_corpus, run_killed_at, stored_article


@pytest.fixture
def embedder(settings):
    return SentenceTransformerEmbedder.load(settings.model)


@pytest.fixture
def segmented(settings):
    """Settings under which the tests' few writes go into segments."""
    return settings.replace(segment_merge_fraction=0.5)


def publish(settings, store, embedder, rows=(), deleted=(), **kwargs):
    if rows:
        store.upsert([parse_article(r) for r in rows])
    if deleted:
        store.delete(list(deleted))
    return reindex(settings, store, lazy(settings, embedder), **kwargs)


def writes(corpus):
    """An update, a metadata change, a wire copy, new articles, a deletion."""
    by_id = {r["id"]: r for r in corpus}
    return [
        dict(by_id["talks-2"], body=by_id["talks-2"]["body"] + " kalvos brandt updated"),
        dict(by_id["bridge-1"], section="world"),
        dict(by_id["talks-1"], id="wire-talks-1", published="2025-12-30"),
        *[dict(r, id="new-" + r["id"], published="2026-01-0" + str(1 + i)) for i, r in
          enumerate(make_corpus(per_topic=1, seed=11))],
    ], ["drought-3"]


def test_writes_go_into_a_segment_and_deletes_leave_at_once(segmented, corpus, embedder):
    with SqliteStore.open(segmented.store_path) as store:
        first = publish(segmented, store, embedder, corpus)
        rows, deleted = writes(corpus)
        report = publish(segmented, store, embedder, rows, deleted)
        assert report.segment and report.version == first.version and report.published
        assert report.embedded == 1 + 1 + 5  # the update, the copy, the new ones; the metadata change keeps its vectors
        name, segments = directory.read_current(segmented.index_root)
        assert name == first.version and segments == (report.segment,)
        view = load_view(segmented.index_root)
        assert view.live_count == store.count() == 30 - 1 + 1 + 5
        assert store.get("drought-3") is None
        row = view.row_of(stored_article(store, "talks-2").doc_id)
        assert row is not None and row >= 30
        # Nothing changed: nothing published, and no full-table read either.
        assert not publish(segmented, store, embedder).published


def test_segment_plus_version_ranks_as_a_rebuild_with_frozen_idf(segmented, corpus, embedder, monkeypatch):
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
        rows, deleted = writes(corpus)
        publish(segmented, store, embedder, rows, deleted)
        view = load_view(segmented.index_root)
        base = IndexVersion.load(segmented.index_root, name=view.name)

        def frozen(titles, bodies):
            tfidf, bm25, entities = keyword_rows(base.tfidf, base.bm25, base.entities, titles, bodies)
            stats = base.bm25
            return (TfidfModel(base.tfidf.vocabulary, base.tfidf.idf, tfidf),
                    Bm25Model(stats.vocabulary, bm25.tocsc(), stats.idf, avgdl=stats.avgdl, k1=stats.k1, b=stats.b),
                    TfidfModel(base.entities.vocabulary, base.entities.idf, entities))

        monkeypatch.setattr(build, "build_keyword_models", frozen)
        rebuilt_report = publish(segmented, store, embedder, full=True)
        assert rebuilt_report.published and not rebuilt_report.segment
        rebuilt = load_view(segmented.index_root)
        assert not rebuilt.segments and rebuilt.live_count == view.live_count

        def ranked(version, hits):
            return sorted(((h.doc_id, round(h.score, 4)) for h in hits), key=lambda x: (-x[1], x[0]))

        live = sorted(view.doc_ids[view.alive].tolist())
        assert live == sorted(rebuilt.doc_ids.tolist())
        wire = stored_article(store, "wire-talks-1").doc_id
        original = stored_article(store, "talks-1").doc_id
        assert view.story_ids[view.row_of(wire)] == view.row_of(original)  # the copy joined its original's story
        for doc_id in live:
            row, rebuilt_row = view.row_of(doc_id), rebuilt.row_of(doc_id)
            assert row is not None and rebuilt_row is not None, doc_id
            a = related_to_row(view, row, 8, segmented)
            b = related_to_row(rebuilt, rebuilt_row, 8, segmented)
            assert ranked(view, a) == ranked(rebuilt, b), doc_id
            assert wire not in {h.doc_id for h in a} or original not in {h.doc_id for h in a}
        for query in ["peace talks envoy", "bridge harbour cost", "kalvos brandt", "drought farmers"]:
            vector = embedder.embed([query])[0]
            assert ranked(view, search(view, vector, query, 8, segmented)) == \
                ranked(rebuilt, search(rebuilt, vector, query, 8, segmented))


def test_tiered_merging_keeps_segments_few(segmented, corpus, embedder):
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
        extra = make_corpus(per_topic=4, seed=5)
        for i, row in enumerate(extra):
            publish(segmented, store, embedder, [dict(row, id=f"more-{i}")])
            _, segments = directory.read_current(segmented.index_root)
            assert 1 <= len(segments) <= 6
        view = load_view(segmented.index_root)
        assert view.live_count == store.count() == 50
        on_disk = {p.name for p in (segmented.index_root / "versions" / view.name / "segments").iterdir()}
        assert set(view.segments) <= on_disk


def sql_rows(store, version, filters: Filters) -> list[int]:
    where, params = filter_sql(filters)
    doc_ids = [r[0] for r in store.connection.execute(f"SELECT doc_id FROM articles WHERE {where}", params)]
    return sorted(version.rows_of(np.array(doc_ids, dtype=np.int64)).tolist())


def test_filter_columns_select_what_the_sql_selects(tmp_path):
    rng = np.random.default_rng(3)
    dates = [None, "2024-05-31", "2024-05-31T10:00:00", "2024-05-31T23:59:59+05:30", "2024-06-01",
             "2023-12-31T00:00:00+00:00", "2024-05-30"]
    rows = []
    for i in range(400):
        rows.append({
            "id": f"a{i}", "title": f"title {i}", "body": f"body number {i} with some words",
            "lang": [None, "en", "fr", "de"][int(rng.integers(4))] or "en",
            "section": [None, "world", "local", "sport"][int(rng.integers(4))],
            "tags": sorted({["ukraine", "nato", "fire", "élections", "a,b"][int(t)] for t in rng.integers(0, 5, int(rng.integers(0, 4)))}),
            "published": dates[int(rng.integers(len(dates)))],
        })
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([parse_article(r) for r in rows])
        store.connection.execute("UPDATE articles SET lang = NULL WHERE doc_id % 7 = 0")  # unknown language
        articles = [s.article for s in store.iter_articles()]
        doc_ids = np.array([s.doc_id for s in store.iter_articles()], dtype=np.int64)

        class Rows:  # the version's row lookup over these articles
            def rows_of(self, ids):
                return np.searchsorted(doc_ids, ids)

        columns = FilterColumns.build(articles)
        columns.save(tmp_path / "columns.npz")
        loaded = FilterColumns.load(tmp_path / "columns.npz")
        cases = [Filters(), Filters(section="world"), Filters(lang="fr"), Filters(same_language="de"),
                 Filters(same_language="xx"), Filters(tag="nato"), Filters(tag="élections"), Filters(tag="a,b"),
                 Filters(tag="none"), Filters(since="2024-05-31"), Filters(until="2024-05-31"),
                 Filters(since="2024-05-31T12:00:00"), Filters(until="2024-05-31T10:00:00"),
                 Filters(section="local", tag="fire", since="2024-01-01", until="2024-06-01"),
                 Filters(lang="en", same_language="en", tag="ukraine")]
        for filters in cases:
            expected = sql_rows(store, Rows(), filters)
            for cols in (columns, loaded):
                assert np.flatnonzero(cols.mask(filters)).tolist() == expected, filters
        assert sum(len(sql_rows(store, Rows(), f)) for f in cases) > 400  # the cases select something


def test_a_related_request_reads_the_store_by_index_only(segmented, corpus, embedder):
    """The hot path's store reads are few, and none scans the articles table
    (the language filter read every row before: 100 ms at 100k articles)."""
    rows = [dict(r, lang="en") for r in corpus] + [dict(corpus[0], id="fr-1", lang="fr")]
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, rows)
        publish(segmented, store, embedder, [dict(corpus[1], id="fresh", lang="en")])
    with Engine.open(segmented, lazy(segmented, embedder)) as engine:
        served = engine.stores.get()
        assert isinstance(served, SqliteStore)  # the default store: its connection is traced
        statements: list[str] = []
        served.connection.set_trace_callback(statements.append)
        engine.related("talks-1", 5)  # uncached
        uncached = list(statements)
        statements.clear()
        engine.related("talks-1", 5)  # cached
        cached = list(statements)
        engine.related("talks-1", 5, Filters.parse(section="world", since="2025-01-01"))
        served.connection.set_trace_callback(None)
        assert 0 < len(cached) <= len(uncached) <= 12
        for sql in set(uncached + statements):
            plan = " ".join(str(r[-1]) for r in served.connection.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN articles" not in plan, (sql, plan)


def test_readers_never_fail_while_segments_and_full_builds_publish(segmented, corpus, embedder):
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
    failures: list[BaseException] = []
    reads = [0]
    stop = threading.Event()
    with Engine.open(segmented, lazy(segmented, embedder)) as engine:
        engine.live.watch(0.02)

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                try:
                    article = corpus[int(rng.integers(len(corpus)))]["id"]
                    assert engine.related(article, 5)
                    engine.search("peace talks envoy", 5)
                    reads[0] += 1
                except BaseException as exc:  # noqa: BLE001 - any failed read fails the test
                    failures.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            with SqliteStore.open(segmented.store_path) as store:
                for i, row in enumerate(make_corpus(per_topic=2, seed=9)):
                    update = dict(corpus[i % len(corpus)], body=corpus[i % len(corpus)]["body"] + f" updated {i}")
                    publish(segmented, store, embedder, [dict(row, id=f"w-{i}"), update], full=i % 4 == 3)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not failures, failures[:3]
    assert reads[0] > 10


WRITER = """
import sys
from recommender.articles import parse_article
from recommender.config import Settings
from recommender.embedders import LazyEmbedder, resolve
from recommender.pipeline import reindex
from recommender.store import SqliteStore
settings = Settings.load({"backend": "torch", "data_dir": sys.argv[1], "model": sys.argv[2], "segment_merge_fraction": 1.0}, environ={})
embedder = LazyEmbedder(resolve(settings))
start = int(sys.argv[3])
with SqliteStore.open(settings.store_path) as store:
    for i in range(start, start + 10_000):
        body = "peace envoy talks w%03d w%03d mediators ceasefire border ministers region treaty." % (i % 400, (7 * i) % 400)
        store.upsert([parse_article({"id": f"live-{i}", "title": f"talks {i}", "body": body * 3})])
        if i % 3 == 0:
            store.delete([f"live-{i - 1}"])
        reindex(settings, store, embedder)
        print(i, flush=True)
"""
"""Writes and publishes segments without end, printing each acknowledged write's number."""

KILL_POINTS = [(1, "before"), (2, "after"), (3, "before"), (4, "after"), (5, "before"), (7, "after")]
"""Calls of ``directory.replace`` (each rename that brings a segment, a merged
segment or CURRENT into place) at which the writer dies: before the rename,
and after it."""


@pytest.mark.parametrize("nth, when", KILL_POINTS)
def test_sigkill_while_publishing_segments_leaves_a_whole_state(settings, corpus, embedder, nth, when):
    with SqliteStore.open(settings.store_path) as store:
        publish(settings, store, embedder, corpus)
    lines = run_killed_at("recommender.directory:replace", nth, when, WRITER, settings.data_dir, settings.model, 0)
    acknowledged = [int(line) for line in lines[:-1]]
    view = load_view(settings.index_root)  # every segment CURRENT names is whole
    live = view.doc_ids[view.live(np.arange(len(view)))]
    assert len(np.unique(live)) == len(live)
    with SqliteStore.open(settings.store_path) as store:
        for number in acknowledged:  # an acknowledged publish is served (unless a later write deleted it)
            acked = store.get(f"live-{number}")
            assert acked is None or acked.doc_id in set(live.tolist())
    with sqlite3.connect(settings.store_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SqliteStore.open(settings.store_path) as store:  # the next run publishes what the killed one left
        publish(settings, store, embedder)
        view = load_view(settings.index_root)
        assert sorted(view.doc_ids[view.live(np.arange(len(view)))].tolist()) == sorted(store.content_hashes())


def copy_store(source, target) -> None:
    """A live SQLite file is copied with its backup API (or litestream), not file by file."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def copy_as_rsync(source, target, after_each=None) -> None:
    """Copy every file of an index folder, each through a temporary name then
    a rename (as rsync does), in path order, with CURRENT last; files the
    source no longer has are removed at the end (``--delete-after``).
    ``after_each()`` runs after each file is in place."""
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    current = [f for f in files if f.name == CURRENT]
    for rel in [f for f in files if f.name != CURRENT] + current:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and dest.stat().st_size == (source / rel).stat().st_size and rel.name != CURRENT:
            continue  # unchanged (version and segment files never change)
        tmp = dest.parent / f".{dest.name}.partial"
        shutil.copyfile(source / rel, tmp)
        os.replace(tmp, dest)
        if after_each is not None:
            after_each()
    for path in sorted(target.rglob("*"), reverse=True):
        rel = path.relative_to(target)
        if not (source / rel).exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_replica_copied_file_by_file_never_serves_a_torn_state(segmented, corpus, embedder, tmp_path):
    """After every file the copy brings (segments, whole versions, CURRENT
    last), the replica reloads and answers: always a whole published state,
    the old one until CURRENT arrives, then the new one."""
    replica = segmented.replace(data_dir=tmp_path / "replica", api_key="")
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
    replica.data_dir.mkdir()
    copy_store(segmented.store_path, replica.store_path)
    copy_as_rsync(segmented.index_root, replica.index_root)
    with Engine.open(replica, lazy(replica, embedder)) as engine:
        states = [engine.live.current.state]
        served: list[str] = []

        def read_the_replica() -> None:
            engine.live.refresh()
            served.append(engine.live.current.state)
            assert served[-1] in states[-2:]  # the state before this copy, or the one it brings
            assert engine.related("talks-1", 5)
            engine.search("peace talks", 5)

        with SqliteStore.open(segmented.store_path) as store:
            for i, full in enumerate([False, False, True, False]):
                row = dict(make_corpus(per_topic=1, seed=20 + i)[0], id=f"replica-{i}")  # on talks-5's topic
                publish(segmented, store, embedder, [row], full=full)
                name, segments = directory.read_current(segmented.index_root)
                assert name is not None  # just published
                states.append(f"{name}+{segments[-1]}" if segments else name)
                copy_store(segmented.store_path, replica.store_path)  # the store first: it holds the articles
                copied = len(served)
                copy_as_rsync(segmented.index_root, replica.index_root, read_the_replica)
                assert len(served) - copied >= 2  # read while files arrived, and once CURRENT had
                assert served[copied] == states[-2] and served[-1] == states[-1]  # CURRENT is copied last
        related = [i.id for i in engine.related("talks-5", 10)]
    assert set(served) == set(states[1:]) | {states[0]}
    assert any(r.startswith("replica-") for r in related)
    assert json.loads((replica.index_root / "versions" / states[-1].split("+")[0] / "manifest.json").read_text())


def test_the_server_publishes_segments_and_merges_them_in_the_background(settings, corpus, embedder):
    """Each write is served as a segment as soon as its job publishes (waited
    on: the served view's write number), while the full build that the second
    write makes due runs in its own thread (joined); what it did not hold is a
    segment of the new version."""
    served = settings.replace(api_key="k", segment_merge_fraction=0.05)  # 30 articles: the second write is past it
    with SqliteStore.open(served.store_path) as store:
        first = publish(served, store, embedder, corpus).version
    with Engine.open(served, lazy(served, embedder)) as engine:
        reindexer = Reindexer(served, engine, debounce=0.05).start()
        try:
            for i, row in enumerate(make_corpus(per_topic=1, seed=31)[:4]):
                engine.upsert([parse_article(dict(row, id=f"bg-{i}"))])
                reindexer.request()
                assert engine.live.wait_for(engine.stores.get().seq(), timeout=600), i
                assert engine.live.current.row_of(stored_article(engine.stores.get(), f"bg-{i}").doc_id) is not None
            assert reindexer.merge_thread is not None  # started by the job of a write, not waited for
            reindexer.merge_thread.join()
            assert directory.read_current(served.index_root)[0] != first
            engine.live.refresh()
            assert engine.live.current.name != first
            reindexer.request()  # whatever the merge did not hold is published as a segment of the new version
            assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)
            assert engine.live.current.live_count == 34
        finally:
            reindexer.close()
    view = load_view(served.index_root)
    assert view.name != first and view.live_count == 34 and reindexer.last_error is None


def test_a_writer_keeps_the_parts_of_the_view_it_read_when_a_reader_loads_another(
    segmented, corpus, embedder, monkeypatch
):
    """A reader that read CURRENT before a publish may load that older state
    while the writer builds its segment: the writer's version and segments
    stay those of the view it read (it once took them from the shared
    ``Views``, and published a CURRENT that dropped the earlier segment)."""
    from recommender.view import Views

    with SqliteStore.open(segmented.store_path) as store:
        first = publish(segmented, store, embedder, corpus).version
        later = make_corpus(per_topic=1, seed=41)[:2]
        publish(segmented, store, embedder, [dict(later[0], id="w-0")])
        views = Views(segmented.index_root)
        assert views.current_parts() is not None
        real = pipeline.build_segment

        def a_slow_reader_loads_the_older_state(*args, **kwargs):
            views.load(first, ())  # CURRENT as it was before the segment of w-0
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, "build_segment", a_slow_reader_loads_the_older_state)
        report = publish(segmented, store, embedder, [dict(later[1], id="w-1")], views=views)
        assert report.segment and report.version == first
        view = load_view(segmented.index_root)
        assert all(view.row_of(stored_article(store, a).doc_id) is not None for a in ("w-0", "w-1"))


def test_a_failed_background_publish_is_tried_again_without_another_write(settings, corpus, embedder, monkeypatch):
    served = settings.replace(api_key="k", segment_merge_fraction=0.5)
    with SqliteStore.open(served.store_path) as store:
        publish(served, store, embedder, corpus)
    calls = []
    real = pipeline.build_segment

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_segment", fails_once)
    with Engine.open(served, lazy(served, embedder)) as engine:
        reindexer = Reindexer(served, engine, debounce=0.05).start()
        try:
            engine.upsert([parse_article(dict(make_corpus(per_topic=1, seed=43)[0], id="retry-0"))])
            reindexer.request()  # the only request: the retry needs no other
            doc_id = stored_article(engine.stores.get(), "retry-0").doc_id
            assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)
            assert engine.live.current.row_of(doc_id) is not None
        finally:
            reindexer.close()
    assert len(calls) >= 2 and reindexer.last_error is None


def test_one_background_check_per_version_however_many_segments_are_served(segmented, corpus, embedder,
                                                                           monkeypatch):
    """A server serves a version before its large files' checksums are summed
    (a thread, ``index-verify``); segments published meanwhile are served on
    the same version, and start no second pass over its files."""
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
    monkeypatch.setattr(integrity, "SYNC_CHECKSUM_BYTES", 0)  # every file is summed in the background
    release = threading.Event()
    real = integrity.check_checksums

    def held_in_the_background(*args, **kwargs):
        if threading.current_thread().name == "index-verify":
            release.wait(HANG_GUARD)  # the pass takes as long as the test needs (seconds at 1M articles)
        return real(*args, **kwargs)

    def checks() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "index-verify" and t.is_alive() and t not in before]

    before = set(threading.enumerate())
    monkeypatch.setattr(integrity, "check_checksums", held_in_the_background)
    try:
        with Engine.open(segmented, lazy(segmented, embedder), background_checksums=True) as engine:
            assert engine.live.checksums == "checking" and len(checks()) == 1
            for i, row in enumerate(make_corpus(per_topic=1, seed=51)[:3]):
                with SqliteStore.open(segmented.store_path) as store:
                    assert publish(segmented, store, embedder, [dict(row, id=f"bg-{i}")]).segment
                assert engine.live.refresh()
                assert engine.live.current.segments and engine.live.checksums == "checking"
                assert len(checks()) == 1, [t.name for t in checks()]
            release.set()
            for thread in checks():
                thread.join(HANG_GUARD)
            assert engine.live.checksums == "verified"
    finally:
        release.set()


def test_the_servers_merge_of_segments_loads_no_second_copy_of_the_version(settings, corpus, embedder, monkeypatch):
    """Metadata changes leave the corpus hash as it was: the server's
    background merge of their segments rebuilds because of the segments,
    without loading and verifying the served version a second time beside
    the server's own (at 1M articles: a second copy of the index in memory
    and seconds of checksums)."""
    served = settings.replace(api_key="k", segment_merge_fraction=0.05)  # 30 articles: two changed are past it
    with SqliteStore.open(served.store_path) as store:
        first = publish(served, store, embedder, corpus).version
    loads: list[tuple[str, str | None]] = []
    real = IndexVersion.load

    def counted(cls, *args, **kwargs):
        loads.append((threading.current_thread().name, kwargs.get("name")))
        return real(*args, **kwargs)

    with Engine.open(served, lazy(served, embedder)) as engine:
        monkeypatch.setattr(IndexVersion, "load", classmethod(counted))
        reindexer = Reindexer(served, engine, debounce=0.05).start()
        try:
            engine.upsert([parse_article(dict(row, section="culture")) for row in corpus[:2]])
            reindexer.request()
            assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)
            assert engine.live.current.segments and reindexer.merge_thread is not None
            reindexer.merge_thread.join()
        finally:
            reindexer.close()
    assert directory.read_current(served.index_root)[0] != first and reindexer.last_error is None
    assert ("merge", first) not in loads, loads  # the merge thread loads the new version to serve it, that is all


# -- a reader that loads while a writer publishes and prunes -----------------------------------


class HeldReader:
    """A reader thread (``LiveIndex.refresh``) held at each load of a part
    (``target`` wraps the loader, a named point) until the test lets it go;
    a writer runs in the test's thread meanwhile."""

    def __init__(self, live: LiveIndex):
        self.live = live
        self.arrived: queue.Queue[str] = queue.Queue()
        self.proceed: queue.Queue[None] = queue.Queue()
        self.released = threading.Event()
        self.thread = threading.Thread(target=live.refresh, name="held-reader")

    def wrap(self, load):
        def held(*args, **kwargs):
            if threading.current_thread() is self.thread and not self.released.is_set():
                self.arrived.put(str(kwargs.get("name") or args[-1]))
                self.proceed.get(timeout=HANG_GUARD)
            return load(*args, **kwargs)
        return held

    def at_load(self) -> str:
        return self.arrived.get(timeout=HANG_GUARD)

    def go(self) -> None:
        self.proceed.put(None)

    def finish(self) -> None:
        self.released.set()
        self.proceed.put(None)
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive()


def test_a_segment_merged_away_while_a_reader_loads_it_is_no_refusal(segmented, corpus, embedder, monkeypatch):
    """A reader reads CURRENT, then loads the segments it names; meanwhile a
    writer's merge replaces a segment published long ago and removes it at
    once. The missing segment is no damage: CURRENT has moved on, the reader
    reads it again and serves what it names now (it once served the version
    without its segments, logged a refusal and asked for a rebuild)."""
    with SqliteStore.open(segmented.store_path) as store:
        publish(segmented, store, embedder, corpus)
        rows = make_corpus(per_topic=1, seed=61)
        first = publish(segmented, store, embedder, [dict(rows[0], id="m-0")]).segment
        version = directory.read_current(segmented.index_root)[0]
        assert first and version
        folder = directory.segments_dir(segmented.index_root, version) / first
        long_ago = time.time() - 10 * directory.SEGMENT_GRACE_SECONDS
        os.utime(folder, (long_ago, long_ago))  # published long ago: past its grace
        live = LiveIndex(segmented.index_root, model_id_for(segmented.model))
        rebuilds: list[int] = []
        live.on_refused = lambda: rebuilds.append(1)
        reader = HeldReader(live)
        monkeypatch.setattr(views_module, "load_segment", reader.wrap(views_module.load_segment))
        reader.thread.start()
        try:
            assert reader.at_load() == first  # CURRENT read: the version and the first segment
            merged = publish(segmented, store, embedder, [dict(rows[1], id="m-1")]).segment
            assert not folder.exists()  # merged into another and removed
        finally:
            reader.finish()
    assert (live.current.name, live.current.segments) == directory.read_current(segmented.index_root)
    assert merged in live.current.segments and live.refused == [] and rebuilds == []


def test_a_version_pruned_while_a_reader_loads_it_is_no_refusal(settings, corpus, embedder, monkeypatch):
    """With ``keep_versions=1`` a publish removes every other version at once:
    a reader that read CURRENT just before loads a version that is gone. It
    reads CURRENT again and serves the newest (it once answered 503 "no
    published index verifies"). Where CURRENT keeps moving each time it is
    read again, the reader keeps the view it serves: never an older one."""
    kept = settings.replace(keep_versions=1)
    with SqliteStore.open(kept.store_path) as store:
        publish(kept, store, embedder, corpus)
        live = LiveIndex(kept.index_root, model_id_for(kept.model))
        assert live.refresh()
        rebuilds: list[int] = []
        live.on_refused = lambda: rebuilds.append(1)
        rows = make_corpus(per_topic=2, seed=62)
        published = [publish(kept, store, embedder, [dict(rows[0], id="v-0")], full=True).version]
        reader = HeldReader(live)
        real = IndexVersion.load
        monkeypatch.setattr(IndexVersion, "load", classmethod(reader.wrap(lambda cls, *a, **kw: real(*a, **kw))))
        reader.thread.start()
        try:
            assert reader.at_load() == published[0]
            published.append(publish(kept, store, embedder, [dict(rows[1], id="v-1")], full=True).version)
            reader.go()
        finally:
            reader.finish()
        assert live.current.name == published[-1] and live.refused == [] and rebuilds == []

        served = live.current
        reader = HeldReader(live)
        monkeypatch.setattr(IndexVersion, "load", classmethod(reader.wrap(lambda cls, *a, **kw: real(*a, **kw))))
        published.append(publish(kept, store, embedder, [dict(rows[2], id="v-2")], full=True).version)
        reader.thread.start()
        try:
            for i in range(views_module.CURRENT_REREADS):  # each version the reader loads is gone
                reader.at_load()
                published.append(publish(kept, store, embedder, [dict(rows[3 + i], id=f"v-{3 + i}")],
                                         full=True).version)
                reader.go()
        finally:
            reader.finish()
        assert live.current is served  # not 503, not older
        assert live.refresh() and live.current.name == published[-1]
