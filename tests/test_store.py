from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from recommender.articles import parse_article
from recommender.errors import ConfigError, InvalidInput
from recommender.rules import Rule
from recommender.store import SqliteStore
from recommender.store import sqlite as sqlite_store
from recommender.store.sqlite import MIGRATIONS
from tests.helpers import stored_article

RELEASE_0_1_SCHEMA = """
CREATE TABLE IF NOT EXISTS articles (
    doc_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    url          TEXT,
    published    TEXT,
    section      TEXT,
    tags         TEXT NOT NULL DEFAULT '[]',
    lang         TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT NOT NULL,
    record_hash  TEXT NOT NULL,
    updated_at   REAL NOT NULL, -- when the title or body last changed (see Store.behind)
    seq          INTEGER NOT NULL DEFAULT 0  -- the write that last changed the record (see Store.changes_since)
);
CREATE TABLE IF NOT EXISTS embeddings (
    model_key    TEXT NOT NULL,
    doc_id       INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    n_chunks     INTEGER NOT NULL,
    dim          INTEGER NOT NULL,
    vectors      BLOB NOT NULL,
    chunk_hashes BLOB,
    PRIMARY KEY (model_key, doc_id)
);
CREATE INDEX IF NOT EXISTS embeddings_by_content ON embeddings (model_key, content_hash);
CREATE TABLE IF NOT EXISTS rules (
    rule_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    article     TEXT,
    target      TEXT NOT NULL,
    target_type TEXT NOT NULL DEFAULT 'article',
    position    INTEGER,
    weight      REAL,
    note        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rules_by_article ON rules (article);
CREATE INDEX IF NOT EXISTS articles_by_published ON articles (published);
CREATE INDEX IF NOT EXISTS articles_by_section ON articles (section);
CREATE INDEX IF NOT EXISTS articles_by_section_published ON articles (section, published);
CREATE INDEX IF NOT EXISTS articles_by_updated ON articles (updated_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS articles_by_seq ON articles (seq);
CREATE TABLE IF NOT EXISTS tombstones (doc_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_by_seq ON tombstones (seq);
"""
"""The schema a store of the release before numbered migrations has (user_version 0)."""


def art(i, body="plain body", title="title", **extra):
    return parse_article({"id": str(i), "title": title, "body": body, **extra})


def test_upsert_counts_and_stable_doc_ids(tmp_path):
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        counts = store.upsert([art(1), art(2)])
        assert (counts.added, counts.updated, counts.unchanged) == (2, 0, 0)
        doc_id = stored_article(store, "1").doc_id
        counts = store.upsert([art(1), art(2, body="changed body"), art(3)])
        assert (counts.added, counts.updated, counts.unchanged) == (1, 1, 1)
        assert stored_article(store, "1").doc_id == doc_id
        assert stored_article(store, "2").article.body == "changed body"
        assert store.count() == 3


def test_a_store_with_the_old_full_text_index_loses_it_and_keeps_its_articles(tmp_path):
    """Stores made before the FTS5 table was dropped: its triggers would make
    every upsert write the index again; opening removes table and triggers."""
    path = tmp_path / "s.sqlite"
    with SqliteStore.open(path) as store:
        store.upsert([art(1, body="Ilham Aliev met the mediators")])
        store.connection.execute("PRAGMA user_version = 0")  # unnumbered, as those releases left it
        store.connection.executescript("""
            CREATE VIRTUAL TABLE articles_fts USING fts5(title, body, content='articles', content_rowid='doc_id');
            CREATE TRIGGER articles_ai AFTER INSERT ON articles BEGIN
                INSERT INTO articles_fts(rowid, title, body) VALUES (new.doc_id, new.title, new.body);
            END;
            CREATE TRIGGER articles_ad AFTER DELETE ON articles BEGIN SELECT 1; END;
            CREATE TRIGGER articles_au AFTER UPDATE OF title, body ON articles BEGIN SELECT 1; END;
        """)
    with SqliteStore.open(path) as store:
        names = {r[0] for r in store.connection.execute("SELECT name FROM sqlite_master")}
        assert not {"articles_fts", "articles_ai", "articles_ad", "articles_au"} & names
        store.upsert([art(2, body="harbour bridge costs")])
        assert stored_article(store, "1").article.body == "Ilham Aliev met the mediators" and store.count() == 2
    assert "articles_fts" not in {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}


