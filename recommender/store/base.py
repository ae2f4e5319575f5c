"""What the rest of the code needs from a store, written down as a
``Protocol``: the articles and their content hashes, the numbered writes
(the change sequence and its tombstones), the embedding cache (per model
key), the editorial rules, and what several processes coordinate through:
waiting for writes after a number, and holding the one indexing role.

The store is the source of truth; every index is derived from it and can be
thrown away. ``recommender.store.sqlite`` is the embedded default; a server
store is one more module of this package (``open_store`` finds it by the URL's
scheme).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recommender.articles import Article
from recommender.filters import Filters
from recommender.rules import Rule

CHUNK_HASH_BYTES = 8
"""A passage's text hash (blake2b) in the embedding cache: its vector is reused for the same text."""


@dataclass(frozen=True)
class StoredArticle:
    doc_id: int
    article: Article
    content_hash: str


@dataclass
class UpsertCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class Watermark:
    """The highest doc_id, the latest content change and the article count of
    a snapshot (doc_ids only grow, and content changes are stamped inside the
    write transaction, so later writes lie above both marks)."""

    max_doc_id: int
    content_updated_at: float
    articles: int
    seq: int | None = None
    """The latest write's number (see :meth:`Store.changes_since`); None in
    snapshots recorded before writes were numbered."""


@dataclass(frozen=True)
class Changes:
    """Writes after a given write number: articles added or changed in any
    field (metadata too), articles deleted, and the latest number."""

    changed: list[int]
    deleted: list[int]
    seq: int

    def __len__(self) -> int:
        return len(self.changed) + len(self.deleted)


class Store(Protocol):
    """A store, as one thread uses it (a server opens one per thread)."""

    # -- articles: upsert by id; a doc_id is never reused ---------------------
    def upsert(self, articles: Iterable[Article]) -> UpsertCounts:
        """Insert or update by ``id`` in one transaction (one write number);
        an existing article keeps its doc_id."""
        ...

    def delete(self, article_ids: Sequence[str]) -> int:
        """Delete by id (their vectors too), leaving tombstones; the number deleted."""
        ...

    def count(self) -> int: ...

    def get(self, article_id: str) -> StoredArticle | None: ...

    def get_many(self, doc_ids: Sequence[int]) -> dict[int, StoredArticle]: ...

    def iter_articles(self) -> Iterator[StoredArticle]:
        """Every article, by doc_id."""
        ...

    def content_hashes(self) -> dict[int, str]: ...

    # -- what request paths read ------------------------------------------------
    def embargoed_doc_ids(self, now_iso: str) -> list[int]:
        """Articles whose publication time is still to come (``is_embargoed``)."""
        ...

    def filter_doc_ids(self, doc_ids: Sequence[int], filters: Filters) -> np.ndarray:
        """The given doc_ids that exist and match ``filters``."""
        ...

    def latest_doc_ids(self, section: str | None, limit: int, *, until: str) -> list[int]:
        """The newest ``limit`` articles published by ``until`` (not embargoed), of one section or all."""
        ...

    def doc_ids_of(self, article_ids: Sequence[str]) -> dict[str, int]:
        """The doc_ids of those articles that exist, by article id."""
        ...

    # -- editorial rules ------------------------------------------------------------
    def add_rule(self, rule: Rule) -> Rule:
        """Store a rule; over ``rules.MAX_RULES`` in all, or ``rules.MAX_LIST_RULES``
        for one list, raise ``InvalidInput`` and store nothing."""
        ...

    def rule(self, rule_id: int) -> Rule | None: ...

    def delete_rule(self, rule_id: int) -> bool: ...

    def rules(self, article: str | None = None) -> list[Rule]:
        """All rules; with ``article``, those of its list only."""
        ...

    def global_rules(self) -> list[Rule]: ...

    def rules_generation(self) -> int:
        """A number that changes whenever a rule is added or removed (cache keys)."""
        ...

    # -- the embedding cache, by model key -------------------------------------------
    def stale_embeddings(self, model_key: str) -> list[int]: ...

    def stale_among(self, model_key: str, doc_ids: Sequence[int]) -> list[int]: ...

    def current_embeddings(self, model_key: str, doc_ids: Sequence[int]) -> dict[int, tuple[str, np.ndarray]]: ...

    def iter_current_embeddings(self, model_key: str) -> Iterator[tuple[int, str, np.ndarray]]: ...

    def iter_embeddings(self, model_key: str) -> Iterator[tuple[int, np.ndarray]]: ...

    def save_embeddings(
        self, model_key: str, items: Iterable[tuple[int, str, np.ndarray] | tuple[int, str, np.ndarray, bytes]]
    ) -> None:
        """(doc_id, content_hash, passage vectors[, passage text hashes]) in one transaction: a checkpoint."""
        ...

    def known_passage_vectors(
        self, model_key: str, doc_ids: Sequence[int], content_hashes: Sequence[str]
    ) -> dict[bytes, np.ndarray]: ...

    def has_embeddings(self, model_key: str) -> bool: ...

    def rename_embeddings(self, old_key: str, new_key: str) -> int: ...

    def prune_embeddings(self, model_key: str) -> int: ...

    # -- snapshots and the numbered writes ------------------------------------------------
    def snapshot(self) -> AbstractContextManager[None]:
        """One read transaction: every read inside sees one state of the store."""
        ...

    def watermark(self) -> Watermark: ...

    def seq(self) -> int:
        """The number of the latest write (upsert or delete); 0 before any."""
        ...

    def changes_since(self, seq: int) -> Changes: ...

    def count_changes_since(self, seq: int) -> int: ...

    def prune_tombstones(self, seq: int) -> int: ...

    def behind(self, mark: Watermark) -> int: ...

    # -- coordination between processes ------------------------------------------------
    def wait_for_changes(self, seq: int, timeout: float) -> int:
        """Return the latest write number as soon as it is past ``seq``, or
        after ``timeout`` seconds (whatever it is then)."""
        ...

    def indexing_role(self, *, blocking: bool = False) -> AbstractContextManager[bool]:
        """Hold the one indexing role (who embeds and publishes for every
        process of this store) while inside; yields False where another holds
        it (non-blocking)."""
        ...

    def integrity_check(self) -> list[str]:
        """What the database finds damaged in its own files ([] when whole)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


def parse_utc(iso: str) -> dt.datetime:
    """An ISO date or date-time; without an offset, UTC."""
    when = dt.datetime.fromisoformat(iso)
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def is_embargoed(published: str | None, now: dt.datetime | str) -> bool:
    """Whether an article dated ``published`` is still to come at ``now``. A
    bare date counts from the start of its day (UTC); a time without an offset
    is taken as UTC."""
    if not published:
        return False
    try:
        when = parse_utc(published)
    except ValueError:
        return False
    return when > (parse_utc(now) if isinstance(now, str) else now)
