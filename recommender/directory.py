"""The one owner of the data folder's on-disk protocol, in the spirit of
Lucene's ``Directory`` and ``Lock``: how a file or folder comes into place
(written beside it, fsynced, renamed over, its folder fsynced), the lock
files, the names of versions and segments, and ``CURRENT``.

    <data_dir>/index/CURRENT                       the live version, then its segments, oldest first: one name a line
    <data_dir>/index/versions/<version>/           a published version (``recommender.version.Layout``)
    <data_dir>/index/versions/<version>/segments/<segment>/   writes since it (``recommender.segments``)
    <data_dir>/index/staging/<version>/            a version being built
    <data_dir>/reindex.lock, merge.lock            held to publish, and by a full build
    <data_dir>/models/                             exported models (``recommender.embedders``)

A reader resolves CURRENT once and keeps what it names; a writer builds a new
folder, then replaces CURRENT, so readers see the old state or the new one,
never a half-written one. No other module renames, fsyncs or locks files.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path

from recommender.errors import IndexDamaged

CURRENT = "CURRENT"
VERSIONS = "versions"
STAGING = "staging"
SEGMENTS = "segments"
WRITE_LOCK = "reindex.lock"
"""Held to publish (a segment, or the swap to a new version): short."""
MERGE_LOCK = "merge.lock"
"""Held by a full build, one at a time: long, and segments are published meanwhile."""
EXPORT_LOCK = "export.lock"
"""In a folder of exported models: one export at a time (a server's workers start together)."""
ABANDONED_STAGING_SECONDS = 3600.0
SEGMENT_GRACE_SECONDS = 60.0


# -- files ---------------------------------------------------------------------


def fsync(path: Path) -> None:
    """Flush a file's data, or every file of a folder, to the disk."""
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in paths:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(source: Path, target: Path) -> None:
    """Move a written file or folder over ``target`` in one rename, its data
    flushed first and the rename after: after a crash ``target`` is the old
    one or the new one, whole."""
    fsync(source)
    os.replace(source, target)
    fsync_dir(target.parent)


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` into a temporary file beside ``target``, then :func:`replace`
    it over: a reader finds the old file, the new one, or none, never a partial one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: a hint for remove_leftovers (the lock the writer holds is what tells).
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    """:func:`write_atomically` of a UTF-8 text."""
    write_atomically(target, lambda path: path.write_text(text, encoding="utf-8"))


@contextmanager
def lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock file, across processes and threads (each holder opens
    the file itself). Non-blocking, it yields False when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def new_name() -> str:
    """A version's or a segment's name: its UTC time to the nanosecond and the
    writer's pid, so names sort by time and two writers never pick the same."""
    now = time.time_ns()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{os.getpid()}"


# -- the index folder -------------------------------------------------------------


def version_dir(index_root: Path, name: str) -> Path:
    return index_root / VERSIONS / name


def segments_dir(index_root: Path, version: str) -> Path:
    return version_dir(index_root, version) / SEGMENTS


def read_current(index_root: Path) -> tuple[str | None, tuple[str, ...]]:
    """The live version and its segments, as CURRENT names them (one read of one
    file). CURRENT is one name a line: the version, then its segments, oldest
    first (the form every release reads). Line 1 may also carry a checksum of
    the names (``<version> crc32:<hex>``, written by earlier builds of this
    release): checked when present. Raises ``IndexDamaged`` where CURRENT is
    not such a list (not text, empty, not names) or names a version or a
    segment whose folder is not there (a garbled or cut CURRENT), unless CURRENT
    changed meanwhile (a publish, then a prune): then the new one is read."""
    path = index_root / CURRENT
    read: tuple[str, tuple[str, ...]] | None = None
    for _ in range(_CURRENT_REREADS):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, ()
        version, segments = _parse_current(raw)
        missing = _missing_part(index_root, version, segments)
        if missing is None:
            return version, segments
        if read == (version, segments):  # read twice, the same: CURRENT names what is not there
            break
        read = (version, segments)
    raise IndexDamaged(f"CURRENT is damaged: it names {missing}, which is not there", file=CURRENT)


_CURRENT_REREADS = 5
"""Reads of a CURRENT naming a folder that is not there, in case it was replaced meanwhile."""

_PART_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,199}")
"""A version's or a segment's name (``new_name``'s form, or any plain folder name)."""


def _parse_current(raw: bytes) -> tuple[str, tuple[str, ...]]:
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise IndexDamaged("CURRENT is damaged: it is not text", file=CURRENT) from None
    words = [line.split() for line in lines]
    first = words[0] if words else []
    if (not 1 <= len(first) <= 2 or any(len(line) != 1 for line in words[1:])
            or not all(_PART_NAME.fullmatch(line[0]) for line in words)):
        raise IndexDamaged("CURRENT is damaged: it does not name a version and its segments", file=CURRENT)
    segments = tuple(line[0] for line in words[1:])
    if len(first) == 2 and first[1] != _current_seal(first[0], segments):
        raise IndexDamaged("CURRENT is damaged: it does not match its own checksum", file=CURRENT)
    return first[0], segments


def _missing_part(index_root: Path, version: str, segments: Sequence[str]) -> str | None:
    """The first part CURRENT names whose folder is not there (None: all are)."""
    if not version_dir(index_root, version).is_dir():
        return f"version {version}"
    folder = segments_dir(index_root, version)
    return next((f"segment {name} of {version}" for name in segments if not (folder / name).is_dir()), None)


def write_current(index_root: Path, version: str, segments: Sequence[str]) -> None:
    """Point readers at a version and its segments, in one atomic replace: one
    name a line, the version first, then the segments, oldest first. No
    checksum: the previous release reads this form (``text.split()``: a
    rollback serves what this release published); a garbled CURRENT is caught
    by the names (a name's form, its folder there) and the manifests of what
    it names verifying."""
    write_text(index_root / CURRENT, "".join(f"{name}\n" for name in (version, *segments)))


def _current_seal(version: str, segments: Sequence[str]) -> str:
    """The checksum earlier builds of this release wrote on CURRENT's line 1."""
    return f"crc32:{zlib.crc32(chr(10).join((version, *segments)).encode()):08x}"


def new_staging(index_root: Path) -> tuple[str, Path]:
    """A new version's name and the empty folder it is built in (see :func:`staging_version`)."""
    name = new_name()
    staging = index_root / STAGING / name
    _remove_orphans(staging.parent, staging=True)
    staging.mkdir(parents=True)
    return name, staging


@contextmanager
def staging_version(index_root: Path) -> Iterator[tuple[str, Path]]:
    """:func:`new_staging`, removed at once if the build inside fails (a full
    disk, an error, Ctrl-C): a failed build leaves nothing behind."""
    name, staging = new_staging(index_root)
    try:
        yield name, staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_version(
    index_root: Path, name: str, staging: Path, *, keep: int = 3,
    catch_up: Callable[[], Sequence[str]] | None = None,
) -> Path:
    """Move a fully written staging folder into place and point CURRENT at it.
    ``catch_up`` writes segments for the placed version (the writes made
    while it was built) and names them; CURRENT names them too. Then the
    oldest versions beyond ``keep`` and abandoned stagings are removed."""
    versions = index_root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    final = version_dir(index_root, name)
    try:
        replace(staging, final)
        write_current(index_root, name, catch_up() if catch_up else ())
    except BaseException:  # not published: neither the staging folder nor the placed version stays
        shutil.rmtree(staging, ignore_errors=True)
        if _current_version(index_root) != name:
            shutil.rmtree(final, ignore_errors=True)
        raise
    _prune_versions(versions, keep=max(1, keep), live=name)
    _remove_abandoned(index_root / STAGING, ABANDONED_STAGING_SECONDS)
    return final


def place_segment(index_root: Path, version: str, name: str, write: Callable[[Path], object]) -> Path:
    """Write a segment of ``version`` into a staging folder beside its final
    place (``write(folder)``), then rename it into place."""
    folder = segments_dir(index_root, version)
    _remove_orphans(folder)  # a killed writer's staging does not survive the next one
    staging = folder / f".{name}.tmp"
    staging.mkdir(parents=True)
    final = folder / name
    try:
        write(staging)
        replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def prune_segments(index_root: Path, version: str, live: Sequence[str], *,
                   grace_seconds: float = SEGMENT_GRACE_SECONDS) -> None:
    """Remove segments CURRENT no longer names (after ``grace_seconds``, so a
    reader that has just read CURRENT can still load them), and abandoned stagings."""
    folder = segments_dir(index_root, version)
    if not folder.is_dir():
        return
    cutoff = time.time() - grace_seconds
    for path in folder.iterdir():
        if path.name not in live and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _prune_versions(versions: Path, *, keep: int, live: str) -> None:
    old = sorted((p for p in versions.iterdir() if p.is_dir() and p.name != live), key=lambda p: p.name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def _remove_abandoned(staging_root: Path, max_age_seconds: float) -> None:
    """Staging folders left by killed builds; a live build touches its own."""
    if not staging_root.is_dir():
        return
    cutoff = time.time() - max_age_seconds
    for path in staging_root.iterdir():
        if path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _current_version(index_root: Path) -> str | None:
    try:
        return read_current(index_root)[0]
    except Exception:  # unreadable or damaged: whatever it names, it is not the version just placed
        return None


# -- leftovers -------------------------------------------------------------------

_WRITER_PID = (
    re.compile(r"\..+\.(\d+)\.[a-z0-9_]{8}\.tmp"),   # write_atomically: .<name>.<pid>.<random>.tmp
    re.compile(r"\.tmp-(\d+)-.+"),                    # temporary_folder: .tmp-<pid>-<random>
    re.compile(r"\.?\d{8}T\d{6}\.\d{9}-(\d+)(\.tmp)?"),  # new_name: a staging version, .<segment>.tmp
)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine has this pid (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_pid(name: str) -> int | None:
    """The pid a temporary file or folder's name carries (None: a name without one)."""
    for pattern in _WRITER_PID:
        if match := pattern.fullmatch(name):
            return int(match.group(1))
    return None


def _is_temporary(name: str) -> bool:
    return (name.startswith(".") and name.endswith(".tmp")) or name.startswith(".tmp-")


def _orphaned(path: Path, now: float) -> bool:
    """Inside the lock its writer holds: a temporary file or folder of another
    writer, whose pid is gone (a pid alive here may be another's: it stays);
    without a pid in its name (an older release's), untouched for ABANDONED_STAGING_SECONDS."""
    pid = writer_pid(path.name)
    if pid is not None:
        return not process_alive(pid)
    return _untouched(path, now)


def _untouched(path: Path, now: float) -> bool:
    try:
        return path.lstat().st_mtime < now - ABANDONED_STAGING_SECONDS
    except FileNotFoundError:
        return False


def _abandoned(path: Path, now: float) -> bool:
    """A temporary file or folder no lock guards: untouched for
    ABANDONED_STAGING_SECONDS, and its pid (a hint: a writer in another pid
    namespace may have the same) not a live process here."""
    pid = writer_pid(path.name)
    return _untouched(path, now) and (pid is None or not process_alive(pid))


def _remove_orphans(folder: Path, *, staging: bool = False,
                    orphaned: Callable[[Path, float], bool] = _orphaned) -> list[Path]:
    """Remove the ``orphaned`` temporary files and folders directly in ``folder``
    (``staging``: the index's staging folder, where every folder is a build)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.iterdir():
        if (staging or _is_temporary(path.name)) and orphaned(path, now):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError:  # another process removed it, or this user may not: it stays
                continue
            removed.append(path)
    return removed


def _lock_free(path: Path) -> AbstractContextManager[bool]:
    """:func:`lock` without blocking, held meanwhile: True where no writer
    (of any process, any pid namespace, sharing this folder) holds it. False
    where it cannot be taken at all (no such folder, a read-only disk)."""
    if not path.parent.is_dir():
        return nullcontext(False)
    stack = ExitStack()
    try:
        free = stack.enter_context(lock(path, blocking=False))
    except OSError:
        stack.close()
        return nullcontext(False)

    @contextmanager
    def held() -> Iterator[bool]:
        with stack:
            yield free
    return held()


def _every_folder(root: Path, *, skip: Callable[[Path], bool] = lambda _: False) -> Iterator[Path]:
    """``root`` and the folders under it, not those ``skip`` names (nor what is inside them)."""
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        yield here
        subfolders[:] = [d for d in subfolders if (here / d).is_dir() and not skip((here / d).resolve())]


def remove_leftovers(data_dir: Path, index_root: Path) -> list[Path]:
    """At a start-up (a server's, a reindex's): the temporary files and folders
    of the data folder that no writer is working on. The lock a writer holds,
    not its pid, tells (a server and a cron job in separate containers share
    a data volume, each blind to the other's pids): each is taken here without
    blocking, and what it guards is left alone while another holds it.

    - staging versions (``index/staging/*``): a full build holds MERGE_LOCK;
    - the rest of the index folder (``.CURRENT.<pid>.*.tmp``, a segment's
      ``.<name>.tmp``): publishing holds WRITE_LOCK;
    - a folder of exported models (with an ``export.lock``): exporting holds
      it; free, what no live process here owns (its pid) is removed;
    - anything else (:func:`write_atomically`'s files elsewhere,
      :func:`temporary_folder`'s folders), which no lock guards: once
      untouched for ABANDONED_STAGING_SECONDS, unless its pid is alive here.

    Returns what was removed."""
    removed: list[Path] = []
    index = index_root.resolve()
    staging = index / STAGING
    with _lock_free(data_dir / MERGE_LOCK) as free:
        if free:
            removed += _remove_orphans(staging, staging=True, orphaned=lambda _path, _now: True)
    if index.is_dir():
        with _lock_free(data_dir / WRITE_LOCK) as free:
            if free:
                for folder in _every_folder(index, skip=lambda path: path == staging):
                    removed += _remove_orphans(folder, orphaned=lambda _path, _now: True)
    if data_dir.is_dir():
        for folder in _every_folder(data_dir, skip=lambda path: path == index):
            if (folder / EXPORT_LOCK).is_file():
                with _lock_free(folder / EXPORT_LOCK) as free:
                    if free:
                        removed += _remove_orphans(folder)
            else:
                removed += _remove_orphans(folder, orphaned=_abandoned)
    return removed


@contextmanager
def temporary_folder(parent: Path) -> Iterator[Path]:
    """An empty folder inside ``parent`` (files written there are moved into
    place with :func:`replace`), removed with whatever is left in it."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
