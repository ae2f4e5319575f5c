"""The engine that commands and the API call: the store, the live index
version and the embedder, loaded once and used for related and search."""

from __future__ import annotations

import threading
from typing import Any, Callable

from recommender.config import Settings
from recommender.embed import Embedder, model_id_for
from recommender.errors import ArticleNotFound, NotIndexed
from recommender.related import Hit, related_to_row
from recommender.search import search
from recommender.store import Store
from recommender.version import IndexVersion


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        version: IndexVersion,
        load_embedder: Callable[[], Embedder],
    ):
        self.settings = settings
        self.store = store
        self.version = version
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, load_embedder: Callable[[], Embedder] | None = None) -> "Engine":
        from recommender.index import set_query_threads

        set_query_threads(1)
        version = IndexVersion.load(settings.index_root, model_id=model_id_for(settings.model))
        store = Store.open(settings.store_path)
        if load_embedder is None:
            from recommender.embed import SentenceTransformerEmbedder

            def load_embedder() -> Embedder:
                return SentenceTransformerEmbedder.load(
                    settings.model, device=settings.device, batch_size=settings.batch_size
                )

        return cls(settings, store, version, load_embedder)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load_embedder()
            return self._embedder

    def related_hits(self, article_id: str, k: int) -> list[Hit]:
        stored = self.store.get(article_id)
        if stored is None:
            raise ArticleNotFound(article_id)
        row = self.version.row_of(stored.doc_id)
        if row is None:
            raise NotIndexed(f"article {article_id!r} is newer than the published index; run `recommender reindex`")
        return related_to_row(self.version, row, k, self.settings)

    def related(self, article_id: str, k: int = 10) -> list[dict[str, Any]]:
        return self._items(self.related_hits(article_id, k))

    def search_hits(self, query: str, k: int) -> list[Hit]:
        return search(self.version, self.store, self.embedder, query, k, self.settings)

    def search(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        return self._items(self.search_hits(query, k))

    def _items(self, hits: list[Hit]) -> list[dict[str, Any]]:
        found = self.store.get_many([h.doc_id for h in hits])
        items = []
        for hit in hits:
            stored = found.get(hit.doc_id)
            if stored is None:  # deleted since the index was published
                continue
            a = stored.article
            items.append(
                {"id": a.id, "title": a.title, "url": a.url, "published": a.published,
                 "section": a.section, "score": round(hit.score, 4)}
            )
        return items
