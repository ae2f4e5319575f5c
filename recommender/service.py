"""What the commands and the API call: the store, the live index version and
the embedder, with related, search and the write path on top."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recommender.articles import MAX_DRAFT_CHARS, Article, http_url
from recommender.config import Settings
from recommender.embed import Embedder, model_id_for
from recommender.errors import ArticleNotFound, IndexMismatch, IndexNotFound, RuleNotFound
from recommender.filters import NO_FILTERS, Filters
from recommender.copies import copies_among
from recommender.lexical import entity_terms, snippet_html
from recommender.rank import Query, query_for_row
from recommender.related import Hit, Policy, combine, rank_related, recency_adjust, related_to_row
from recommender.rules import ListRules, Rule
from recommender.search import search, validate_query
from recommender.store import Store, StoredArticle, UpsertCounts, Watermark, is_embargoed
from recommender.text import chunk_article, document_text
from recommender.version import IndexVersion, current_version_name

log = logging.getLogger(__name__)


class LiveIndex:
    """The published version readers use. ``refresh`` loads a newer version
    beside the old one and swaps the reference, so no reader waits."""

    def __init__(self, index_root: Path, model_id: str):
        self.index_root = index_root
        self.model_id = model_id
        self._version: IndexVersion | None = None
        self._lock = threading.Lock()
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> IndexVersion:
        version = self._version
        if version is None:
            if self.error is not None:
                raise self.error
            raise IndexNotFound(
                f"no index has been published in {self.index_root} yet; "
                "run `recommender ingest FILE` and `recommender reindex`"
            )
        return version

    @property
    def version_or_none(self) -> IndexVersion | None:
        return self._version

    def refresh(self) -> bool:
        """Load the version CURRENT names, if it is not the one in use."""
        with self._lock:
            name = current_version_name(self.index_root)
            if name is None or (self._version is not None and self._version.name == name):
                return False
            try:
                version = IndexVersion.load(self.index_root, model_id=self.model_id, name=name).warm()
            except IndexMismatch as exc:
                self.error = exc
                log.error("%s", exc)
                return False
            except (FileNotFoundError, OSError, ValueError) as exc:  # pruned or mid-swap: next poll
                log.warning("could not load index %s: %s", name, exc)
                return False
            self._version, self.error = version, None
            log.info("serving index %s (%d articles)", name, len(version))
            return True

    def watch(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="index-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class ListOptions:
    """Per-request choices, defaulting to the settings."""

    half_life_days: float = 0.0
    max_age_days: int = 0
    mmr_lambda: float = 1.0
    cross_language: bool = False
    dedup: bool = True
    min_confidence: float = 0.0
    fallback: str = "none"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ListOptions:
        values = {
            "half_life_days": settings.half_life_days,
            "max_age_days": settings.max_age_days,
            "mmr_lambda": settings.mmr_lambda,
            "cross_language": False,
            "dedup": settings.dedup,
            "min_confidence": settings.min_confidence,
            "fallback": settings.fallback,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


DELETED_MARGIN = 5
"""Extra items ranked so that articles deleted since the last publish can be
dropped and the list still holds k."""


def _within_age(filters: Filters, options: ListOptions) -> Filters:
    """The filters narrowed to the options' hard age window, if any."""
    if not options.max_age_days:
        return filters
    since = (dt.date.today() - dt.timedelta(days=options.max_age_days)).isoformat()
    return filters if filters.since and filters.since >= since else filters.with_defaults(since=since)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _today() -> float:
    return float((dt.date.today() - dt.date(1970, 1, 1)).days)


