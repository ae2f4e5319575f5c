from __future__ import annotations

import numpy as np

from recommender.articles import parse_article
from recommender.store import Store


def art(i, body="plain body", title="title", **extra):
    return parse_article({"id": str(i), "title": title, "body": body, **extra})


def test_upsert_counts_and_stable_doc_ids(tmp_path):
    with Store.open(tmp_path / "s.sqlite") as store:
        counts = store.upsert([art(1), art(2)])
        assert (counts.added, counts.updated, counts.unchanged) == (2, 0, 0)
        doc_id = store.get("1").doc_id
        counts = store.upsert([art(1), art(2, body="changed body"), art(3)])
        assert (counts.added, counts.updated, counts.unchanged) == (1, 1, 1)
        assert store.get("1").doc_id == doc_id
        assert store.get("2").article.body == "changed body"
        assert store.count() == 3


def test_a_store_with_the_old_full_text_index_loses_it_and_keeps_its_articles(tmp_path):
    """Stores made before the FTS5 table was dropped: its triggers would make
    every upsert write the index again; opening removes table and triggers."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    with Store.open(path) as store:
        store.upsert([art(1, body="Ilham Aliev met the mediators")])
        store.connection.executescript("""
            CREATE VIRTUAL TABLE articles_fts USING fts5(title, body, content='articles', content_rowid='doc_id');
            CREATE TRIGGER articles_ai AFTER INSERT ON articles BEGIN
                INSERT INTO articles_fts(rowid, title, body) VALUES (new.doc_id, new.title, new.body);
            END;
            CREATE TRIGGER articles_ad AFTER DELETE ON articles BEGIN SELECT 1; END;
            CREATE TRIGGER articles_au AFTER UPDATE OF title, body ON articles BEGIN SELECT 1; END;
        """)
    with Store.open(path) as store:
        names = {r[0] for r in store.connection.execute("SELECT name FROM sqlite_master")}
        assert not {"articles_fts", "articles_ai", "articles_ad", "articles_au"} & names
        store.upsert([art(2, body="harbour bridge costs")])
        assert store.get("1").article.body == "Ilham Aliev met the mediators" and store.count() == 2
    assert "articles_fts" not in {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}


def test_embedding_cache_is_keyed_by_content_hash_and_model(tmp_path):
    with Store.open(tmp_path / "s.sqlite") as store:
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
        assert store.stale_embeddings("m") == [store.get("2").doc_id]
        (doc_id, vectors), = list(store.iter_embeddings("m"))
        assert doc_id == store.get("1").doc_id and vectors.shape == (2, 4)


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store.open(path) as store:
        store.upsert([art(1, tags=["x", "y"], published="2024-02-03")])
    with Store.open(path) as store:
        a = store.get("1").article
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
    with Store.open(tmp_path / "s.sqlite") as store:
        store.upsert([parse_article(r) for r in rows])
        hidden = {store.get_many([d])[d].article.id for d in store.embargoed_doc_ids("2024-06-01T01:00:00")}
    assert hidden == {"later-today-utc", "future-in-new-york", "tomorrow"}


def test_embargo_query_reads_the_published_index(tmp_path):
    """It runs on every related request, so it must not scan the table: with
    ORDER BY doc_id SQLite did, 45 ms per request at 100k articles."""
    from recommender.store import EMBARGO_SQL

    with Store.open(tmp_path / "s.sqlite") as store:
        store.upsert([parse_article({"id": f"a{i}", "title": "t", "body": "b", "published": f"2024-06-{i + 1:02d}"})
                      for i in range(20)])
        plan = " ".join(row[-1] for row in store.connection.execute("EXPLAIN QUERY PLAN " + EMBARGO_SQL, ("2024-06-10",)))
        assert "articles_by_published" in plan and "SCAN articles" not in plan, plan
        hidden = store.embargoed_doc_ids("2024-06-10T12:00:00")
    assert hidden == sorted(hidden) and len(hidden) == 10  # 06-11 to 06-20; a stable order for the cache key
