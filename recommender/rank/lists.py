"""A list as a request gets it: the ranking (``related``, ``search``) with the
editorial policy around it: language and age defaults, blocks and embargoes,
boosts and buries, recency, pins at their positions, articles deleted since
the publish, copies of a text not in the index, and the fallback filler.

``Lists`` is built per request over the version being served and the
calling thread's store; it returns typed ``Item``s (``recommender.api.present``
turns them into response items)."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import cached_property
from threading import Lock
from typing import Literal

import numpy as np

from recommender.articles import MAX_DRAFT_CHARS, Article
from recommender.clock import epoch_days, now_iso, today
from recommender.config import Settings
from recommender.copies import copies_among
from recommender.embedders import Embedder
from recommender.filters import NO_FILTERS, Filters
from recommender.lexical import entity_terms
from recommender.passages import article_vectors, chunk_article
from recommender.rank.related import Hit, Policy, combine, rank_related, recency_adjust, related_to_row
from recommender.rank.search import search
from recommender.rank.signals import Query, query_for_row
from recommender.rules import ListRules, Rule
from recommender.store import Store, StoredArticle
from recommender.text import document_text
from recommender.view import View

DELETED_MARGIN = 5
"""Extra items ranked so that articles deleted since the last publish can be
dropped and the list still holds k."""
REASON_TERMS = 5
Fallback = Literal["none", "section", "latest"]


@dataclass(frozen=True)
class ListOptions:
    """Per-request choices, defaulting to the settings."""

    half_life_days: float = 0.0
    max_age_days: int = 0
    mmr_lambda: float = 1.0
    cross_language: bool = False
    dedup: bool = True
    min_confidence: float = 0.0
    fallback: Fallback = "none"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> ListOptions:
        values: dict[str, object] = {
            "half_life_days": settings.half_life_days,
            "max_age_days": settings.max_age_days,
            "mmr_lambda": settings.mmr_lambda,
            "cross_language": False,
            "dedup": settings.dedup,
            "min_confidence": settings.min_confidence,
            "fallback": settings.fallback,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Reasons:
    """Why an item is in a related list, for editors."""

    shared: tuple[str, ...]
    """Names, places and numbers it shares with the article, the rarest first."""
    days_apart: int | None = None


@dataclass(frozen=True)
class Item:
    """One entry of a related list or of search results: the article and how it got there."""

    article: Article
    hit: Hit
    reasons: Reasons | None = None
    """Ranked items of related lists; None for search results, pins and filler."""

    @property
    def id(self) -> str:
        return self.article.id

    @property
    def doc_id(self) -> int:
        return self.hit.doc_id


class ListCache:
    """Related lists kept per server process: a thread-safe LRU over keys that
    name everything a list depends on (version, rules generation, embargo
    state, options), so an entry is never stale, only unused."""

    def __init__(self, size: int):
        self.size = size
        self._lists: OrderedDict[Hashable, list[Hit]] = OrderedDict()
        self._lock = Lock()

    def __len__(self) -> int:
        return len(self._lists)

    def get(self, key: Hashable) -> list[Hit] | None:
        with self._lock:
            hits = self._lists.get(key)
            if hits is not None:
                self._lists.move_to_end(key)
            return hits

    def put(self, key: Hashable, hits: list[Hit]) -> None:
        with self._lock:
            self._lists[key] = hits
            while len(self._lists) > self.size:
                self._lists.popitem(last=False)

@dataclass(frozen=True)
class RuleRows:
    """Editorial rules resolved to rows of one view: the blocked rows and
    each boosted row's summed weight. Resolving reads the view's in-memory
    columns once for all the rules (``View.target_weights``) and the store
    once per 500 named articles; a request then applies arrays, whatever the
    number of rules."""

    blocked_ids: frozenset[str] = frozenset()
    blocked_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Sorted, unique."""
    boost_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Sorted, unique."""
    boost_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def resolve(cls, view: View, store: Store, rules: ListRules) -> RuleRows:
        blocked = store.doc_ids_of(sorted(rules.blocked)) if rules.blocked else {}
        blocked_rows = np.unique(view.rows_of(np.fromiter(blocked.values(), np.int64, len(blocked))))
        by_type: dict[str, dict[str, float]] = {"article": {}, "section": {}, "tag": {}}
        for rule in rules.boosts:
            named = by_type[rule.target_type]
            named[rule.target] = named.get(rule.target, 0.0) + rule.signed_weight
        if not rules.boosts:
            return cls(rules.blocked, blocked_rows)
        total = view.target_weights(by_type["section"], by_type["tag"])
        if by_type["article"]:
            found = store.doc_ids_of(sorted(by_type["article"]))
            rows = view.rows_or_missing(np.fromiter(found.values(), np.int64, len(found)))
            weights = np.array([by_type["article"][i] for i in found])
            np.add.at(total, rows[rows >= 0], weights[rows >= 0])
        boost_rows = np.flatnonzero(total)
        return cls(rules.blocked, blocked_rows, boost_rows, total[boost_rows])

    def __add__(self, other: RuleRows) -> RuleRows:
        """Both sets of rules: blocks joined, the boosts of a row summed."""
        if not other.blocked_ids and not len(other.boost_rows):
            return self
        rows, at = np.unique(np.concatenate([self.boost_rows, other.boost_rows]), return_inverse=True)
        values = np.bincount(at, weights=np.concatenate([self.boost_values, other.boost_values]), minlength=len(rows))
        return RuleRows(self.blocked_ids | other.blocked_ids, np.union1d(self.blocked_rows, other.blocked_rows),
                        rows, values)


class RuleCache:
    """The rules for every list (and search) resolved for the view being
    served, per rules generation: one entry, resolved by the first request
    that needs it while the others wait for it."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._rows = RuleRows()
        self._lock = Lock()

    def get(self, view: View, store: Store, generation: int) -> RuleRows:
        key = (view.state, generation)
        with self._lock:
            if self._key != key:
                self._rows = RuleRows.resolve(view, store, ListRules.of(store.global_rules(), for_search=True))
                self._key = key
            return self._rows