class Engine:
    def __init__(self, settings: Settings, live: LiveIndex, load_embedder: Callable[[], Embedder]):
        self.settings = settings
        self.live = live
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self._local = threading.local()
        self._stores: list[Store] = []
        self._related_cache: OrderedDict[tuple, list[Hit]] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, load_embedder: Callable[[], Embedder] | None = None) -> Engine:
        from recommender.index import set_query_threads

        set_query_threads(1)
        live = LiveIndex(settings.index_root, model_id_for(settings.model))
        live.refresh()
        if load_embedder is None:
            load_embedder = default_embedder_loader(settings)
        return cls(settings, live, load_embedder)

    def close(self) -> None:
        self.live.close()
        for store in self._stores:
            store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        """One SQLite connection per thread. Every thread that serves requests
        passes here first, so it also gets FAISS's one-thread setting (an
        OpenMP setting is per thread; threadpool threads start with the default)."""
        store = getattr(self._local, "store", None)
        if store is None:
            from recommender.index import set_query_threads

            set_query_threads(1)
            store = self._local.store = Store.open(self.settings.store_path)
            self._stores.append(store)
        return store

    @property
    def embedder(self) -> Embedder:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = self._load_embedder()
            return self._embedder

    # -- reads ------------------------------------------------------------

    def public_article(self, article_id: str) -> StoredArticle:
        """The article if the public may see it. An embargoed article is
        answered exactly like an unknown id, so no public read confirms that
        it exists before its time."""
        stored = self.store.get(article_id)
        if stored is None or is_embargoed(stored.article.published, _now_iso()):
            raise ArticleNotFound(article_id)
        return stored

    def article(self, article_id: str, *, full: bool = False) -> dict[str, Any]:
        """What a page shows of an article; with ``full`` (an editor with the
        key), also its metadata, and also while it is embargoed."""
        stored = self.store.get(article_id) if full else self.public_article(article_id)
        if stored is None:
            raise ArticleNotFound(article_id)
        data = stored.article.to_dict()
        data["url"] = http_url(data["url"])
        if not full:
            del data["metadata"]
        return data

    def related_hits(
        self, article_id: str, k: int, filters: Filters = NO_FILTERS, options: ListOptions | None = None
    ) -> list[Hit]:
        """The article's list: editors' rules applied, then the automatic
        ranking in the remaining slots. Lists are cached per index version,
        rules generation, embargo state and options; filtered lists are not
        cached, because they read store metadata that can change without a
        new version."""
        version = self.live.current  # 503 before any index, whatever the id
        return self._related_hits(version, self.public_article(article_id), k, filters, options)

    def _related_hits(
        self, version: IndexVersion, stored: StoredArticle, k: int, filters: Filters, options: ListOptions | None
    ) -> list[Hit]:
        options = options or ListOptions.from_settings(self.settings)
        requested = filters
        cacheable = not requested
        filters = self._list_filters(version, stored, filters, options)
        rules = ListRules.of(self.store.rules(stored.article.id, applying=True))
        hidden = tuple(self.store.embargoed_doc_ids(_now_iso()))
        key, hits = None, None
        if cacheable:
            key = (version.name, stored.doc_id, stored.content_hash, k, self.store.rules_generation(), hidden,
                   options, filters, _today() if options.half_life_days else None)
            with self._cache_lock:
                hits = self._related_cache.get(key)
                if hits is not None:
                    self._related_cache.move_to_end(key)
            if hits is not None:
                return self._drop_deleted(hits)[:k]
        policy = self._policy(version, rules, hidden, options)
        hits = self._compute_related(version, stored, k + len(rules.pins) + DELETED_MARGIN, filters, policy)
        # Pins obey the request's own filters and the age window, not the
        # language default: an editor may pin an article in another language.
        pin_filters = requested.with_defaults(since=filters.since) if options.max_age_days else requested
        # The list keeps a few spare items, so that articles deleted before the
        # next publish can be dropped (also from the cached list) and k remain.
        hits = self._place_pins(
            self._drop_deleted(hits), list(rules.pins), k + DELETED_MARGIN, pin_filters, hidden, exclude=stored.doc_id
        )
        if options.fallback != "none" and len(hits) < k + DELETED_MARGIN:
            hits += self._fallback(version, stored, k + DELETED_MARGIN - len(hits), hits, requested, policy, options)
        if key is not None:
            with self._cache_lock:
                self._related_cache[key] = hits
                while len(self._related_cache) > self.settings.related_cache_size:
                    self._related_cache.popitem(last=False)
        return hits[:k]  # deleted articles were dropped above; pins are read from the store

    def _compute_related(self, version: IndexVersion, stored, k: int, filters: Filters, policy: Policy) -> list[Hit]:
        allowed = self._allowed_rows(version, filters)
        row = version.row_of(stored.doc_id)
        if row is None:  # written since the index was published: rank it as a draft
            query = self._draft(version, stored.article.title, stored.article.body, stored.article.published)
            hits = rank_related(version, query, k + 1 + DELETED_MARGIN, self.settings, allowed_rows=allowed,
                                policy=policy)
            hits = [h for h in hits if h.doc_id != stored.doc_id]
            return self._drop_copies_of(stored.article.body, hits, policy)[:k]
        return related_to_row(version, row, k, self.settings, allowed_rows=allowed, policy=policy)

    def _fallback(
        self, version: IndexVersion, stored, n: int, hits: list[Hit], filters: Filters, policy: Policy,
        options: ListOptions,
    ) -> list[Hit]:
        """The newest articles of the source's section ("section") or of the
        archive ("latest"), to fill a list the floor left short; never the
        article itself, a copy of it, an item already listed, a blocked,
        embargoed or future-dated article. Marked ``source: "fallback"``."""
        section = stored.article.section if options.fallback == "section" else None
        if options.fallback == "section" and not section:
            return []
        taken = {h.doc_id for h in hits} | {stored.doc_id}
        row = version.row_of(stored.doc_id)
        if row is not None:  # copies of the article (its story) are not filler either
            story = version.story_ids[row]
            taken.update(int(d) for d in version.doc_ids[version.story_ids == story])
        excluded = policy.excluded_rows
        if excluded is not None and len(excluded):
            taken.update(int(d) for d in version.doc_ids[excluded])
        found = self.store.latest_doc_ids(section, n + len(taken), until=_now_iso())
        allowed = set(self.store.filter_doc_ids(found, _within_age(filters, options)).tolist())
        return [Hit(d, 0.0, source="fallback") for d in found if d in allowed and d not in taken][:n]

    def _drop_copies_of(self, body: str, hits: list[Hit], policy: Policy) -> list[Hit]:
        """A text not in the index yet has no story label: its copies among
        the items are found by their words."""
        if not policy.dedup or not hits:
            return hits
        found = self.store.get_many([h.doc_id for h in hits])
        texts = [found[h.doc_id].article.body if h.doc_id in found else "" for h in hits]
        return [h for h, copy in zip(hits, copies_among(body, texts)) if not copy]

    def _drop_deleted(self, hits: list[Hit]) -> list[Hit]:
        """Articles deleted since the index was published never appear."""
        alive = set(self.store.filter_doc_ids([h.doc_id for h in hits], NO_FILTERS).tolist())
        return [h for h in hits if h.doc_id in alive]

    def _place_pins(
        self, hits: list[Hit], pins: list[Rule], k: int, filters: Filters, hidden: tuple[int, ...], exclude: int
    ) -> list[Hit]:
        """Put pinned articles at their positions; automatic items fill the rest.
        A pin is dropped if its article is gone, embargoed, blocked (already
        left out of ``pins``) or outside the request's filters."""
        if not pins:
            return hits[:k]
        found = {s.article.id: s for s in (self.store.get(p.target) for p in pins) if s is not None}
        allowed = set(self.store.filter_doc_ids([s.doc_id for s in found.values()], filters).tolist())
        manual: list[tuple[int, int, Hit]] = []
        for pin in pins:
            stored = found.get(pin.target)
            if stored is None or stored.doc_id in hidden or stored.doc_id not in allowed or stored.doc_id == exclude:
                continue
            manual.append((pin.position, -(pin.id or 0), Hit(stored.doc_id, 0.0, source="manual")))
        pinned_ids = {h.doc_id for _, _, h in manual}
        result = [h for h in hits if h.doc_id not in pinned_ids]
        # Two pins at one position: the earlier rule keeps it, the later one comes next.
        for position, _, hit in sorted(manual, key=lambda m: (m[0], m[1])):
            result.insert(min(position - 1, len(result)), hit)
        return result[:k]

    def _policy(self, version: IndexVersion, rules: ListRules, hidden: tuple[int, ...], options: ListOptions) -> Policy:
        excluded = list(hidden)
        for article_id in rules.blocked:
            stored = self.store.get(article_id)
            if stored is not None:
                excluded.append(stored.doc_id)
        excluded_rows = np.unique(version.rows_of(np.asarray(excluded, dtype=np.int64))) if excluded else None
        boost_rows, boost_values = self._boosts(version, rules)

        def boosts(rows: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(boost_rows, rows), len(boost_rows) - 1)
            return np.where(boost_rows[at] == rows, boost_values[at], 0.0)

        recency = None
        if options.half_life_days:
            recency = recency_adjust(version, options.half_life_days, self.settings.recency_weight, _today())
        return Policy(
            excluded_rows=excluded_rows,
            adjust=combine(boosts if len(boost_rows) else None, recency),
            mmr_lambda=options.mmr_lambda,
            dedup=options.dedup,
            min_confidence=options.min_confidence,
        )

    def _boosts(self, version: IndexVersion, rules: ListRules) -> tuple[np.ndarray, np.ndarray]:
        """Rows and score changes of the boosts and buries (summed per row)."""
        if not rules.boosts:
            return np.zeros(0, np.int64), np.zeros(0)
        total: dict[int, float] = {}
        for rule in rules.boosts:
            doc_ids = self.store.doc_ids_for_target(rule.target_type, rule.target)
            for row in version.rows_of(doc_ids).tolist():
                total[row] = total.get(row, 0.0) + rule.signed_weight
        rows = np.array(sorted(total), dtype=np.int64)
        return rows, np.array([total[r] for r in rows.tolist()], dtype=np.float64)

    def _list_filters(self, version: IndexVersion, stored, filters: Filters, options: ListOptions) -> Filters:
        """The request's filters, plus the hard age window and, unless the
        request opts out, the source article's language."""
        filters = _within_age(filters, options)
        lang = stored.article.lang
        if not options.cross_language and lang and not filters.lang and self._languages(version) - {lang}:
            filters = filters.with_defaults(same_language=lang)
        return filters

    def _languages(self, version: IndexVersion) -> set[str]:
        """Languages in the store, checked once per index version."""
        cached = getattr(self._local, "languages", None)
        if cached is None or cached[0] != version.name:
            cached = self._local.languages = (version.name, self.store.languages())
        return cached[1]

    def behind(self) -> int | None:
        """Articles the served version lacks: added, changed or deleted since
        its snapshot, plus those left out of it (not embedded). None for a
        version published before snapshots were recorded."""
        version = self.live.current
        snapshot = version.manifest.get("snapshot")
        if not snapshot:
            return None
        mark = Watermark(snapshot["max_doc_id"], snapshot["content_updated_at"], snapshot["articles"])
        return self.store.behind(mark) + int(snapshot.get("left_out", 0))

    def related(
        self, article_id: str, k: int = 10, filters: Filters = NO_FILTERS, options: ListOptions | None = None
    ) -> list[dict[str, Any]]:
        version = self.live.current
        stored = self.public_article(article_id)
        hits = self._related_hits(version, stored, k, filters, options)
        row = version.row_of(stored.doc_id)
        return self._items(hits, version=version, query=query_for_row(version, row) if row is not None else None)

    def related_to_draft(self, title: str, body: str, k: int = 10, filters: Filters = NO_FILTERS) -> list[dict[str, Any]]:
        version = self.live.current
        self.store  # noqa: B018 - sets up this thread (FAISS threads) before the search
        query = self._draft(version, title, body)
        options = ListOptions.from_settings(self.settings)
        rules = ListRules.of(self.store.global_rules(), for_search=True)
        policy = self._policy(version, rules, tuple(self.store.embargoed_doc_ids(_now_iso())), options)
        hits = rank_related(version, query, k + DELETED_MARGIN, self.settings,
                            allowed_rows=self._allowed_rows(version, filters), policy=policy)
        hits = self._drop_copies_of(body, self._drop_deleted(hits), policy)
        return self._items(hits[:k], version=version, query=query)

    def search_hits(self, query: str, k: int, filters: Filters = NO_FILTERS, options: ListOptions | None = None) -> list[Hit]:
        query = validate_query(query)
        options = options or ListOptions.from_settings(self.settings)
        version = self.live.current
        self.store  # noqa: B018 - sets up this thread (FAISS threads) before the search
        vector = self.embedder.embed([query])[0]
        filters = _within_age(filters, options)
        allowed = self._allowed_rows(version, filters)
        rules = ListRules.of(self.store.global_rules(), for_search=True)
        policy = self._policy(version, rules, tuple(self.store.embargoed_doc_ids(_now_iso())), options)
        hits = search(version, vector, query, k + DELETED_MARGIN, self.settings, allowed_rows=allowed, policy=policy)
        return self._drop_deleted(hits)[:k]

    def search(
        self, query: str, k: int = 10, filters: Filters = NO_FILTERS, options: ListOptions | None = None
    ) -> list[dict[str, Any]]:
        hits = self.search_hits(query, k, filters, options)
        found = self.store.get_many([h.doc_id for h in hits])
        items = self._items(hits, found)
        bodies = {s.article.id: s.article.body for s in found.values()}
        for item in items:
            item["snippet"] = snippet_html(bodies[item["id"]], query)
        return items

    def _draft(self, version: IndexVersion, title: str, body: str, published: str | None = None) -> Query:
        """What the ranker needs of a text not in the index (a draft, or an
        article written since the last publish), read up to MAX_DRAFT_CHARS."""
        from recommender.pipeline import article_vectors, published_days

        body = body[:MAX_DRAFT_CHARS]
        chunks = chunk_article(title, body, self.settings.chunk_words, self.settings.max_chunks)
        vectors = self.embedder.embed(chunks)
        vector = article_vectors(vectors, np.array([0, len(vectors)]))[0]
        lead = np.asarray(vectors[0], dtype=np.float32)
        return Query(
            vector=vector,
            lead=lead / max(float(np.linalg.norm(lead)), 1e-12),
            terms=version.tfidf.transform([document_text(title, body)]),
            entities=version.entities.transform_counts([entity_terms(body)]),
            day=float(published_days([published])[0]),
        )

    def _allowed_rows(self, version: IndexVersion, filters: Filters) -> np.ndarray | None:
        if not filters:
            return None
        return np.sort(version.rows_of(self.store.doc_ids_matching(filters)))

    def _items(
        self, hits: list[Hit], found: dict | None = None, *, version: IndexVersion | None = None,
        query: Query | None = None,
    ) -> list[dict[str, Any]]:
        """Response items; with the list's version and query, ranked items
        also carry their reasons (shared names, days apart)."""
        if found is None:
            found = self.store.get_many([h.doc_id for h in hits])
        items = []
        for hit in hits:
            stored = found.get(hit.doc_id)
            if stored is None:  # deleted since the index was published
                continue
            a = stored.article
            item = {"id": a.id, "title": a.title, "url": http_url(a.url), "published": a.published,
                    "section": a.section, "score": round(hit.score, 4) if hit.source == "auto" else None,
                    "source": hit.source}
            if hit.confidence is not None:
                item["confidence"] = hit.confidence
            if hit.source == "auto" and version is not None and query is not None:
                item["reasons"] = reasons(version, query, version.row_of(hit.doc_id))
            items.append(item)
        return items

    # -- writes -----------------------------------------------------------

    def rules(self, article: str | None = None) -> list[Rule]:
        return self.store.rules(article)

    def add_rule(self, rule: Rule) -> Rule:
        for name in rule.article_ids:
            if self.store.get(name) is None:
                raise ArticleNotFound(name)
        return self.store.add_rule(rule)

    def delete_rule(self, rule_id: int) -> None:
        if not self.store.delete_rule(rule_id):
            raise RuleNotFound(rule_id)

    def upsert(self, articles: Sequence[Article]) -> UpsertCounts:
        return self.store.upsert(articles)

    def delete(self, article_id: str) -> None:
        if not self.store.delete([article_id]):
            raise ArticleNotFound(article_id)


