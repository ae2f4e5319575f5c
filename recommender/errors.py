"""Domain errors. Each carries the HTTP status the service answers with."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager


class RecommenderError(Exception):
    status_code = 500
    code = "internal_error"
    public_message: str | None = None
    """What the HTTP API says instead of the message (which may name paths or
    settings); None: the message is safe to show. The message is logged."""


class ConfigError(RecommenderError):
    status_code = 500
    code = "config_error"
    public_message = "the server is misconfigured; see its log"


class InvalidInput(RecommenderError):
    status_code = 422
    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ArticleNotFound(RecommenderError):
    status_code = 404
    code = "article_not_found"

    def __init__(self, article_id: str):
        super().__init__(f"no article with id {article_id!r}")
        self.article_id = article_id


class RuleNotFound(RecommenderError):
    status_code = 404
    code = "rule_not_found"

    def __init__(self, rule_id: int):
        super().__init__(f"no rule with id {rule_id}")


class IndexNotFound(RecommenderError):
    status_code = 503
    code = "index_not_ready"
    public_message = "no index has been published yet"


class IndexMismatch(RecommenderError):
    """The published index was built with another model or settings."""

    status_code = 503
    code = "index_mismatch"
    public_message = "the published index does not match the server's model or settings; see its log"


class IndexDamaged(RecommenderError, ValueError):
    """A file of the index folder fails verification (its size, its checksum,
    its shape or bounds): what names it is never served."""

    status_code = 503
    code = "index_damaged"
    public_message = "a file of the published index is damaged; see the server's log"

    def __init__(self, message: str, file: str | None = None, *, public: str | None = None):
        super().__init__(message)
        self.file = file
        if public is not None:  # names versions and files only, never a path
            self.public_message = public


class MetricsUnavailable(RecommenderError):
    """/metrics could not be read (the requests it counts are answered all the same)."""

    status_code = 503
    code = "metrics_unavailable"
    public_message = "the metrics cannot be read right now; see the server's log"


class StorageError(RecommenderError):
    """A write the disk refused: it is full, or this user may not write there.
    Reads go on; what was being written is left out whole (a transaction
    rolled back, a staging folder removed); writes work again, by themselves,
    once the disk takes them. ``path``: the file or folder being written."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class DiskFull(StorageError):
    status_code = 507
    code = "insufficient_storage"
    public_message = "the disk holding the data is full: writes are refused until space is freed; reads go on"

    def __init__(self, path: str | os.PathLike[str] | None):
        where = f"the disk holding {os.fspath(path)}" if path is not None else "the disk"
        super().__init__(f"{where} is full; nothing was half-written: free some space and try again", path)


class StorageNotWritable(StorageError):
    status_code = 503
    code = "storage_not_writable"
    public_message = "the data folder cannot be written (permissions, or a read-only disk): writes are refused; reads go on"

    def __init__(self, path: str | os.PathLike[str] | None, reason: str = "permission denied"):
        where = os.fspath(path) if path is not None else "the data folder"
        super().__init__(f"cannot write {where}: {reason}; nothing was half-written", path)


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system"}
_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")
_DENIED_TEXT = {"permission denied": "permission denied", "read-only file system": "read-only file system",
                "attempt to write a readonly database": "the database is read-only"}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
"""numpy's ``tofile`` (``np.save``) on a full disk: an OSError without an errno."""
_UNSPECIFIED_WRITE = ("write error", "disk i/o error")
"""FAISS's and SQLite's words for a write that failed: full if the disk has no room left."""
LOW_SPACE_BYTES = 1 << 20


def storage_fault(exc: BaseException, path: str | os.PathLike[str] | None = None) -> StorageError | None:
    """The :class:`StorageError` an exception from a write means, or None.
    Recognised: OSError (``ENOSPC``, ``EACCES``, ...), SQLite's errors
    ("database or disk is full") and FAISS's ``RuntimeError`` ("write
    error ... No space left on device"); ``path`` names the file or folder
    written (else the exception's filename)."""
    if isinstance(exc, StorageError):
        return exc
    is_sqlite = type(exc).__module__ == "sqlite3"
    if not isinstance(exc, (OSError, RuntimeError)) and not is_sqlite:
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    number = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if number in _FULL_ERRNOS:
        return DiskFull(where)
    if number in _DENIED_ERRNOS:
        return StorageNotWritable(where, _DENIED_ERRNOS[number])
    text = str(exc).lower()
    if any(words in text for words in _FULL_TEXT) or (isinstance(exc, OSError) and _SHORT_WRITE.search(text)):
        return DiskFull(where)
    for words, reason in _DENIED_TEXT.items():
        if words in text:
            return StorageNotWritable(where, reason)
    if is_sqlite and "unable to open database file" in text and where is not None and not _writable(where):
        return StorageNotWritable(where, "read-only file system" if _read_only(where) else "permission denied")
    if any(words in text for words in _UNSPECIFIED_WRITE) and where is not None and _low_space(where):
        return DiskFull(where)
    return None


@contextmanager
def storage_faults(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Around the writes of one boundary (a store's transaction, a reindex):
    a full disk or a refused write comes out as a :class:`StorageError` naming
    ``path``; any other error as it was."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        fault = storage_fault(exc, path)
        if fault is None:
            raise
        raise fault from exc


def _existing(path: str | os.PathLike[str]) -> str:
    """``path``, or its nearest folder that exists."""
    found = os.path.abspath(os.fspath(path))
    while not os.path.exists(found) and os.path.dirname(found) != found:
        found = os.path.dirname(found)
    return found


def _low_space(path: str | os.PathLike[str]) -> bool:
    """Whether the filesystem holding ``path`` has under a MiB left."""
    try:
        stats = os.statvfs(_existing(path))
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES


def _writable(path: str | os.PathLike[str]) -> bool:
    """Whether this user may create files in the folder holding ``path`` (a read-only disk: no)."""
    return os.access(_existing(os.path.dirname(os.path.abspath(os.fspath(path)))), os.W_OK)


def _read_only(path: str | os.PathLike[str]) -> bool:
    try:
        return bool(os.statvfs(_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False
