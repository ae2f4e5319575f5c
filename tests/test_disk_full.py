"""A full disk, as storage engines test it: a small tmpfs the test mounts (16 MiB), a data folder on
it, then a filler file written until the disk refuses. Reads answer as before; writes answer 507
and leave the store as it was; the CLI says one line; a failed build leaves no staging folder; once
the filler is gone, writes and a reindex work again by themselves. A read-only remount stands for
permission errors (root writes through file modes). Mounting needs root: skipped otherwise, and
required where REQUIRE_DISK_FULL=1 (CI).

Also here, without a mount: how errors are read as a full disk, and the leftovers a start-up removes."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recommender import directory
from recommender.config import Settings
from recommender.errors import DiskFull, StorageNotWritable, storage_fault
from tests.helpers import AUTH, HANG_GUARD, KEY, Server, build_index, write_jsonl

DEAD_PID = 2**22 + 1
"""Above Linux's largest pid (pid_max is at most 2**22): no process has it."""


def _mount_small_disk(mount: Path) -> str | None:
    """Mount a 16 MiB tmpfs on ``mount``; the reason it cannot be, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    if done.returncode != 0:
        return f"`mount -t tmpfs` failed: {(done.stderr or done.stdout).strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    reason = _mount_small_disk(mount)
    if reason is not None:
        if os.environ.get("REQUIRE_DISK_FULL"):
            raise RuntimeError(f"REQUIRE_DISK_FULL is set but the test cannot mount its small disk: {reason}")
        pytest.skip(f"needs a small filesystem to fill: {reason}")
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], capture_output=True, text=True, timeout=HANG_GUARD,
                              check=False)
        if done.returncode != 0:  # still busy (a process the test started): detach it now, freed when closed
            subprocess.run(["umount", "-l", str(mount)], timeout=HANG_GUARD, check=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses (ENOSPC), to the last byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\xff" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    stats = os.statvfs(disk)
    assert stats.f_bavail == 0, "the disk still has room"
    return filler


def cli(data_dir: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RECOMMENDER_MIN_CONFIDENCE": "0", "RECOMMENDER_BACKEND": "torch"}
    return subprocess.run([sys.executable, "-m", "recommender.cli", *args, "--data-dir", str(data_dir),
                           "--model", str(model)], env=env, capture_output=True, text=True, timeout=HANG_GUARD,
                          check=False)


def assert_one_line(done: subprocess.CompletedProcess, *words: str) -> str:
    """A refused command: exit 1, one line on stderr naming the cause, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def store_rows(store: Path, article_id: str) -> tuple[str, list]:
    """SQLite's integrity_check of the store and an article's row, read without writing."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        row = db.execute("SELECT title, body, seq FROM articles WHERE id = ?", (article_id,)).fetchall()
    db.close()
    return check, row


def plant_leftovers(data_dir: Path, pid: int = DEAD_PID) -> list[Path]:
    """What a killed writer leaves: a CURRENT being replaced, a staging version, a segment's staging
    folder and an export's temporary folder (beside its export.lock), each named with ``pid``."""
    index = data_dir / "index"
    version = directory.read_current(index)[0]
    assert version is not None
    export = data_dir / "models" / "openvino" / "0123abcd"
    export.mkdir(parents=True, exist_ok=True)
    (export / directory.EXPORT_LOCK).touch()
    planted = [
        index / f".CURRENT.{pid}.k3j9x0qa.tmp",
        index / "staging" / f"20250101T000000.000000001-{pid}",
        index / "versions" / version / "segments" / f".20250101T000000.000000002-{pid}.tmp",
        export / f".tmp-{pid}-a1b2c3",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith(".CURRENT"):
            path.write_text(f"{version}\n")
        else:
            path.mkdir()
            (path / "part").write_bytes(b"x" * 100)
    return planted


def test_a_full_disk_refuses_writes_and_keeps_reads(small_disk, tiny_model_dir, corpus):
    data = small_disk
    settings = Settings.load({"data_dir": data, "model": str(tiny_model_dir), "min_confidence": 0.0,
                              "backend": "torch"}, environ={})
    build_index(settings, corpus)
    left = plant_leftovers(data)
    server = Server(data, settings.model, env={"RECOMMENDER_API_KEY": KEY})
    try:
        assert not any(path.exists() for path in left), "a server's start removes what no live process owns"
        related_path = "/v1/articles/talks-0/related?k=5"
        status, related = server.request("GET", related_path)
        assert status == 200 and related["items"]
        status, found = server.request("GET", "/v1/search?q=ceasefire+envoy&k=5")
        assert status == 200 and found["items"]
        status, ready = server.request("GET", "/readyz")
        assert status == 200
        _, before = store_rows(settings.store_path, "talks-0")

        filler = fill(data)

        # Reads answer as before, new metrics slots included (a route this server has not answered yet).
        assert server.request("GET", related_path) == (200, related)
        assert server.request("GET", "/v1/search?q=ceasefire+envoy&k=5") == (200, found)
        assert server.request("GET", "/v1/articles/talks-3")[0] == 200
        assert server.request("GET", "/readyz") == (200, ready)
        status, scrape = server.request("GET", "/metrics")
        assert status == 200 and "recommender_requests_total" in scrape
        assert not (data / "metrics").exists(), "the metrics files live off the data folder"

        # A write answers 507, with the one error body; the store is as it was.
        big = {"title": "ceasefire envoy", "body": "mediators ceasefire border talks " * 30_000}
        status, body = server.request("PUT", "/v1/articles/talks-0", big, AUTH)
        assert status == 507, body
        assert body["error"]["code"] == "insufficient_storage" and "full" in body["error"]["message"]
        assert str(data) not in body["error"]["message"]  # paths are logged, not shown
        status, body = server.request("PUT", "/v1/articles/brand-new", big, AUTH)
        assert status == 507, body
        assert store_rows(settings.store_path, "talks-0") == ("ok", before)
        assert store_rows(settings.store_path, "brand-new") == ("ok", [])
        assert server.request("GET", related_path) == (200, related)

        # The CLI: one line naming the disk, exit 1, no traceback.
        upload = write_jsonl(data.parent / "big.jsonl", [{"id": "brand-new", **big}])
        assert_one_line(cli(data, tiny_model_dir, "ingest", str(upload)), "full", str(settings.store_path))
        # A full build on the full disk: refused in one line, and its staging folder is gone at once.
        line = assert_one_line(cli(data, tiny_model_dir, "reindex", "--full", "--force", "--no-progress"), "full")
        assert str(data) in line
        staging = data / "index" / "staging"
        assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
        assert server.request("GET", related_path) == (200, related)
        assert server.process.poll() is None, server.output()

        # Space returns: writes and a reindex work again, with nothing restarted.
        filler.unlink()
        status, body = server.request("PUT", "/v1/articles/talks-0", big, AUTH)
        assert status == 200 and body["updated"] == 1, body
        check, after = store_rows(settings.store_path, "talks-0")
        assert check == "ok" and after[0][1] == big["body"].strip()
        done = cli(data, tiny_model_dir, "reindex", "--full", "--force", "--no-progress", "--json")
        assert done.returncode == 0, done.stderr
        assert '"published": true' in done.stdout
        assert not staging.exists() or not any(staging.iterdir())
        assert server.request("GET", "/readyz")[0] == 200
    finally:
        server.stop()


def test_a_read_only_disk_refuses_writes_in_one_line(small_disk, tiny_model_dir, corpus):
    """Permission errors: the data folder's filesystem remounted read-only."""
    data = small_disk
    settings = Settings.load({"data_dir": data, "model": str(tiny_model_dir), "min_confidence": 0.0,
                              "backend": "torch"}, environ={})
    build_index(settings, corpus[:10])
    upload = write_jsonl(data.parent / "one.jsonl", [{"id": "one", "title": "t", "body": "ceasefire envoy"}])
    subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True, timeout=HANG_GUARD)
    line = assert_one_line(cli(data, tiny_model_dir, "ingest", str(upload)), "read-only")
    assert str(data) in line
    assert_one_line(cli(data, tiny_model_dir, "rules", "add", "block", "talks-1"), "read-only")
    assert_one_line(cli(data, tiny_model_dir, "reindex", "--full", "--force", "--no-progress"), "read-only")


