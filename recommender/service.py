"""What the commands and the API call: the served index version, the store,
the embedder and the list cache (``Engine``), the live version's reload
(``LiveIndex``) and the background write path (``Reindexer``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from recommender import directory, integrity
from recommender.articles import Article
from recommender.clock import now_iso
from recommender.config import Settings
from recommender.embedders import LazyEmbedder, model_id_for, resolve
from recommender.embedders.query import QueryEmbedder
from recommender.errors import ArticleNotFound, IndexDamaged, IndexMismatch, IndexNotFound, RuleNotFound
from recommender.filters import NO_FILTERS, Filters
from recommender.index import set_query_threads
from recommender.pipeline import reindex
from recommender.rank.lists import Item, ListCache, ListOptions, Lists, RuleCache
from recommender.rank.search import validate_query
from recommender.rules import Rule
from recommender.store import Store, StoredArticle, UpsertCounts, is_embargoed, open_store
from recommender.version import IndexVersion
from recommender.view import Refusal, View, ViewParts, Views

log = logging.getLogger(__name__)


class LiveIndex:
    """The published view readers use: the newest view that verifies, which is
    the one CURRENT names unless a file of it is damaged (``Views.newest_verified``;
    what was refused and why is in ``refused`` and the log). ``refresh``
    loads a newer one beside the old one and swaps the reference, so no
    reader waits. With ``background_checksums`` (a server), the checksums of
    large files are checked in a thread after the view starts serving, and a
    view that fails is withdrawn (``verifying``: that thread)."""

    def __init__(self, index_root: Path, model_id: str, *, background_checksums: bool = False):
        self.index_root = index_root
        self.model_id = model_id
        self.views = Views(index_root, model_id, defer_checksums=background_checksums)
        self._version: View | None = None
        self._parts: ViewParts | None = None
        self._lock = threading.Lock()
        self._swapped = threading.Condition()
        self.error: Exception | None = None
        self.refused: list[Refusal] = []
        """What the last refresh would not serve, and why (``/readyz``)."""
        self.on_refused: Callable[[], None] | None = None
        """Called when a refresh refuses something new (a writer rebuilds from the store)."""
        self.verifying: threading.Thread | None = None
        """The last background check of a served version's large files (None: none started)."""
        self._checking: dict[int, IndexVersion] = {}
        """The versions whose check runs now, by ``id``: one pass per version, however many views are served on it."""
        self._checking_lock = threading.Lock()
        self._recheck = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> View:
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
    def version_or_none(self) -> View | None:
        return self._version

    @property
    def pending(self) -> int:
        """Changed articles the served view left out (not embedded yet)."""
        parts = self._parts
        return 0 if parts is None else len(parts.pending)

    @property
    def checksums(self) -> str:
        """The served version's checksums: "verified", "checking" (large files,
        in the background), or "not recorded" (a version of an earlier release)."""
        parts = self._parts
        if parts is None:
            return "none"
        if not parts.base.manifest.checksums:
            return "not recorded"
        return "checking" if parts.base.unchecked else "verified"

    def refresh(self) -> bool:
        """Serve the newest view that verifies, if it is not the one in use."""
        with self._lock:
            try:
                name, segments = directory.read_current(self.index_root)
                damaged_current = False
            except IndexDamaged:  # look for the newest version that verifies
                name, segments, damaged_current = None, (), True
            served = self._version
            if name is None and not damaged_current:
                return False
            if not self._recheck and served is not None and served.name == name and served.segments == segments:
                return False
            self._recheck = False
            try:
                parts, refused = self.views.newest_verified()
            except IndexMismatch as exc:
                self.error = exc
                log.error("%s", exc)
                return False
            except (FileNotFoundError, OSError) as exc:  # pruned or mid-swap: next poll
                log.warning("could not load index %s: %s", name, exc)
                return False
            self._note_refusals(refused)
            if served is not None and refused and not _refuses(refused, served) \
                    and (parts is None or _older(parts.view, served)):  # never back, unless what is served is refused
                log.warning("kept serving index %s: the newest view that verifies is %s", served.state,
                            parts.view.state if parts is not None else "none")
                return False
            if parts is None:
                if refused:  # nothing verifies: 503, saying why
                    then = ("; the server rebuilds it from the store" if self.on_refused is not None
                            else "; run `recommender repair`")
                    named = "; ".join(" ".join(filter(None, (f"version {r.version}" if r.version else None,
                                                             f"segment {r.segment}" if r.segment else None,
                                                             r.file and f"{r.file} is damaged"))) for r in refused)
                    error = IndexDamaged("no published index verifies: " + "; ".join(r.reason for r in refused) + then,
                                         public=f"no published index verifies: {named}{then}")
                    with self._swapped:
                        self._version, self._parts, self.error = None, None, error
                return False
            if served is parts.view:
                return False
            if served is None or served.name != parts.view.name:
                log.info("serving index %s (%d articles)", parts.view.name, len(parts.view))
            with self._swapped:
                self._version, self._parts, self.error = parts.view, parts, None
                self._swapped.notify_all()
            self._check_in_background(parts)
            return True

    def _note_refusals(self, refused: list[Refusal]) -> None:
        """Log what is refused (once each) and tell the writer about anything new."""
        new = [r for r in refused if r not in self.refused]
        self.refused = refused
        for refusal in new:
            log.error("refused to serve %s: %s", refusal.segment or refusal.version or "CURRENT", refusal.reason)
        if new and self.on_refused is not None:
            self.on_refused()

    def _check_in_background(self, parts: ViewParts) -> None:
        base = parts.base
        with self._checking_lock:
            if not base.unchecked or id(base) in self._checking:  # checked, or being checked
                return
            self._checking[id(base)] = base

        def check() -> None:
            try:
                integrity.check_checksums(base.path, base.manifest.checksums, f"version {base.name}", base.unchecked)
            except IndexDamaged as exc:
                self.views.refuse(base.name, exc)
                self._recheck = True
                self.refresh()
            except Exception:  # the view keeps serving; the next open checks again
                log.exception("could not check the checksums of index %s", base.name)
            else:
                base.unchecked = ()
            finally:
                with self._checking_lock:
                    self._checking.pop(id(base), None)

        self.verifying = threading.Thread(target=check, name="index-verify", daemon=True)
        self.verifying.start()

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Block until the served view holds the writes up to number ``seq``
        (each swap wakes the waiters); False if ``timeout`` seconds pass first."""

        def holds() -> bool:
            view = self._version
            return view is not None and view.seq is not None and view.seq >= seq

        with self._swapped:
            return self._swapped.wait_for(holds, timeout)

    def watch(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # keep watching: the next version may load
                    log.exception("could not check for a new index version")

        self._thread = threading.Thread(target=loop, name="index-watch", daemon=True)
        self._thread.start()

    def close(self, deadline: float | None = None) -> None:
        """Stop watching CURRENT: wait for a refresh in progress until
        ``deadline`` (a ``time.monotonic()`` time; None: 5 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_seconds_until(deadline, 5))


