"""``recommender verify`` and ``recommender repair``: every file of the data
folder checked against what was recorded when it was written, and whatever
fails rebuilt from the store.

``verify`` checks CURRENT; each version in ``versions/`` and each of its
segments (every file's size and checksum, each array's shape and bounds, as
a reader opens them: ``IndexVersion.load``, ``Segment.load``); the exported
models under ``<data_dir>/models`` (the files a ``checksums.json`` beside them
lists, and that their JSON reads); and the store (SQLite's
``integrity_check``). ``repair`` rebuilds the live view from the store when
any part of it fails (a full build, whatever state CURRENT and the manifests
are in), removes the damaged versions, segments and exports that nothing
serves (exports are made again on first use), and verifies again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recommender import directory, integrity
from recommender.config import Settings
from recommender.embedders import LazyEmbedder
from recommender.errors import IndexDamaged, IndexMismatch
from recommender.pipeline import ReindexReport, reindex
from recommender.segments import Segment, SegmentLayout
from recommender.store import Store, open_store, store_location
from recommender.version import IndexVersion, Layout

log = logging.getLogger(__name__)

EXPORT_CHECKSUMS = "checksums.json"
"""Beside an exported model: file name -> ``crc32:<hex>`` (``integrity.checksum``)."""
EXPORT_FILES = (".onnx", ".xml", ".bin")


@dataclass
class Check:
    """One thing checked: ``ok``, or the problems found (the first names the file)."""

    kind: str
    """"current", "version", "segment", "export" or "store"."""
    name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    file: str | None = None
    """The failing file, relative to the data folder."""
    live: bool = False
    """Part of the view CURRENT names."""
    note: str = ""


@dataclass
class VerifyReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def live_ok(self) -> bool:
        return all(c.ok for c in self.checks if c.live or c.kind == "current")

    def failed(self, kind: str | None = None) -> list[Check]:
        return [c for c in self.checks if not c.ok and (kind is None or c.kind == kind)]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def verify(settings: Settings) -> VerifyReport:
    """Check the index folder, the exports and the store (see the module's docstring)."""
    checks = verify_index(settings.data_dir, settings.index_root)
    checks += verify_exports(settings.data_dir)
    checks.append(verify_store(settings))
    return VerifyReport(checks)


def verify_index(data_dir: Path, index_root: Path) -> list[Check]:
    checks: list[Check] = []
    try:
        name, segments = directory.read_current(index_root)
        note = f"names {name}" + (f" and {len(segments)} segments" if segments else "") if name else "nothing published"
        checks.append(Check("current", directory.CURRENT, True, note=note))
    except IndexDamaged as exc:
        name, segments = None, ()
        checks.append(Check("current", directory.CURRENT, False, [str(exc)], _relative(data_dir, index_root / directory.CURRENT)))
    versions_dir = index_root / directory.VERSIONS
    found = sorted(p.name for p in versions_dir.iterdir() if p.is_dir()) if versions_dir.is_dir() else []
    # A CURRENT naming a version or a segment that is not there is refused by read_current, above.
    for version in found:
        live = version == name
        base, check = _verify_version(data_dir, index_root, version, live)
        checks.append(check)
        folder = directory.segments_dir(index_root, version)
        present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if folder.is_dir() else []
        for segment in present:
            checks.append(_verify_segment(data_dir, SegmentLayout.of(index_root, version, segment).folder, base,
                                          live and segment in segments))
    return checks


def _verify_version(data_dir: Path, index_root: Path, version: str, live: bool) -> tuple[IndexVersion | None, Check]:
    folder = Layout.of(index_root, version).folder
    try:
        base = IndexVersion.load(index_root, name=version)
    except IndexMismatch as exc:  # another format or model: not damage (a reindex rebuilds it)
        return None, Check("version", version, True, live=live, note=str(exc))
    except IndexDamaged as exc:
        return None, Check("version", version, False, [str(exc)], _relative(data_dir, folder / (exc.file or "")), live)
    note = "" if base.manifest.checksums else "no checksums recorded (an earlier release): sizes and shapes checked"
    return base, Check("version", version, True, live=live, note=note)


def _verify_segment(data_dir: Path, folder: Path, base: IndexVersion | None, live: bool) -> Check:
    name = f"{folder.parent.parent.name}/{folder.name}"
    try:
        segment = Segment.load(folder)
        if base is not None:
            segment.check_fits(base)
    except IndexDamaged as exc:
        return Check("segment", name, False, [str(exc)], _relative(data_dir, folder / (exc.file or "")), live)
    note = "" if segment.manifest.checksums else "no checksums recorded (an earlier release): sizes and shapes checked"
    return Check("segment", name, True, live=live, note=note)


def verify_exports(data_dir: Path) -> list[Check]:
    """Each folder under ``<data_dir>/models`` that holds a model: the files
    its ``checksums.json`` lists, and that its JSON files read."""
    models = data_dir / "models"
    if not models.is_dir():
        return []
    checks = []
    for folder in sorted({p.parent for p in models.rglob("*") if p.is_file() and p.suffix in EXPORT_FILES}):
        name = str(folder.relative_to(models))
        problems, note, failing = [], "", None
        for path in sorted(folder.glob("*.json")):
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except (ValueError, OSError) as exc:
                problems.append(f"export {name}: {path.name} cannot be read ({exc})")
                failing = failing or path
        recorded = folder / EXPORT_CHECKSUMS
        if recorded.exists() and not problems:
            try:
                checksums = json.loads(recorded.read_text(encoding="utf-8"))
                integrity.check_checksums(folder, checksums, f"export {name}")
            except IndexDamaged as exc:
                problems.append(str(exc))
                failing = folder / (exc.file or "")
        elif not recorded.exists():
            note = "no checksums recorded"
        for path in sorted(folder.iterdir()):
            if path.suffix in EXPORT_FILES and path.stat().st_size == 0:
                problems.append(f"export {name}: {path.name} is empty")
                failing = failing or path
        checks.append(Check("export", name, not problems, problems,
                            _relative(data_dir, failing) if failing else None, note=note))
    return checks


def verify_store(settings: Settings) -> Check:
    name = store_location(settings)
    try:
        with open_store(settings) as store:
            problems = store.integrity_check()
    except Exception as exc:  # a store too damaged to open
        return Check("store", name, False, [f"the store cannot be opened: {type(exc).__name__}: {exc}"])
    return Check("store", name, not problems, [f"store: {p}" for p in problems])


def _relative(data_dir: Path, path: Path) -> str:
    try:
        return str(path.relative_to(data_dir))
    except ValueError:
        return str(path)


# -- repair -------------------------------------------------------------------------


@dataclass
class RepairReport:
    before: VerifyReport
    after: VerifyReport
    actions: list[str] = field(default_factory=list)
    reindex: ReindexReport | None = None

    @property
    def ok(self) -> bool:
        return self.after.ok

    def to_dict(self) -> dict:
        return {"ok": self.ok, "actions": self.actions, "before": self.before.to_dict(),
                "after": self.after.to_dict(), "reindex": self.reindex.to_dict() if self.reindex else None}


def repair(settings: Settings, store: Store, embedder: LazyEmbedder, *,
           on_progress: Callable[[int, int], None] | None = None) -> RepairReport:
    """Rebuild from the store whatever fails ``verify``: the live view (a full
    build, published as usual), then remove the damaged parts nothing serves."""
    before = verify(settings)
    actions: list[str] = []
    rebuilt = None
    if before.failed("store"):
        actions.append("the store itself is damaged: it cannot be rebuilt from itself; restore it from a backup")
    elif not before.live_ok:
        if store.count() == 0:
            actions.append("the store holds no articles: nothing to rebuild the index from")
        else:
            rebuilt = reindex(settings, store, embedder, full=True, on_progress=on_progress)
            actions.append(f"rebuilt the index from the store: version {rebuilt.version} ({rebuilt.reason})")
    with directory.lock(settings.data_dir / directory.WRITE_LOCK):
        try:
            live = directory.read_current(settings.index_root)[0]
        except IndexDamaged:
            live = None
        for check in before.checks:
            if check.ok or check.kind not in ("version", "segment", "export"):
                continue
            if check.kind == "version" and check.name != live:
                folder = directory.version_dir(settings.index_root, check.name)
            elif check.kind == "segment" and check.name.split("/")[0] != live:
                folder = directory.version_dir(settings.index_root, check.name.split("/")[0])
                folder = folder / directory.SEGMENTS / check.name.split("/")[1]
            elif check.kind == "segment" and not check.live:  # beside the live version, not named by CURRENT
                version, segment = check.name.split("/")
                folder = directory.segments_dir(settings.index_root, version) / segment
            elif check.kind == "export":
                folder = settings.data_dir / "models" / check.name
            else:
                continue
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                actions.append(f"removed the damaged {check.kind} {check.name}")
    after = verify(settings)
    for check in after.failed():
        log.error("still failing after the repair: %s %s: %s", check.kind, check.name, "; ".join(check.problems))
    return RepairReport(before, after, actions, rebuilt)