def test_embedding_cache_is_keyed_by_content_hash_and_model(tmp_path):
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([art(1), art(2)])
        ids = store.stale_embeddings("m")
        assert len(ids) == 2
        hashes = store.content_hashes()
        store.save_embeddings("m", [(d, hashes[d], np.ones((2, 4), np.float32)) for d in ids])
        assert store.stale_embeddings("m") == []
        assert len(store.stale_embeddings("other-model")) == 2
        store.upsert([art(2, section="new section")])  # metadata only: no re-embedding
        assert store.stale_embeddings("m") == []
        store.upsert([art(2, body="new text")])
        assert store.stale_embeddings("m") == [stored_article(store, "2").doc_id]
        (doc_id, vectors), = list(store.iter_embeddings("m"))
        assert doc_id == stored_article(store, "1").doc_id and vectors.shape == (2, 4)


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "s.sqlite"
    with SqliteStore.open(path) as store:
        store.upsert([art(1, tags=["x", "y"], published="2024-02-03")])
    with SqliteStore.open(path) as store:
        a = stored_article(store, "1").article
        assert a.tags == ("x", "y") and a.published == "2024-02-03"


def test_embargo_respects_time_zones(tmp_path):
    rows = [
        {"id": "later-today-utc", "title": "t", "body": "b", "published": "2024-06-01T05:00:00"},
        {"id": "past-in-new-york", "title": "t", "body": "b", "published": "2024-05-31T19:00:00-05:00"},  # 00:00Z
        {"id": "future-in-new-york", "title": "t", "body": "b", "published": "2024-05-31T23:00:00-05:00"},  # 04:00Z
        {"id": "past-in-karachi", "title": "t", "body": "b", "published": "2024-06-01T03:00:00+05:00"},  # 22:00Z
        {"id": "tomorrow", "title": "t", "body": "b", "published": "2024-06-02"},
        {"id": "today", "title": "t", "body": "b", "published": "2024-06-01"},
        {"id": "undated", "title": "t", "body": "b"},
    ]
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([parse_article(r) for r in rows])
        hidden = {store.get_many([d])[d].article.id for d in store.embargoed_doc_ids("2024-06-01T01:00:00")}
    assert hidden == {"later-today-utc", "future-in-new-york", "tomorrow"}


def test_embargo_query_reads_the_published_index(tmp_path):
    """It runs on every related request, so it must not scan the table: with
    ORDER BY doc_id SQLite did, 45 ms per request at 100k articles."""
    from recommender.store.sqlite import EMBARGO_SQL

    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([parse_article({"id": f"a{i}", "title": "t", "body": "b", "published": f"2024-06-{i + 1:02d}"})
                      for i in range(20)])
        plan = " ".join(row[-1] for row in store.connection.execute("EXPLAIN QUERY PLAN " + EMBARGO_SQL, ("2024-06-10",)))
        assert "articles_by_published" in plan and "SCAN articles" not in plan, plan
        hidden = store.embargoed_doc_ids("2024-06-10T12:00:00")
    assert hidden == sorted(hidden) and len(hidden) == 10  # 06-11 to 06-20; a stable order for the cache key


def test_a_store_of_the_release_before_numbered_migrations_upgrades_in_place(tmp_path):
    """Its schema is complete but unnumbered: every migration finds its step
    done, the file is numbered, and its articles, vectors and write numbers stay."""
    path = tmp_path / "s.sqlite"
    old = sqlite3.connect(path)
    old.executescript(RELEASE_0_1_SCHEMA)
    old.execute("""INSERT INTO articles (id, title, body, content_hash, record_hash, updated_at, seq)
                   VALUES ('kept', 't', 'b', 'h', 'r', 1.0, 3)""")
    old.execute("INSERT INTO embeddings VALUES ('m', 1, 'h', 1, 2, ?, NULL)", (np.ones(2, np.float32).tobytes(),))
    old.execute("INSERT INTO meta (key, value) VALUES ('seq', 3)")
    old.commit()
    old.close()
    with SqliteStore.open(path) as store:
        assert store.connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4
        assert stored_article(store, "kept").article.body == "b" and store.seq() == 3
        assert [d for d, _ in store.iter_embeddings("m")] == [1]
        store.upsert([art(2)])
        assert store.seq() == 4 and store.changes_since(3).changed == [stored_article(store, "2").doc_id]


def test_a_fresh_store_has_the_schema_of_an_upgraded_one(tmp_path):
    """Migrations from nothing give the tables, columns and indexes a store of
    the earlier release gets by upgrading."""

    def schema(path):
        db = sqlite3.connect(path)
        tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
        return tables, columns

    with SqliteStore.open(tmp_path / "fresh.sqlite"):
        pass
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.executescript(RELEASE_0_1_SCHEMA)
    old.close()
    with SqliteStore.open(tmp_path / "old.sqlite"):
        pass
    assert schema(tmp_path / "fresh.sqlite") == schema(tmp_path / "old.sqlite")


def test_a_store_from_a_newer_release_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "s.sqlite"
    with SqliteStore.open(path) as store:
        store.upsert([art(1)])
        store.connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(ConfigError, match="schema version 5, newer than this release knows .4.: upgrade"):
        SqliteStore.open(path)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM articles").fetchone()[0] == 1  # nothing lost


