"""The store: the source of truth every index is derived from.

``base`` writes down what the rest of the code needs from a store (the
``Store`` protocol and its types); ``sqlite`` is the embedded default, one
file in the data folder. ``open_store(settings)`` opens the one the settings
name: ``store_url`` empty, or ``sqlite:///path``, is SQLite; another scheme
is the module of this package of that name (``postgresql://...`` ->
``recommender.store.postgresql``, whose ``open_store(url, settings)`` opens it).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from urllib.parse import urlsplit

from recommender.config import Settings
from recommender.errors import ConfigError
from recommender.store.base import (
    CHUNK_HASH_BYTES,
    Changes,
    Store,
    StoredArticle,
    UpsertCounts,
    Watermark,
    is_embargoed,
)
from recommender.store.sqlite import SqliteStore

SCHEME_ALIASES = {"postgres": "postgresql"}


def open_store(settings: Settings) -> Store:
    """The store the settings name, opened (and migrated) for this thread."""
    url = settings.store_url
    if not url:
        return SqliteStore.open(settings.store_path)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = url.partition("sqlite://")[2]
        if not path.startswith("/"):
            raise ConfigError("store_url: a SQLite store is sqlite:///absolute/path/to/store.sqlite")
        return SqliteStore.open(Path(path))
    name = SCHEME_ALIASES.get(scheme, scheme)
    if not re.fullmatch(r"[a-z][a-z0-9]*", name):
        raise ConfigError("store_url must be a URL such as sqlite:///srv/news/store.sqlite")
    try:
        backend = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise ConfigError(f"the {name} store needs {exc.name}, which is not installed") from None
        raise ConfigError(f"no store backend for {scheme}:// URLs in this release") from None
    return backend.open_store(url, settings)


def store_location(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite path, or the URL without its password."""
    if not settings.store_url:
        return str(settings.store_path)
    parts = urlsplit(settings.store_url)
    if parts.password is None:
        return settings.store_url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


__all__ = ["CHUNK_HASH_BYTES", "Changes", "SqliteStore", "Store", "StoredArticle", "UpsertCounts", "Watermark",
           "is_embargoed", "open_store", "store_location"]