# -- without a mount ------------------------------------------------------------------


def test_what_counts_as_a_full_disk(tmp_path):
    import faiss
    import numpy as np

    assert isinstance(storage_fault(OSError(errno.ENOSPC, "No space left on device"), tmp_path), DiskFull)
    assert isinstance(storage_fault(sqlite3.OperationalError("database or disk is full"), "s.db"), DiskFull)
    full = storage_fault(RuntimeError("Error in faiss::write_index: write error in /x/docs.faiss: 10 != 20 "
                                      "(No space left on device)"), tmp_path / "index")
    assert isinstance(full, DiskFull) and full.status_code == 507
    assert str(full).startswith(f"the disk holding {tmp_path / 'index'} is full")
    denied = storage_fault(PermissionError(errno.EACCES, "Permission denied", "/x/store.sqlite"))
    assert isinstance(denied, StorageNotWritable) and denied.status_code == 503 and "/x/store.sqlite" in str(denied)
    assert isinstance(storage_fault(sqlite3.OperationalError("attempt to write a readonly database")),
                      StorageNotWritable)
    # Not a storage fault: left as it was.
    assert storage_fault(ValueError("No space left on device")) is None
    assert storage_fault(OSError(errno.ENOENT, "No such file or directory")) is None
    assert storage_fault(sqlite3.OperationalError("no such table: x")) is None
    # A write error on a disk with room is not called full.
    assert storage_fault(RuntimeError("write error in x"), tmp_path) is None
    with pytest.raises(RuntimeError, match="could not open"):  # FAISS's own error, where nothing is full
        faiss.write_index(faiss.IndexFlatIP(4), str(tmp_path / "missing" / "x.faiss"))
    np.save(tmp_path / "ok.npy", np.zeros(3))


