"""The embedded store: one SQLite file (``<data_dir>/store.sqlite``) holding
the articles, their hashes, the numbered writes, the editorial rules and the
embedding cache. The only module of the package that speaks SQL (with the
evaluation's FTS5 baseline). Its schema comes from numbered migrations
(``MIGRATIONS``), applied in order when a store is opened; ``PRAGMA
user_version`` records how far a file has come."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from recommender import directory
from recommender.articles import Article
from recommender.clock import utc_stamp
from recommender.errors import ConfigError, InvalidInput, storage_fault, storage_faults
from recommender.filters import Filters
from recommender.rules import MAX_LIST_RULES, MAX_RULES, Rule
from recommender.store.base import (
    CHUNK_HASH_BYTES,
    Changes,
    StoredArticle,
    UpsertCounts,
    Watermark,
    is_embargoed,
    parse_utc,
)

HAS_TAG_SQL = "EXISTS (SELECT 1 FROM json_each(articles.tags) WHERE json_each.value = ?)"
"""An article's tags are a JSON array; this matches one tag."""

EMBARGO_SQL = "SELECT doc_id, published FROM articles WHERE published >= ?"
"""Runs on every related request: it must stay a range read of the
``articles_by_published`` index. (With ``ORDER BY doc_id`` SQLite scanned the
whole table instead: 45 ms per request at 100k articles.)"""

COLUMNS = "doc_id, id, title, body, url, published, section, tags, lang, metadata, content_hash"


WAIT_POLL_SECONDS = 0.1
"""How often ``wait_for_changes`` reads the write number."""


