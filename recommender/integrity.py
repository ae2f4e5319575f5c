"""What makes a damaged file a refusal instead of a crash or garbage: the
size and checksum of every file of a folder (a version's, a segment's, an
export's), recorded in its manifest when it is written and verified when it
is opened, a manifest's own checksum (``seal``), and the bounds checks a
loader runs on an array before FAISS, scipy or numpy's indexing reads it.

Checksums are CRC-32 (``zlib.crc32``): they guard against accidental damage
(a bad disk, a torn copy, a stray write), not against tampering, and read
about 2 GB/s here, twice SHA-256's speed (docs/performance.md). A folder
written before checksums were recorded (no ``checksums`` in its manifest)
still opens: its files are held to their sizes and shapes and its vectors
to unit length and finite values (``check_vectors``), the second line.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recommender.errors import IndexDamaged

ALGORITHM = "crc32"
SEAL = "manifest_checksum"
"""The key of a manifest's own checksum (over its other keys)."""
SYNC_CHECKSUM_BYTES = 32 * 2**20
"""Files up to this size are checksummed when a view is opened; a server checks larger ones in the
background after it starts serving (``recommender.service.LiveIndex``) and withdraws the view on a mismatch."""
_CHUNK = 8 * 2**20


def checksum(path: Path) -> str:
    """``crc32:<8 hex digits>`` of a file's bytes."""
    value = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            read = handle.readinto(buffer)
            if not read:
                break
            value = zlib.crc32(view[:read], value)
    return f"{ALGORITHM}:{value:08x}"


def record(folder: Path, *, skip: Iterable[str] = ()) -> tuple[dict[str, int], dict[str, str]]:
    """The size and checksum of every file directly in ``folder`` (sub-folders
    and the names in ``skip`` left out), by name."""
    left_out = set(skip)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in left_out)
    return {p.name: p.stat().st_size for p in paths}, {p.name: checksum(p) for p in paths}


def unreadable(what: str, name: str, exc: OSError) -> IndexDamaged:
    """A file that is missing or cannot be read (an I/O error, a folder or a
    link loop in its place): a refusal naming it, as damage is."""
    if isinstance(exc, FileNotFoundError):
        return IndexDamaged(f"{what}: {name} is missing", file=name)
    return IndexDamaged(f"{what}: {name} cannot be read ({type(exc).__name__}: {exc.strerror or exc})", file=name)


def check_sizes(folder: Path, sizes: Mapping[str, int], what: str) -> None:
    """Every listed file is there with its listed size."""
    for name, size in sizes.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError as exc:
            raise unreadable(what, name, exc) from None
        if actual != size:
            raise IndexDamaged(f"{what}: {name} has {actual} bytes, its manifest says {size}", file=name)


def check_checksums(folder: Path, checksums: Mapping[str, str], what: str, names: Iterable[str] | None = None) -> None:
    """The listed files (or ``names`` of them) have their recorded checksums."""
    for name in (checksums if names is None else names):
        expected = checksums[name]
        if not expected.startswith(f"{ALGORITHM}:"):
            continue  # written by a newer release with another algorithm: the sizes were checked
        try:
            actual = checksum(folder / name)
        except OSError as exc:
            raise unreadable(what, name, exc) from None
        if actual != expected:
            raise IndexDamaged(f"{what}: {name} does not match its checksum ({actual}, recorded {expected})",
                               file=name)


def split_by_size(sizes: Mapping[str, int], checksums: Mapping[str, str], limit: int) -> tuple[list[str], list[str]]:
    """The checksummed files up to ``limit`` bytes, and the larger ones."""
    small = [n for n in checksums if sizes.get(n, 0) <= limit]
    return small, [n for n in checksums if sizes.get(n, 0) > limit]


# -- manifests -------------------------------------------------------------------


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in data.items() if k != SEAL}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its own checksum: a byte changed anywhere in the manifest is found."""
    return {**data, SEAL: f"{ALGORITHM}:{zlib.crc32(_canonical(data)):08x}"}


def read_manifest(path: Path, what: str) -> dict[str, Any]:
    """A manifest's keys, its seal checked where it has one (manifests of
    earlier releases have none). Raises ``IndexDamaged`` when it is missing,
    not JSON, or does not match its seal."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise IndexDamaged(f"{what}: {path.name} is missing", file=path.name) from None
    except (ValueError, OSError) as exc:  # not UTF-8, not JSON, unreadable
        raise IndexDamaged(f"{what}: {path.name} cannot be read ({type(exc).__name__}: {exc})",
                           file=path.name) from None
    if not isinstance(data, dict):
        raise IndexDamaged(f"{what}: {path.name} is not a JSON object", file=path.name)
    sealed = data.get(SEAL)
    if sealed is not None and sealed != f"{ALGORITHM}:{zlib.crc32(_canonical(data)):08x}":
        raise IndexDamaged(f"{what}: {path.name} does not match its own checksum", file=path.name)
    return {k: v for k, v in data.items() if k != SEAL}


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(seal(data), indent=2) + "\n", encoding="utf-8")


# -- reading and bounds checks ----------------------------------------------------------

T = TypeVar("T")