def test_leftovers_that_no_writer_works_on_are_removed(settings, corpus):
    """With every lock free: the index's leftovers, whatever pid they carry (the lock, not the pid,
    tells a writer at work); an export's where its pid is gone; elsewhere, what no lock guards, once
    untouched for an hour and its pid not alive here."""
    build_index(settings, corpus[:10])
    index = settings.index_root
    version = directory.read_current(index)[0]
    assert version is not None
    dead = plant_leftovers(settings.data_dir)
    mine = [index / f".CURRENT.{os.getpid()}.abcdefgh.tmp",
            index / "staging" / f"20250101T000000.000000003-{os.getpid()}",
            index / "versions" / version / "segments" / f".20250101T000000.000000004-{os.getpid()}.tmp"]
    mine[0].write_text(f"{version}\n")
    for folder in mine[1:]:
        folder.mkdir()
    export_mine = dead[-1].parent / f".tmp-{os.getpid()}-d4e5f6"
    export_mine.mkdir()
    hour_ago = time.time() - directory.ABANDONED_STAGING_SECONDS - 60
    unguarded = {name: settings.data_dir / name for name in (
        f".checks.json.{DEAD_PID}.aaaaaaaa.tmp", f".old.json.{DEAD_PID}.bbbbbbbb.tmp",
        f".old.json.{os.getpid()}.cccccccc.tmp")}
    for name, path in unguarded.items():
        path.write_text("{}")
        if ".old." in name:
            os.utime(path, (hour_ago, hour_ago))

    removed = directory.remove_leftovers(settings.data_dir, index)
    assert sorted(removed) == sorted([*dead, *mine, unguarded[f".old.json.{DEAD_PID}.bbbbbbbb.tmp"]])
    assert export_mine.exists(), "an export's, free of its lock, is kept while its pid is alive"
    assert unguarded[f".checks.json.{DEAD_PID}.aaaaaaaa.tmp"].exists(), "unguarded and recent: kept"
    assert unguarded[f".old.json.{os.getpid()}.cccccccc.tmp"].exists(), "unguarded, an hour old, its pid alive"
    assert directory.read_current(index)[0] == version and (index / "versions" / version).is_dir()
    assert (settings.store_path).exists()


HOLD_LOCK = """
import sys
from pathlib import Path
from recommender import directory
with directory.lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("lock", [directory.WRITE_LOCK, directory.MERGE_LOCK, directory.EXPORT_LOCK])
def test_a_leftover_whose_lock_another_process_holds_is_kept(settings, corpus, lock):
    """A writer in another pid namespace (another container on the same data volume): its pid is not
    alive here, its lock is held. What that lock guards stays while it is held; released, it goes."""
    build_index(settings, corpus[:10])
    index = settings.index_root
    current, staging, segment, export = plant_leftovers(settings.data_dir)
    guarded = {directory.WRITE_LOCK: [current, segment], directory.MERGE_LOCK: [staging],
               directory.EXPORT_LOCK: [export]}[lock]
    lock_path = export.parent / lock if lock == directory.EXPORT_LOCK else settings.data_dir / lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        removed = directory.remove_leftovers(settings.data_dir, index)
        assert sorted(removed) == sorted({current, staging, segment, export} - set(guarded))
        assert all(path.exists() for path in guarded), "a held lock's leftovers are a writer's work"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=HANG_GUARD) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=HANG_GUARD)
    assert sorted(directory.remove_leftovers(settings.data_dir, index)) == sorted(guarded)
    assert not any(path.exists() for path in guarded)


def test_a_segment_that_fails_to_write_leaves_no_staging_folder(settings, corpus):
    build_index(settings, corpus[:10])
    index = settings.index_root
    version = directory.read_current(index)[0]
    assert version is not None
    folder = directory.segments_dir(index, version)
    killed = folder / f".20250101T000000.000000005-{DEAD_PID}.tmp"  # a writer killed before
    killed.mkdir(parents=True)

    def write(staging: Path) -> None:
        (staging / "doc_ids.npy").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        directory.place_segment(index, version, directory.new_name(), write)
    assert [p.name for p in folder.iterdir()] == [], "neither the killed writer's staging nor this one's stays"