def test_processes_opening_a_new_store_together_migrate_it_once(tmp_path):
    """A server's workers open the store at once: one migrates, the others find it done."""
    path = tmp_path / "s.sqlite"
    errors, barrier = [], threading.Barrier(4)

    def open_it():
        barrier.wait()
        try:
            with SqliteStore.open(path) as store:
                store.upsert([art(threading.get_ident())])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with SqliteStore.open(path) as store:
        assert store.count() == 4 and store.seq() == 4


def test_waiting_for_writes_returns_at_the_write_or_at_the_timeout(tmp_path):
    path = tmp_path / "s.sqlite"
    with SqliteStore.open(path) as store, SqliteStore.open(path) as other:
        store.upsert([art(1)])
        assert store.wait_for_changes(0, timeout=5) == 1  # already past: at once
        assert store.wait_for_changes(1, timeout=0.05) == 1  # nothing new: the timeout
        waiting = threading.Event()
        result: list[int] = []

        def wait() -> None:
            waiting.set()
            result.append(store.wait_for_changes(1, timeout=60))

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiting.wait()
        other.upsert([art(2)])  # another connection, as another process would
        waiter.join(timeout=60)
        assert result == [2]


def test_one_holder_of_the_indexing_role(tmp_path):
    path = tmp_path / "s.sqlite"
    with SqliteStore.open(path) as first, SqliteStore.open(path) as second:
        with first.indexing_role() as held:
            assert held
            with second.indexing_role() as also:
                assert not also  # non-blocking: another holds it
        with second.indexing_role() as held_now:
            assert held_now  # released



def test_the_settings_name_the_store(tmp_path):
    """``store_url`` empty: the data folder's file; ``sqlite:///path``: that
    file; another scheme: the store module of that name, which this release
    lacks for PostgreSQL (a clear error that never shows the URL's password)."""
    from recommender.config import Settings
    from recommender.store import open_store, store_location

    default = Settings.load({"data_dir": tmp_path / "d"}, environ={})
    assert store_location(default) == str(tmp_path / "d" / "store.sqlite")
    assert store_location(default.replace(store_url="postgresql://editor:s3cret@db.example:5432/news")) == \
        "postgresql://editor:***@db.example:5432/news"
    with open_store(default) as store:
        store.upsert([art(1)])
    assert (tmp_path / "d" / "store.sqlite").exists()
    elsewhere = default.replace(store_url=f"sqlite://{tmp_path / 'shared' / 'news.sqlite'}")
    with open_store(elsewhere) as store:
        assert store.count() == 0
    assert (tmp_path / "shared" / "news.sqlite").exists()
    for url, message in (("postgresql://editor:s3cret@db.example:5432/news", "no store backend for postgresql://"),
                         ("sqlite://relative.sqlite", "sqlite:///absolute/path"),
                         ("not a url", "must be a URL")):
        with pytest.raises(ConfigError, match=message) as raised:
            open_store(default.replace(store_url=url))
        assert "s3cret" not in str(raised.value)


def test_rules_past_the_limits_are_refused_and_nothing_is_stored(tmp_path, monkeypatch):
    """A store keeps at most MAX_RULES rules, one list at most MAX_LIST_RULES
    (lowered here); a replaced pin or a repeated rule needs no room."""
    monkeypatch.setattr(sqlite_store, "MAX_LIST_RULES", 2)
    monkeypatch.setattr(sqlite_store, "MAX_RULES", 3)
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([art(i) for i in range(1, 6)])
        store.add_rule(Rule("pin", "2", article="1", position=1))
        store.add_rule(Rule("block", "3", article="1"))
        generation = store.rules_generation()
        with pytest.raises(InvalidInput, match="the list of '1' has 2 rules already"):
            store.add_rule(Rule("block", "4", article="1"))
        assert store.add_rule(Rule("pin", "2", article="1", position=3)).position == 3  # replaces the pin
        assert store.add_rule(Rule("block", "3", article="1")).kind == "block"  # already there
        store.add_rule(Rule("boost", "news", target_type="section", weight=2.0))
        with pytest.raises(InvalidInput, match="there are 3 rules already"):
            store.add_rule(Rule("boost", "sport", target_type="section", weight=2.0))
        assert len(store.rules()) == 3 and store.rules_generation() > generation


def test_articles_are_found_by_id_in_batches(tmp_path):
    with SqliteStore.open(tmp_path / "s.sqlite") as store:
        store.upsert([art(i) for i in range(1, 1201)])
        found = store.doc_ids_of([str(i) for i in range(0, 1300)])  # 0 and past 1200: not there
        assert len(found) == 1200 and found["700"] == stored_article(store, "700").doc_id