@contextmanager
def reading(what: str, file: str) -> Iterator[None]:
    """Any error reading ``file`` becomes ``IndexDamaged`` naming it: a damaged
    file makes numpy, scipy, zipfile, json or FAISS raise almost anything
    (``ValueError``, ``EOFError``, ``SyntaxError`` from a header, ``BadZipFile``,
    ``RuntimeError``), and each is a refusal, not a crash."""
    try:
        yield
    except IndexDamaged:
        raise
    except Exception as exc:
        raise IndexDamaged(f"{what}: {file} cannot be read ({type(exc).__name__}: {exc})", file=file) from None


def read_part(what: str, path: Path, load: Callable[[], T]) -> T:
    """``load()``, its errors naming ``path`` (see :func:`reading`)."""
    with reading(what, path.name):
        return load()


def load_array(path: Path, what: str, *, mmap: bool = False) -> Any:
    """``np.load`` of one ``.npy`` file (no pickles), its errors naming the file."""
    with reading(what, path.name):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def fail(what: str, file: str, problem: str) -> IndexDamaged:
    return IndexDamaged(f"{what}: {file} {problem}", file=file)


def check_array(array: np.ndarray, what: str, file: str, *, kind: str, ndim: int = 1,
                rows: int | None = None, columns: int | None = None) -> np.ndarray:
    """An array of the dtype ``kind`` (numpy kind letters: "i", "iu", "f", "b", "S"),
    with ``ndim`` dimensions, ``rows`` rows and ``columns`` columns where given."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in kind:
        raise fail(what, file, f"holds {getattr(array, 'dtype', type(array).__name__)}, not of kind {kind!r}")
    if array.ndim != ndim:
        raise fail(what, file, f"has {array.ndim} dimensions, not {ndim}")
    if rows is not None and array.shape[0] != rows:
        raise fail(what, file, f"has {array.shape[0]} rows, not {rows}")
    if columns is not None and array.shape[1] != columns:
        raise fail(what, file, f"has {array.shape[1]} columns, not {columns}")
    return array


def check_range(array: np.ndarray, what: str, file: str, low: int, high: int) -> None:
    """Every value in ``[low, high)``."""
    if len(array) and (int(array.min()) < low or int(array.max()) >= high):
        raise fail(what, file, f"holds values outside [{low}, {high})")


def check_sorted_unique(array: np.ndarray, what: str, file: str) -> None:
    if len(array) > 1 and not bool(np.all(array[1:] > array[:-1])):
        raise fail(what, file, "is not sorted and unique")


def check_unique(array: np.ndarray, what: str, file: str) -> None:
    if len(np.unique(array)) != len(array):
        raise fail(what, file, "holds a doc_id twice")


def check_offsets(offsets: np.ndarray, what: str, file: str, *, rows: int, total: int) -> None:
    """``rows + 1`` offsets from 0 to ``total``, never decreasing."""
    check_array(offsets, what, file, kind="iu", rows=rows + 1)
    if int(offsets[0]) != 0 or int(offsets[-1]) != total or (rows and bool(np.any(np.diff(offsets) < 0))):
        raise fail(what, file, f"are not {rows + 1} offsets rising from 0 to {total}")


def check_compressed(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, major: int, minor: int,
                     what: str, file: str | tuple[str, str, str]) -> None:
    """A CSR (or CSC) matrix's arrays: ``major + 1`` pointers rising from 0 to
    the number of entries, and every index below ``minor`` (scipy's kernels
    read out of bounds otherwise). ``file``: the one file holding them, or
    the files of the pointers, the indices and the data."""
    names = file if isinstance(file, tuple) else (f"{file} indptr", f"{file} indices", f"{file} data")
    check_array(indices, what, names[1], kind="iu")
    check_array(data, what, names[2], kind="fiub", rows=len(indices))
    check_offsets(indptr, what, names[0], rows=major, total=len(indices))
    check_range(indices, what, names[1], 0, minor)
    if data.dtype.kind == "f" and not bool(np.isfinite(data).all()):
        raise fail(what, names[2], "holds NaN or infinite weights")


def check_vectors(vectors: np.ndarray, what: str, file: str, *, block: int = 65_536) -> None:
    """Finite vectors of at most unit length (the embedders normalise them):
    the check of a folder without checksums, where garbled floats would be served."""
    for start in range(0, len(vectors), block):
        part = np.asarray(vectors[start : start + block], dtype=np.float32)
        if not bool(np.isfinite(part).all()):
            raise fail(what, file, "holds NaN or infinite values")
        norms = np.einsum("ij,ij->i", part, part)
        if len(norms) and float(norms.max()) > 1.02:
            raise fail(what, file, "holds vectors longer than unit length")


def folder_fingerprint(folder: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """The names, sizes, modification and change times and inodes of a
    folder's files: a refusal is remembered while these stay. A copy in
    progress changes them, and so does a file restored in place with its old
    mtime (``cp -p``, ``rsync -a``: the change time, or the inode, moves).
    An entry that cannot be stat'ed counts by its error number."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_dir():  # a version's segments/: its segments are fingerprinted apart
                        continue
                    st = entry.stat()
                    found.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                except OSError as exc:
                    found.append((entry.name, -1, -(exc.errno or 0), 0, 0))
    except OSError:
        return ()
    return tuple(sorted(found))