REASON_TERMS = 5


def reasons(version: IndexVersion, query: Query, row: int | None) -> dict[str, Any]:
    """Why an item is in a list, for editors: the names, places and numbers
    it shares with the article (the rarest first) and the days between them."""
    if row is None:
        return {}
    mine = query.entities
    theirs = version.entities.matrix[row]
    shared = np.intersect1d(mine.indices, theirs.indices, assume_unique=True)
    terms = version.entities.terms
    best = shared[np.argsort(-version.entities.idf[shared], kind="stable")[:REASON_TERMS]]
    out: dict[str, Any] = {"shared": [terms[i] for i in best.tolist()]}
    days = abs(float(version.published_days[row]) - query.day)
    if not np.isnan(days):
        out["days_apart"] = int(days)
    return out


def default_embedder_loader(settings: Settings) -> Callable[[], Embedder]:
    def load() -> Embedder:
        from recommender.embed import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder.from_settings(settings)

    return load


class Reindexer:
    """Runs the one write path (store -> reindex pipeline -> atomic publish) in
    a background thread after writes. A file lock keeps one job at a time
    across worker processes; writes that arrive during a job start another."""

    def __init__(self, settings: Settings, engine: Engine, *, debounce: float = 0.2):
        self.settings = settings
        self.engine = engine
        self.debounce = debounce
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reindexer", daemon=True)
        self.last_error: str | None = None
        self.runs = 0

    def start(self) -> Reindexer:
        """Start the thread. Where writes are enabled (an API key is set), it
        checks the store at once: writes acknowledged before a crash or a
        restart, or made by another process (``recommender ingest``), are
        published without waiting for the next write; on an unchanged store
        the check publishes nothing. A read-only replica (no key) never
        publishes: its versions come from the indexing machine."""
        if self.settings.api_key:
            self._wanted.set()
        self._thread.start()
        return self

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        from recommender.pipeline import reindex

        with Store.open(self.settings.store_path) as store:
            while not self._stop.is_set():
                self._wanted.wait()
                if self._stop.is_set():
                    return
                self._stop.wait(self.debounce)  # let a burst of writes land first
                self._wanted.clear()
                try:
                    with reindex_lock(self.settings.data_dir):
                        if store.count():
                            reindex(self.settings, store, lambda: self.engine.embedder)
                    self.runs += 1
                    self.last_error = None
                except Exception as exc:  # keep serving the last good index
                    self.last_error = type(exc).__name__  # the details go to the log, not to clients
                    log.exception("background reindex failed")
                self.engine.live.refresh()


@contextmanager
def reindex_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "reindex.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