class SqliteStore:
    """One SQLite file. Open with :meth:`open`; a store is used by one thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> SqliteStore:
        path = Path(path)
        if not create and not path.exists():
            raise FileNotFoundError(path)
        with storage_faults(path):  # a full disk or a folder this user may not write: one clear error
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA foreign_keys=ON")
                migrate(connection, path)
            except BaseException:
                connection.close()
                raise
        return cls(connection, path)

    def close(self) -> None:
        self.connection.close()

    def integrity_check(self, limit: int = 20) -> list[str]:
        """SQLite's ``PRAGMA integrity_check``: what it finds wrong (at most
        ``limit`` lines), or [] when the file is whole."""
        rows = [str(row[0]) for row in self.connection.execute(f"PRAGMA integrity_check({int(limit)})")]
        return [] if rows == ["ok"] else rows

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- articles ---------------------------------------------------------

    def upsert(self, articles: Iterable[Article]) -> UpsertCounts:
        """Insert or update by ``id`` in one transaction; the doc_id of an existing
        article is kept, so its vector row stays valid."""
        counts = UpsertCounts()
        with self._transaction() as db:
            now = time.time()  # stamped under the write lock: later commits get later stamps
            seq = None
            for article in articles:
                record_hash = article.record_hash
                row = db.execute("SELECT record_hash FROM articles WHERE id = ?", (article.id,)).fetchone()
                if row is not None and row[0] == record_hash:
                    counts.unchanged += 1
                    continue
                if row is None:
                    counts.added += 1
                else:
                    counts.updated += 1
                seq = seq or _next_seq(db)
                db.execute(
                    """INSERT INTO articles (id, title, body, url, published, section, tags, lang,
                                             metadata, content_hash, record_hash, updated_at, seq)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(id) DO UPDATE SET
                         title=excluded.title, body=excluded.body, url=excluded.url,
                         published=excluded.published, section=excluded.section, tags=excluded.tags,
                         lang=excluded.lang, metadata=excluded.metadata,
                         content_hash=excluded.content_hash, record_hash=excluded.record_hash,
                         seq=excluded.seq,
                         updated_at=CASE WHEN articles.content_hash = excluded.content_hash
                                         THEN articles.updated_at ELSE excluded.updated_at END""",
                    (
                        article.id, article.title, article.body, article.url, article.published,
                        article.section, json.dumps(list(article.tags), ensure_ascii=False), article.lang,
                        json.dumps(article.metadata, ensure_ascii=False, default=str),
                        article.content_hash, record_hash, now, seq,
                    ),
                )
        return counts

    def delete(self, article_ids: Sequence[str]) -> int:
        deleted = 0
        with self._transaction() as db:
            for article_id in article_ids:
                row = db.execute("SELECT doc_id FROM articles WHERE id = ?", (article_id,)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM embeddings WHERE doc_id = ?", (row[0],))
                db.execute("DELETE FROM articles WHERE doc_id = ?", (row[0],))
                db.execute("INSERT OR REPLACE INTO tombstones (doc_id, seq) VALUES (?, ?)", (row[0], _next_seq(db)))
                deleted += 1
        return deleted

    def count(self) -> int:
        return self.connection.execute("SELECT count(*) FROM articles").fetchone()[0]

    def get(self, article_id: str) -> StoredArticle | None:
        row = self.connection.execute(f"SELECT {COLUMNS} FROM articles WHERE id = ?", (article_id,)).fetchone()
        return _stored(row) if row else None

    def get_many(self, doc_ids: Sequence[int]) -> dict[int, StoredArticle]:
        found: dict[int, StoredArticle] = {}
        for start in range(0, len(doc_ids), 500):
            part = [int(d) for d in doc_ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            for row in self.connection.execute(f"SELECT {COLUMNS} FROM articles WHERE doc_id IN ({marks})", part):
                found[row[0]] = _stored(row)
        return found

    def iter_articles(self) -> Iterator[StoredArticle]:
        for row in self.connection.execute(f"SELECT {COLUMNS} FROM articles ORDER BY doc_id"):
            yield _stored(row)

    def content_hashes(self) -> dict[int, str]:
        return dict(self.connection.execute("SELECT doc_id, content_hash FROM articles"))


    # -- editorial rules -------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        """Store a rule; a pin replaces an earlier pin of the same article to the
        same list, and an identical rule is not stored twice."""
        created = utc_stamp()
        with self._transaction() as db:
            if rule.kind == "pin":
                db.execute("DELETE FROM rules WHERE kind = 'pin' AND article = ? AND target = ?", (rule.article, rule.target))
            existing = db.execute(
                """SELECT rule_id FROM rules WHERE kind = ? AND article IS ? AND target = ? AND target_type = ?
                   AND position IS ? AND weight IS ?""",
                (rule.kind, rule.article, rule.target, rule.target_type, rule.position, rule.weight),
            ).fetchone()
            if existing:
                rule_id = existing[0]
            else:
                _check_room(db, rule)
                rule_id = db.execute(
                    """INSERT INTO rules (kind, article, target, target_type, position, weight, note, created_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (rule.kind, rule.article, rule.target, rule.target_type, rule.position, rule.weight,
                     rule.note, created),
                ).lastrowid
            _bump(db, "rules_generation")
        added = self.rule(rule_id)
        assert added is not None  # written in the transaction above
        return added

    def rule(self, rule_id: int) -> Rule | None:
        row = self.connection.execute(f"SELECT {RULE_COLUMNS} FROM rules WHERE rule_id = ?", (int(rule_id),)).fetchone()
        return _rule(row) if row else None

    def delete_rule(self, rule_id: int) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM rules WHERE rule_id = ?", (int(rule_id),)).rowcount
            if deleted:
                _bump(db, "rules_generation")
        return bool(deleted)

    def rules(self, article: str | None = None) -> list[Rule]:
        if article is None:
            rows = self.connection.execute(f"SELECT {RULE_COLUMNS} FROM rules ORDER BY rule_id")
        else:
            rows = self.connection.execute(f"SELECT {RULE_COLUMNS} FROM rules WHERE article = ? ORDER BY rule_id", (article,))
        return [_rule(r) for r in rows]

    def global_rules(self) -> list[Rule]:
        """Rules for every list (and search): global blocks, boosts and buries."""
        rows = self.connection.execute(f"SELECT {RULE_COLUMNS} FROM rules WHERE article IS NULL ORDER BY rule_id")
        return [_rule(r) for r in rows]

    def doc_ids_of(self, article_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(article_ids), 500):
            part = list(article_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            found.update(self.connection.execute(f"SELECT id, doc_id FROM articles WHERE id IN ({marks})", part))
        return found

    def embargoed_doc_ids(self, now_iso: str) -> list[int]:
        """Articles whose publication time is still to come: never shown yet
        (see :func:`is_embargoed`). Only dates from the day before on are read
        (the widest time-zone offset is 14 hours)."""
        now = parse_utc(now_iso)
        since = (now - dt.timedelta(days=1)).date().isoformat()
        return sorted(doc_id for doc_id, published in self.connection.execute(EMBARGO_SQL, (since,))
                      if is_embargoed(published, now))

    def filter_doc_ids(self, doc_ids: Sequence[int], filters: Filters) -> np.ndarray:
        """The given doc_ids that match ``filters``."""
        if not doc_ids:
            return np.zeros(0, dtype=np.int64)
        where, params = filter_sql(filters)
        marks = ",".join("?" * len(doc_ids))
        rows = self.connection.execute(
            f"SELECT doc_id FROM articles WHERE doc_id IN ({marks}) AND {where}", [*map(int, doc_ids), *params]
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def latest_doc_ids(self, section: str | None, limit: int, *, until: str) -> list[int]:
        """The newest ``limit`` articles published by ``until`` (not embargoed),
        of one section or of all; by index, newest first."""
        where, params = ("section = ? AND ", [section]) if section else ("", [])
        rows = self.connection.execute(
            f"SELECT doc_id, published FROM articles WHERE {where}published IS NOT NULL AND published <= ? "
            "ORDER BY published DESC LIMIT ?",
            [*params, until + "~", int(limit)],
        )
        return [doc_id for doc_id, published in rows if not is_embargoed(published, until)]

    def rules_generation(self) -> int:
        """A number that changes whenever a rule is added or removed (cache keys)."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'rules_generation'").fetchone()
        return int(row[0]) if row else 0

    # -- embedding cache -------------------------------------------------

    def stale_embeddings(self, model_key: str) -> list[int]:
        """doc_ids whose embedding for ``model_key`` is missing or outdated."""
        rows = self.connection.execute(
            """SELECT a.doc_id FROM articles a
               LEFT JOIN embeddings e ON e.model_key = ? AND e.doc_id = a.doc_id
               WHERE e.content_hash IS NULL OR e.content_hash != a.content_hash
               ORDER BY a.doc_id""",
            (model_key,),
        )
        return [r[0] for r in rows]

    def stale_among(self, model_key: str, doc_ids: Sequence[int]) -> list[int]:
        """Those of ``doc_ids`` whose embedding is missing or outdated (primary-key reads)."""
        stale: list[int] = []
        for start in range(0, len(doc_ids), 500):
            part = [int(d) for d in doc_ids[start : start + 500]]
            rows = self.connection.execute(
                f"""SELECT a.doc_id FROM articles a
                    LEFT JOIN embeddings e ON e.model_key = ? AND e.doc_id = a.doc_id
                    WHERE a.doc_id IN ({",".join("?" * len(part))})
                    AND (e.content_hash IS NULL OR e.content_hash != a.content_hash)""",
                (model_key, *part),
            )
            stale.extend(r[0] for r in rows)
        return sorted(stale)

    def current_embeddings(self, model_key: str, doc_ids: Sequence[int]) -> dict[int, tuple[str, np.ndarray]]:
        """doc_id -> (content hash, chunk vectors) of those of ``doc_ids`` whose embedding is current."""
        found: dict[int, tuple[str, np.ndarray]] = {}
        for start in range(0, len(doc_ids), 500):
            part = [int(d) for d in doc_ids[start : start + 500]]
            rows = self.connection.execute(
                f"""SELECT e.doc_id, e.content_hash, e.n_chunks, e.dim, e.vectors FROM embeddings e
                    JOIN articles a ON a.doc_id = e.doc_id AND a.content_hash = e.content_hash
                    WHERE e.model_key = ? AND e.doc_id IN ({",".join("?" * len(part))})""",
                (model_key, *part),
            )
            for doc_id, content_hash, n_chunks, dim, blob in rows:
                found[doc_id] = (content_hash, np.frombuffer(blob, dtype=np.float32).reshape(n_chunks, dim))
        return found

    def save_embeddings(
        self, model_key: str, items: Iterable[tuple[int, str, np.ndarray] | tuple[int, str, np.ndarray, bytes]]
    ) -> None:
        """Store (doc_id, content_hash, chunk vectors[, chunk text hashes]) in one
        transaction: a checkpoint that a rerun after a crash starts from."""
        rows = []
        for item in items:
            doc_id, content_hash, vectors = item[:3]
            chunk_hashes = item[3] if len(item) > 3 else None
            rows.append((
                model_key, int(doc_id), content_hash, vectors.shape[0], vectors.shape[1],
                np.ascontiguousarray(vectors, dtype=np.float32).tobytes(), chunk_hashes,
            ))
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def known_passage_vectors(
        self, model_key: str, doc_ids: Sequence[int], content_hashes: Sequence[str]
    ) -> dict[bytes, np.ndarray]:
        """Vectors already made for passages, by passage-text hash: from the
        earlier version of these articles (an update that changed one paragraph
        keeps the others) and from other articles with the same content
        (syndicated copies). Nothing is embedded twice."""
        known: dict[bytes, np.ndarray] = {}
        queries = (
            ("doc_id", [int(d) for d in doc_ids]),
            ("content_hash", list(dict.fromkeys(content_hashes))),
        )
        for column, values in queries:
            for start in range(0, len(values), 500):
                part = values[start : start + 500]
                rows = self.connection.execute(
                    f"""SELECT n_chunks, dim, vectors, chunk_hashes FROM embeddings
                        WHERE model_key = ? AND chunk_hashes IS NOT NULL
                        AND {column} IN ({",".join("?" * len(part))})""",
                    (model_key, *part),
                )
                for n_chunks, dim, blob, hashes in rows:
                    vectors = np.frombuffer(blob, dtype=np.float32).reshape(n_chunks, dim)
                    for i in range(n_chunks):
                        known[bytes(hashes[i * CHUNK_HASH_BYTES : (i + 1) * CHUNK_HASH_BYTES])] = vectors[i]
        return known

    def iter_embeddings(self, model_key: str) -> Iterator[tuple[int, np.ndarray]]:
        """(doc_id, chunk vectors) for every article whose embedding is current."""
        for doc_id, _, vectors in self.iter_current_embeddings(model_key):
            yield doc_id, vectors

    def iter_current_embeddings(self, model_key: str) -> Iterator[tuple[int, str, np.ndarray]]:
        """(doc_id, content hash, chunk vectors) for every article whose
        embedding is current: the hash is the one the vectors were made from."""
        rows = self.connection.execute(
            """SELECT e.doc_id, e.content_hash, e.n_chunks, e.dim, e.vectors FROM embeddings e
               JOIN articles a ON a.doc_id = e.doc_id AND a.content_hash = e.content_hash
               WHERE e.model_key = ? ORDER BY e.doc_id""",
            (model_key,),
        )
        for doc_id, content_hash, n_chunks, dim, blob in rows:
            yield doc_id, content_hash, np.frombuffer(blob, dtype=np.float32).reshape(n_chunks, dim)

    def has_embeddings(self, model_key: str) -> bool:
        return self.connection.execute("SELECT 1 FROM embeddings WHERE model_key = ? LIMIT 1", (model_key,)).fetchone() is not None

    def rename_embeddings(self, old_key: str, new_key: str) -> int:
        """Move cached vectors from ``old_key`` to ``new_key`` (the same vectors
        under a key that now says more), unless ``new_key`` already has some."""
        with self._transaction() as db:
            if self.has_embeddings(new_key):  # read inside the transaction: the same connection
                return 0
            return db.execute("UPDATE embeddings SET model_key = ? WHERE model_key = ?", (new_key, old_key)).rowcount

    def prune_embeddings(self, model_key: str) -> int:
        """Drop cached vectors of other models and of deleted articles."""
        with self._transaction() as db:
            cur = db.execute(
                "DELETE FROM embeddings WHERE model_key != ? OR doc_id NOT IN (SELECT doc_id FROM articles)",
                (model_key,),
            )
            return cur.rowcount

    # -- snapshots and freshness -----------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the store as it was at
        the first one, whatever other connections commit meanwhile (WAL)."""
        self.connection.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            self.connection.execute("COMMIT")

    def watermark(self) -> Watermark:
        """Where the store stands, to count later writes against (see :meth:`behind`)."""
        doc_id, updated, count = self.connection.execute(
            "SELECT max(doc_id), max(updated_at), count(*) FROM articles"
        ).fetchone()
        return Watermark(max_doc_id=int(doc_id or 0), content_updated_at=float(updated or 0.0), articles=int(count),
                         seq=self.seq())

    def seq(self) -> int:
        """The number of the latest write (upsert or delete); 0 before any."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def changes_since(self, seq: int) -> Changes:
        """What the writes numbered after ``seq`` did, up to the latest one:
        range reads of ``articles_by_seq`` and ``tombstones_by_seq`` whatever
        the archive's size (no ORDER BY: it would make SQLite walk the primary key)."""
        db = self.connection
        latest = self.seq()
        bounds = (int(seq), latest)
        changed = sorted(r[0] for r in db.execute("SELECT doc_id FROM articles WHERE seq > ? AND seq <= ?", bounds))
        deleted = sorted(r[0] for r in db.execute("SELECT doc_id FROM tombstones WHERE seq > ? AND seq <= ?", bounds))
        return Changes(changed, deleted, latest)

    def count_changes_since(self, seq: int) -> int:
        """Articles added, changed or deleted by the writes after ``seq`` (index range counts)."""
        db = self.connection
        changed = db.execute("SELECT count(*) FROM articles WHERE seq > ?", (int(seq),)).fetchone()[0]
        deleted = db.execute("SELECT count(*) FROM tombstones WHERE seq > ?", (int(seq),)).fetchone()[0]
        return int(changed + deleted)

    def prune_tombstones(self, seq: int) -> int:
        """Forget deletions at or before ``seq`` (a full build has applied them)."""
        with self._transaction() as db:
            return db.execute("DELETE FROM tombstones WHERE seq <= ?", (seq,)).rowcount

    def behind(self, mark: Watermark) -> int:
        """Articles added, changed (title or body) or deleted since ``mark``:
        a range read of the primary key and of ``articles_by_updated``, and a
        count."""
        db = self.connection
        added = db.execute("SELECT count(*) FROM articles WHERE doc_id > ?", (mark.max_doc_id,)).fetchone()[0]
        changed = db.execute(
            "SELECT count(*) FROM articles WHERE updated_at > ? AND doc_id <= ?",
            (mark.content_updated_at, mark.max_doc_id),
        ).fetchone()[0]
        deleted = max(0, mark.articles - (self.count() - added))
        return int(added + changed + deleted)

    # -- coordination between processes -----------------------------------

    def wait_for_changes(self, seq: int, timeout: float) -> int:
        """The latest write number once it is past ``seq``, or after ``timeout``:
        the number is read every ``WAIT_POLL_SECONDS`` (one primary-key read)."""
        deadline = time.monotonic() + timeout
        while True:
            latest = self.seq()
            left = deadline - time.monotonic()
            if latest > seq or left <= 0:
                return latest
            time.sleep(min(WAIT_POLL_SECONDS, left))

    @contextmanager
    def indexing_role(self, *, blocking: bool = False) -> Iterator[bool]:
        """The indexing role of this store's processes: a lock file beside it."""
        with directory.lock(self.path.with_name(self.path.name + ".indexing.lock"), blocking=blocking) as held:
            yield held

    # -- helpers ---------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.connection, self.path)


class _Transaction:
    """One write transaction: every write of the store goes through one. A
    write the disk refuses (full: SQLITE_FULL, or not writable) is rolled back
    whole and comes out as a :class:`recommender.errors.StorageError` naming
    the file; the connection is left ready for the next write."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        with storage_faults(self.path):
            self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.connection.execute("COMMIT")
                return
            except sqlite3.Error as error:  # SQLITE_FULL at commit leaves the transaction open
                self._rollback()
                fault = storage_fault(error, self.path)
                if fault is None:
                    raise
                raise fault from error
        self._rollback()
        if isinstance(exc, sqlite3.Error) and (fault := storage_fault(exc, self.path)) is not None:
            raise fault from exc

    def _rollback(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")


def _stored(row: tuple) -> StoredArticle:
    doc_id, article_id, title, body, url, published, section, tags, lang, metadata, content_hash = row
    article = Article(
        id=article_id, title=title, body=body, url=url, published=published, section=section,
        tags=tuple(json.loads(tags)), lang=lang, metadata=json.loads(metadata),
    )
    return StoredArticle(doc_id=doc_id, article=article, content_hash=content_hash)


RULE_COLUMNS = "rule_id, kind, article, target, target_type, position, weight, note, created_at"


def _check_room(db: sqlite3.Connection, rule: Rule) -> None:
    """Refuse a new rule past the limits (``rules.MAX_RULES``, ``rules.MAX_LIST_RULES``)."""
    (total,) = db.execute("SELECT count(*) FROM rules").fetchone()
    if total >= MAX_RULES:
        raise InvalidInput(f"there are {MAX_RULES} rules already, the most a store keeps: delete some first")
    if rule.article is not None:
        (of_list,) = db.execute("SELECT count(*) FROM rules WHERE article = ?", (rule.article,)).fetchone()
        if of_list >= MAX_LIST_RULES:
            raise InvalidInput(f"the list of {rule.article!r} has {MAX_LIST_RULES} rules already, the most one list "
                               "has: delete some first", field="article")


def _rule(row: tuple) -> Rule:
    rule_id, kind, article, target, target_type, position, weight, note, created_at = row
    return Rule(kind=kind, target=target, article=article, target_type=target_type, position=position,
                weight=weight, note=note, id=rule_id, created_at=created_at)


def _bump(db: sqlite3.Connection, key: str) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET value = value + 1", (key,))


def _next_seq(db: sqlite3.Connection) -> int:
    """The next write number, taken inside the write transaction (so numbers
    only grow in commit order)."""
    _bump(db, "seq")
    return int(db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])


def filter_sql(filters: Filters) -> tuple[str, list[str]]:
    """A WHERE clause over the ``articles`` table and its parameters (what
    ``FilterColumns.mask`` selects from the index's columns)."""
    clauses, params = [], []
    if filters.section:
        clauses.append("section = ?")
        params.append(filters.section)
    if filters.lang:
        clauses.append("lang = ?")
        params.append(filters.lang)
    if filters.same_language:
        clauses.append("(lang = ? OR lang IS NULL)")
        params.append(filters.same_language)
    if filters.tag:
        clauses.append(HAS_TAG_SQL)
        params.append(filters.tag)
    if filters.since:
        clauses.append("published >= ?")
        params.append(filters.since)
    if filters.until:
        # '2024-05-31' < '2024-05-31T10:00' < '2024-05-31~' in byte order.
        clauses.append("published <= ?")
        params.append(filters.until + "~" if len(filters.until) == 10 else filters.until)
    return " AND ".join(clauses) or "1", params


# -- the schema: numbered migrations ---------------------------------------------
# Each runs once per file, in order, inside one write transaction with the
# update of ``PRAGMA user_version``. Stores written before migrations were
# numbered (user_version 0) may be at any step up to 4: those steps check
# before they change anything.

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(step: Migration) -> Migration:
    MIGRATIONS.append(step)
    return step


@migration
def m001_articles_embeddings_rules(db: sqlite3.Connection) -> None:
    for statement in (
        """CREATE TABLE IF NOT EXISTS articles (
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
            updated_at   REAL NOT NULL -- when the title or body last changed (see SqliteStore.behind)
        )""",
        """CREATE TABLE IF NOT EXISTS embeddings (
            model_key    TEXT NOT NULL,
            doc_id       INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            n_chunks     INTEGER NOT NULL,
            dim          INTEGER NOT NULL,
            vectors      BLOB NOT NULL,
            PRIMARY KEY (model_key, doc_id)
        )""",
        "CREATE INDEX IF NOT EXISTS embeddings_by_content ON embeddings (model_key, content_hash)",
        """CREATE TABLE IF NOT EXISTS rules (
            rule_id     INTEGER PRIMARY KEY AUTOINCREMENT,
            kind        TEXT NOT NULL,
            article     TEXT,
            target      TEXT NOT NULL,
            target_type TEXT NOT NULL DEFAULT 'article',
            position    INTEGER,
            weight      REAL,
            note        TEXT NOT NULL DEFAULT '',
            created_at  TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS rules_by_article ON rules (article)",
        "CREATE INDEX IF NOT EXISTS articles_by_published ON articles (published)",
        "CREATE INDEX IF NOT EXISTS articles_by_section ON articles (section)",
        "CREATE INDEX IF NOT EXISTS articles_by_section_published ON articles (section, published)",
        "CREATE INDEX IF NOT EXISTS articles_by_updated ON articles (updated_at)",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ):
        db.execute(statement)


@migration
def m002_drop_full_text_index(db: sqlite3.Connection) -> None:
    """The full-text index (FTS5) that no request read cost every upsert; the
    evaluation's FTS5 baseline builds its own (``recommender.evaluation.baselines``)."""
    for statement in ("DROP TRIGGER IF EXISTS articles_ai", "DROP TRIGGER IF EXISTS articles_ad",
                      "DROP TRIGGER IF EXISTS articles_au", "DROP TABLE IF EXISTS articles_fts"):
        db.execute(statement)


@migration
def m003_passage_hashes(db: sqlite3.Connection) -> None:
    """Each cached vector's passage text hash: a passage's vector is reused for the same text."""
    _add_column(db, "embeddings", "chunk_hashes", "BLOB")


@migration
def m004_numbered_writes(db: sqlite3.Connection) -> None:
    """Every write gets a number (``meta.seq``), each article the number of its
    last write and each deletion a tombstone: segments read the writes after
    a version's number."""
    _add_column(db, "articles", "seq", "INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS articles_by_seq ON articles (seq)")
    db.execute("CREATE TABLE IF NOT EXISTS tombstones (doc_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS tombstones_by_seq ON tombstones (seq)")


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations a file lacks, in one write transaction (the
    server's workers open the store together: one migrates, the others then
    find it done). A file from a newer release is refused."""
    known = len(MIGRATIONS)
    if connection.execute("PRAGMA user_version").fetchone()[0] == known:
        return
    with _Transaction(connection, path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > known:
            raise ConfigError(f"{path} has schema version {version}, newer than this release knows ({known}): "
                              "upgrade recommender, or use a copy of the store from this release")
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {known}")


def _add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if columns and column not in columns:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