def _seconds_until(deadline: float | None, default: float) -> float:
    """A join's timeout: what is left until ``deadline`` (a ``time.monotonic()``
    time), or ``default`` seconds where there is none."""
    return default if deadline is None else max(0.0, deadline - time.monotonic())


def _older(view: View, served: View) -> bool:
    """``view`` is of an earlier version than ``served``, or holds fewer of the same version's writes."""
    if view.name != served.name:
        return view.name < served.name
    return (-1 if view.seq is None else view.seq) < (-1 if served.seq is None else served.seq)


def _refuses(refused: list[Refusal], served: View) -> bool:
    """Whether the served view's version or one of its segments is among the refused."""
    return any(r.version == served.name and (r.segment is None or r.segment in served.segments) for r in refused)


class ThreadStores:
    """One store connection per thread. Every thread that serves requests
    passes here first, so it also gets FAISS's one-thread setting (an OpenMP
    setting is per thread; threadpool threads start with the default)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = threading.local()
        self._opened: list[Store] = []
        self._lock = threading.Lock()

    def get(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            set_query_threads(1)
            store = self._local.store = open_store(self.settings)
            with self._lock:
                self._opened.append(store)
        return store

    def close(self) -> None:
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()


class Engine:
    """What the commands and the API call. It holds the served index version,
    a store connection per thread, the lazily loaded embedder and the list
    cache; the lists themselves are built by ``recommender.rank.lists``, and
    ``recommender.api.present`` turns its typed results into responses."""

    def __init__(self, settings: Settings, live: LiveIndex, embedder: LazyEmbedder):
        self.settings = settings
        self.live = live
        self.embedder = embedder
        self.query_embedder = QueryEmbedder(embedder.spec, settings.query_backend, embedder.get)
        """Search queries' embedder: ONNX where it is checked and faster (``settings.query_backend``)."""
        self.stores = ThreadStores(settings)
        self.cache = ListCache(settings.related_cache_size)
        self.rule_cache = RuleCache()

    @classmethod
    def open(cls, settings: Settings, embedder: LazyEmbedder | None = None, *, load_index: bool = True,
             background_checksums: bool = False) -> Engine:
        """The engine over the data folder. ``embedder``: the entry point's
        (default: resolved here, once: ``recommender.embedders.resolve``).
        ``load_index=False``: the published version is not read (the rules and
        the writes need only the store). ``background_checksums`` (a server):
        large files' checksums are checked after the view starts serving."""
        live = LiveIndex(settings.index_root, model_id_for(settings.model), background_checksums=background_checksums)
        if load_index:
            live.refresh()
        return cls(settings, live, embedder or LazyEmbedder(resolve(settings)))

    def close(self, deadline: float | None = None) -> None:
        """Close the store connections and stop watching CURRENT. A query
        model's export half-way is waited for until ``deadline`` (a
        ``time.monotonic()`` time; None: two minutes), so that the next
        start finds it whole; cut short, the next start exports again."""
        self.live.close(deadline)
        self.stores.close()
        preparing = self.query_embedder.preparing
        if preparing is not None:
            preparing.join(timeout=_seconds_until(deadline, 120))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ------------------------------------------------------------

    def article(self, article_id: str, *, full: bool = False) -> StoredArticle:
        """The article if the public may see it; an embargoed article is
        answered exactly like an unknown id, so no public read confirms that
        it exists before its time. With ``full`` (an editor with the key),
        also while it is embargoed."""
        stored = self.stores.get().get(article_id)
        if stored is None or (not full and is_embargoed(stored.article.published, now_iso())):
            raise ArticleNotFound(article_id)
        return stored

    def related(
        self, article_id: str, k: int = 10, filters: Filters = NO_FILTERS, options: ListOptions | None = None
    ) -> list[Item]:
        """The article's related list: pins at their positions, then ranked items."""
        version = self.live.current  # 503 before any index, whatever the id
        stored = self.article(article_id)
        lists = Lists(self.settings, version, self.stores.get(), self.embedder, self.cache, rule_cache=self.rule_cache)
        return lists.related(stored, k, filters, options or ListOptions.from_settings(self.settings))

    def related_to_draft(self, title: str, body: str, k: int = 10, filters: Filters = NO_FILTERS) -> list[Item]:
        version = self.live.current
        return Lists(self.settings, version, self.stores.get(), self.embedder, self.cache,
                     rule_cache=self.rule_cache).draft(title, body, k, filters)

    def search(
        self, query: str, k: int = 10, filters: Filters = NO_FILTERS, options: ListOptions | None = None
    ) -> list[Item]:
        query = validate_query(query)  # a bad query is 422 even before any index (503)
        version = self.live.current
        lists = Lists(self.settings, version, self.stores.get(), self.embedder, self.cache,
                      query_embedder=self.query_embedder, rule_cache=self.rule_cache)
        return lists.search(query, k, filters, options or ListOptions.from_settings(self.settings))

    def behind(self) -> int | None:
        """Articles the served version lacks: added, changed or deleted since
        its snapshot, plus those left out of it (not embedded). None for a
        version published before snapshots were recorded."""
        view = self.live.current
        if view.seq is not None:  # writes are numbered: count those after the view's
            return self.stores.get().count_changes_since(view.seq) + self.live.pending
        snapshot = view.manifest.snapshot
        if snapshot is None:
            return None
        return self.stores.get().behind(snapshot.watermark) + snapshot.left_out

    # -- writes -----------------------------------------------------------

    def rules(self, article: str | None = None) -> list[Rule]:
        return self.stores.get().rules(article)

    def add_rule(self, rule: Rule) -> Rule:
        store = self.stores.get()
        for name in rule.article_ids:
            if store.get(name) is None:
                raise ArticleNotFound(name)
        return store.add_rule(rule)

    def delete_rule(self, rule_id: int) -> None:
        if not self.stores.get().delete_rule(rule_id):
            raise RuleNotFound(rule_id)

    def upsert(self, articles: Sequence[Article]) -> UpsertCounts:
        return self.stores.get().upsert(articles)

    def delete(self, article_id: str) -> None:
        if not self.stores.get().delete([article_id]):
            raise ArticleNotFound(article_id)


RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0
"""A failed background reindex is tried again after 1 s, then 2, 4 ... up to a minute."""


class Reindexer:
    """Runs the one write path (store -> reindex pipeline -> atomic publish) in
    a background thread after writes. A file lock keeps one job at a time
    across worker processes; writes that arrive during a job start another."""

    def __init__(self, settings: Settings, engine: Engine, *, debounce: float = 0.2,
                 on_run: Callable[[], None] | None = None):
        self.settings = settings
        self.engine = engine
        self.debounce = debounce
        self.on_run = on_run
        """Called after each job that finished (the metrics count them)."""
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reindexer", daemon=True)
        self.merge_thread: threading.Thread | None = None
        """The full build running in the background, or the last one (``_merge_in_background``)."""
        self.started = threading.Event()
        """Set once the start-up check is done: at once on a read-only replica,
        which publishes nothing; after the first job where writes are enabled."""
        self.jobs = 0
        """Jobs run so far, whether they published, found nothing to do or failed."""
        self._job_done = threading.Condition()
        self.last_error: str | None = None

    def start(self) -> Reindexer:
        """Start the thread. Where writes are enabled (an API key is set), it
        checks the store at once: writes acknowledged before a crash or a
        restart, or made by another process (``recommender ingest``), are
        published without waiting for the next write; on an unchanged store
        the check publishes nothing. A read-only replica (no key) never
        publishes: its versions come from the indexing machine."""
        if self.settings.api_key:
            self.engine.live.on_refused = self.request  # a damaged view is rebuilt from the store
            self._wanted.set()
        else:
            self.started.set()
        self._thread.start()
        return self

    def request(self) -> None:
        self._wanted.set()

    def wait_for_jobs(self, count: int, timeout: float) -> bool:
        """Block until ``count`` jobs have run (each wakes the waiters); False if ``timeout`` seconds pass first."""
        with self._job_done:
            return self._job_done.wait_for(lambda: self.jobs >= count, timeout)

    def close(self, deadline: float | None = None) -> None:
        """Stop the jobs: wait for the one running (until ``deadline``, a
        ``time.monotonic()`` time; None: a minute each), then leave it to stop
        with the process (a daemon thread; what it had not published is
        redone by the next start)."""
        self._stop.set()
        self._wanted.set()
        for thread in (self._thread, self.merge_thread):
            if thread is not None:
                thread.join(timeout=_seconds_until(deadline, 60))

    def _run(self) -> None:
        retry = RETRY_FIRST_SECONDS
        with open_store(self.settings) as store:
            while not self._stop.is_set():
                self._wanted.wait()
                if self._stop.is_set():
                    return
                self._stop.wait(self.debounce)  # let a burst of writes land first
                self._wanted.clear()
                try:
                    if store.count():
                        report = reindex(self.settings, store, self.engine.embedder,
                                         on_progress=_log_progress(), views=self.engine.live.views,
                                         background_merge=True)
                        if report.merge_due:
                            self._merge_in_background()
                    self.last_error = None
                    retry = RETRY_FIRST_SECONDS
                    if self.on_run is not None:
                        self.on_run()
                except Exception as exc:  # keep serving the last good index
                    self.last_error = type(exc).__name__  # the details go to the log, not to clients
                    log.exception("background reindex failed; trying again in %.0f s", retry)
                    self._finished_job()
                    # Acknowledged writes wait for a publish: try again without
                    # waiting for the next write, backing off while it fails.
                    self._stop.wait(retry)
                    retry = min(retry * 2, RETRY_MAX_SECONDS)
                    self._wanted.set()
                else:
                    self._finished_job()

    def _finished_job(self) -> None:
        """The served view follows the job; then the job counts as run."""
        self.engine.live.refresh()
        self.started.set()
        with self._job_done:
            self.jobs += 1
            self._job_done.notify_all()

    def _merge_in_background(self) -> None:
        """A full build replacing the version and its segments, in a thread of
        its own, so that writes keep being published as segments meanwhile.
        One build at a time across processes (the merge lock)."""
        if self.merge_thread is not None and self.merge_thread.is_alive():
            return
        with directory.lock(self.settings.data_dir / directory.MERGE_LOCK, blocking=False) as free:
            if not free:  # another process is merging
                return

        def merge() -> None:
            try:
                with open_store(self.settings) as store:
                    reindex(self.settings, store, self.engine.embedder, full=True, views=self.engine.live.views)
                self.engine.live.refresh()
                if self.on_run is not None:
                    self.on_run()
            except Exception:  # the segments keep serving
                log.exception("background merge failed")

        self.merge_thread = threading.Thread(target=merge, name="merge", daemon=True)
        self.merge_thread.start()


def _log_progress(step: float = 0.1) -> Callable[[int, int], None]:
    """The background reindex's progress, to the log: at each tenth of the articles."""
    logged = [-1.0]

    def report(done: int, total: int) -> None:
        share = done / total if total else 1.0
        if share >= 1.0 or share - logged[0] >= step:
            logged[0] = share
            log.info("background reindex: %d of %d articles embedded", done, total)

    return report