def within_age(filters: Filters, options: ListOptions) -> Filters:
    """The filters narrowed to the options' hard age window, if any."""
    if not options.max_age_days:
        return filters
    since = (dt.date.today() - dt.timedelta(days=options.max_age_days)).isoformat()
    return filters if filters.since and filters.since >= since else filters.with_defaults(since=since)


@dataclass
class Lists:
    """The lists of one request, over one index version and this thread's store."""

    settings: Settings
    version: View
    store: Store
    embedder: Embedder
    cache: ListCache
    now: str = field(default_factory=now_iso)
    query_embedder: Embedder | None = None
    """Embeds search queries (an ONNX session); None: ``embedder``."""
    rule_cache: RuleCache = field(default_factory=RuleCache)
    """The server's (one per engine): the rules for every list, resolved once per view and rules generation."""

    @cached_property
    def global_rules(self) -> RuleRows:
        return self.rule_cache.get(self.version, self.store, self.rules_generation)

    @cached_property
    def rules_generation(self) -> int:
        return self.store.rules_generation()

    @cached_property
    def hidden(self) -> tuple[int, ...]:
        """Embargoed articles (published in the future): never shown."""
        return tuple(self.store.embargoed_doc_ids(self.now))

    # -- related lists ----------------------------------------------------

    def related(self, stored: StoredArticle, k: int, filters: Filters, options: ListOptions) -> list[Item]:
        hits = self.related_hits(stored, k, filters, options)
        row = self.version.row_of(stored.doc_id)
        return self.items(hits, query_for_row(self.version, row) if row is not None else None)

    def related_hits(self, stored: StoredArticle, k: int, filters: Filters, options: ListOptions) -> list[Hit]:
        """The article's list: editors' rules applied, then the automatic
        ranking in the remaining slots. Lists are cached per served view
        (version and segments), rules generation, embargo state, filters and
        options: filters read the view's columns, and a change of metadata is
        a write that makes a new view."""
        requested = filters
        filters = self._list_filters(stored, filters, options)
        key = (self.version.state, stored.doc_id, stored.content_hash, k, self.rules_generation,
               self.hidden, options, filters, today() if options.half_life_days else None)
        cached = self.cache.get(key)
        if cached is not None:
            return self._drop_deleted(cached)[:k]
        own = ListRules.of(self.store.rules(stored.article.id))
        rules = self.global_rules + RuleRows.resolve(self.version, self.store, own) if own else self.global_rules
        pins = [p for p in own.pins if p.target not in rules.blocked_ids]
        policy = self._policy(rules, options)
        hits = self._ranked(stored, k + len(pins) + DELETED_MARGIN, filters, policy)
        # Pins obey the request's own filters and the age window, not the
        # language default: an editor may pin an article in another language.
        pin_filters = requested.with_defaults(since=filters.since) if options.max_age_days else requested
        # The list keeps a few spare items, so that articles deleted before the
        # next publish can be dropped (also from the cached list) and k remain.
        hits = self._place_pins(self._drop_deleted(hits), pins, k + DELETED_MARGIN, pin_filters,
                                exclude=stored.doc_id)
        if options.fallback != "none" and len(hits) < k + DELETED_MARGIN:
            hits += self._fallback(stored, k + DELETED_MARGIN - len(hits), hits, requested, policy, options)
        self.cache.put(key, hits)
        return hits[:k]  # deleted articles were dropped above; pins are read from the store

    def draft(self, title: str, body: str, k: int, filters: Filters) -> list[Item]:
        """Related articles for a text not in the archive (an editor's draft)."""
        query = self.query_for_text(title, body)
        options = ListOptions.from_settings(self.settings)
        policy = self._policy(self.global_rules, options)
        hits = rank_related(self.version, query, k + DELETED_MARGIN, self.settings,
                            allowed_rows=self._allowed_rows(filters), policy=policy)
        hits = self._drop_copies_of(body, self._drop_deleted(hits), policy)
        return self.items(hits[:k], query)

    def _ranked(self, stored: StoredArticle, k: int, filters: Filters, policy: Policy) -> list[Hit]:
        allowed = self._allowed_rows(filters)
        row = self.version.row_of(stored.doc_id)
        if row is None:  # written since the index was published: rank it as a draft
            article = stored.article
            query = self.query_for_text(article.title, article.body, article.published)
            hits = rank_related(self.version, query, k + 1 + DELETED_MARGIN, self.settings, allowed_rows=allowed,
                                policy=policy)
            hits = [h for h in hits if h.doc_id != stored.doc_id]
            return self._drop_copies_of(article.body, hits, policy)[:k]
        return related_to_row(self.version, row, k, self.settings, allowed_rows=allowed, policy=policy)

    def query_for_text(self, title: str, body: str, published: str | None = None) -> Query:
        """What the ranker needs of a text not in the index (a draft, or an
        article written since the last publish), read up to MAX_DRAFT_CHARS."""
        body = body[:MAX_DRAFT_CHARS]
        chunks = chunk_article(title, body, self.settings.chunk_words, self.settings.max_chunks)
        vectors = self.embedder.embed(chunks)
        vector = article_vectors(vectors, np.array([0, len(vectors)]))[0]
        lead = np.asarray(vectors[0], dtype=np.float32)
        return Query(
            vector=vector,
            lead=lead / max(float(np.linalg.norm(lead)), 1e-12),
            terms=self.version.tfidf.transform([document_text(title, body)]),
            entities=self.version.entities.transform_counts([entity_terms(body)]),
            day=float(epoch_days([published])[0]),
        )

    def _fallback(
        self, stored: StoredArticle, n: int, hits: list[Hit], filters: Filters, policy: Policy, options: ListOptions
    ) -> list[Hit]:
        """The newest articles of the source's section ("section") or of the
        archive ("latest"), to fill a list the floor left short; never the
        article itself, a copy of it, an item already listed, a blocked,
        embargoed or future-dated article. Marked ``source: "fallback"``."""
        section = stored.article.section if options.fallback == "section" else None
        if options.fallback == "section" and not section:
            return []
        version = self.version
        taken = {h.doc_id for h in hits} | {stored.doc_id}
        row = version.row_of(stored.doc_id)
        if row is not None:  # copies of the article (its story) are not filler either
            story = version.story_ids[row]
            taken.update(int(d) for d in version.doc_ids[version.story_ids == story])
        excluded = policy.excluded_rows
        if excluded is not None and len(excluded):
            taken.update(int(d) for d in version.doc_ids[excluded])
        found = self.store.latest_doc_ids(section, n + len(taken), until=self.now)
        allowed = set(self.store.filter_doc_ids(found, within_age(filters, options)).tolist())
        return [Hit(d, 0.0, source="fallback") for d in found if d in allowed and d not in taken][:n]

    def _place_pins(self, hits: list[Hit], pins: list[Rule], k: int, filters: Filters, exclude: int) -> list[Hit]:
        """Put pinned articles at their positions; automatic items fill the rest.
        A pin is dropped if its article is gone, embargoed, blocked (already
        left out of ``pins``) or outside the request's filters."""
        if not pins:
            return hits[:k]
        doc_ids = self.store.doc_ids_of(list(dict.fromkeys(p.target for p in pins)))
        found = {s.article.id: s for s in self.store.get_many(list(doc_ids.values())).values()}
        allowed = set(self.store.filter_doc_ids([s.doc_id for s in found.values()], filters).tolist())
        manual: list[tuple[int, int, Hit]] = []
        for pin in pins:
            stored = found.get(pin.target)
            if stored is None or stored.doc_id in self.hidden or stored.doc_id not in allowed or stored.doc_id == exclude:
                continue
            manual.append((pin.position or 1, -(pin.id or 0), Hit(stored.doc_id, 0.0, source="manual")))
        pinned_ids = {h.doc_id for _, _, h in manual}
        result = [h for h in hits if h.doc_id not in pinned_ids]
        # Two pins at one position: the earlier rule keeps it, the later one comes next.
        for position, _, hit in sorted(manual, key=lambda m: (m[0], m[1])):
            result.insert(min(position - 1, len(result)), hit)
        return result[:k]

    def _list_filters(self, stored: StoredArticle, filters: Filters, options: ListOptions) -> Filters:
        """The request's filters, plus the hard age window and, unless the
        request opts out, the source article's language."""
        filters = within_age(filters, options)
        lang = stored.article.lang
        if not options.cross_language and lang and not filters.lang and self.version.languages() - {lang}:
            filters = filters.with_defaults(same_language=lang)
        return filters

    # -- search -----------------------------------------------------------

    def search(self, query: str, k: int, filters: Filters, options: ListOptions) -> list[Item]:
        """``query`` as ``rank.search.validate_query`` returns it (``Engine.search`` checks it first)."""
        vector = (self.query_embedder or self.embedder).embed([query])[0]
        policy = self._policy(self.global_rules, options)
        hits = search(self.version, vector, query, k + DELETED_MARGIN, self.settings,
                      allowed_rows=self._allowed_rows(within_age(filters, options)), policy=policy)
        return self.items(self._drop_deleted(hits)[:k])

    # -- shared -----------------------------------------------------------

    def _policy(self, rules: RuleRows, options: ListOptions) -> Policy:
        version = self.version
        excluded_rows = rules.blocked_rows
        if self.hidden:
            excluded_rows = np.union1d(excluded_rows, version.rows_of(np.asarray(self.hidden, dtype=np.int64)))
        boost_rows, boost_values = rules.boost_rows, rules.boost_values

        def boosts(rows: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(boost_rows, rows), len(boost_rows) - 1)
            return np.where(boost_rows[at] == rows, boost_values[at], 0.0)

        recency = None
        if options.half_life_days:
            recency = recency_adjust(version, options.half_life_days, self.settings.recency_weight, today())
        return Policy(
            excluded_rows=excluded_rows if len(excluded_rows) else None,
            adjust=combine(boosts if len(boost_rows) else None, recency),
            mmr_lambda=options.mmr_lambda,
            dedup=options.dedup,
            min_confidence=options.min_confidence,
        )

    def _allowed_rows(self, filters: Filters) -> np.ndarray | None:
        """Read from the version's in-memory columns: no store scan per request."""
        return self.version.filter_rows(filters) if filters else None

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

    def items(self, hits: list[Hit], query: Query | None = None) -> list[Item]:
        """The hits' articles (read in one query); with the list's query,
        ranked items also carry their reasons."""
        found = self.store.get_many([h.doc_id for h in hits])
        ranked = [h for h in hits if h.source == "auto"] if query is not None else []
        why = dict(zip((h.doc_id for h in ranked), reasons(self.version, query, ranked))) if query is not None else {}
        items = []
        for hit in hits:
            stored = found.get(hit.doc_id)
            if stored is None:  # deleted since the index was published
                continue
            items.append(Item(stored.article, hit, why.get(hit.doc_id)))
        return items


def reasons(version: View, query: Query, hits: list[Hit]) -> list[Reasons | None]:
    """Per hit, the names, places and numbers it shares with the article (the
    rarest first) and the days between them; the hits' rows are read at once."""
    rows = [version.row_of(h.doc_id) for h in hits]
    known = [r for r in rows if r is not None]
    if not known:
        return [None] * len(hits)
    block = version.entities.matrix[np.asarray(known, dtype=np.int64)]
    mine = query.entities.indices
    terms = version.entities.terms
    out: list[Reasons | None] = []
    i = 0
    for row in rows:
        if row is None:
            out.append(None)
            continue
        theirs = block.indices[block.indptr[i] : block.indptr[i + 1]]
        i += 1
        shared = np.intersect1d(mine, theirs)
        best = shared[np.argsort(-version.entities.idf[shared], kind="stable")[:REASON_TERMS]]
        days = abs(float(version.published_days[row]) - query.day)
        out.append(Reasons(tuple(terms[t] for t in best.tolist()), None if np.isnan(days) else int(days)))
    return out
