"""The corruption matrix: every file kind of a version and of a segment, and
CURRENT, damaged three ways (truncated, bytes garbled in the middle,
emptied). No damage crashes the process or is served: a reader serves the
newest view that verifies and says which it refused; ``recommender verify``
names the file; ``recommender repair`` brings back a view that verifies
with every live article. A folder of an earlier release (no checksums in its
manifests) is held by the loaders' bounds checks instead: no damage crashes
it either, and the damage that would be served or lose articles is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from recommender import directory, integrity
from recommender.articles import parse_article
from recommender.config import Settings
from recommender.embedders import model_id_for
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.errors import IndexDamaged
from recommender.pipeline import reindex
from recommender.repair import verify
from recommender.segments import SegmentLayout
from recommender.service import Engine
from recommender.store import SqliteStore
from recommender.version import Layout
from recommender.view import Views, load_view
from tests.helpers import AUTH, HANG_GUARD, KEY, Server, lazy, make_corpus
from tests.helpers import build_index as publish_rows

VERSION_FILES = sorted([
    "manifest.json", "docs.faiss", "chunks.faiss", "doc_ids.npy", "doc_vectors.npy", "story_ids.npy",
    "published_days.npy", "chunk_vectors.npy", "chunk_offsets.npy", "ranker.json", "columns.npz",
    *(f"{model}_{part}.npy" for model in ("tfidf", "entities", "bm25") for part in ("data", "indices", "indptr", "shape")),
    *(f"tfidf_{kind}_{part}.npy" for kind in ("postings", "impacts") for part in ("data", "indices", "indptr", "shape")),
    *(f"bm25_impacts_{part}.npy" for part in ("data", "indices", "indptr", "shape")),
    *(f"{model}_{part}" for model in ("tfidf", "entities", "bm25") for part in ("idf.npy", "vocabulary.json")),
    "bm25_parameters.json",
])
SEGMENT_FILES = sorted([
    "manifest.json", "doc_ids.npy", "deleted.npy", "doc_vectors.npy", "chunk_vectors.npy", "chunk_offsets.npy",
    "published_days.npy", "story_doc_ids.npy", "columns.npz", "tfidf.npz", "entities.npz", "bm25.npz",
])
DAMAGES = ("truncate", "garble", "empty")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        data = data[: len(data) // 2]
        if path.name == directory.CURRENT and data.endswith(b"\n"):
            # Cut inside a name: a CURRENT cut at a line's end names an earlier state, read as that
            # (test_a_current_cut_at_a_line_end_reads_as_the_state_before_its_segments).
            data = data[:-2]
    elif how == "empty":
        data = b""
    else:  # up to 64 KiB in the middle, every byte changed
        n = max(1, min(64 * 1024, len(data) // 3))
        start = len(data) // 2 - n // 2
        noise = np.random.default_rng(len(data)).integers(1, 256, n, dtype=np.uint8)
        middle = (np.frombuffer(data[start : start + n], dtype=np.uint8) ^ noise).tobytes()
        data = data[:start] + middle + data[start + n :]
    path.write_bytes(data)


def strip_checksums(index_root: Path) -> None:
    """The folder as an earlier release wrote it: no sizes, checksums or seal in the manifests."""
    for manifest in index_root.rglob("manifest.json"):
        data = json.loads(manifest.read_text())
        for key in ("files", "checksums", integrity.SEAL):
            data.pop(key, None)
        manifest.write_text(json.dumps(data))


# -- a tiny index: two versions, the newer with a segment ----------------------------------


class Index:
    def __init__(self, data_dir: Path, model: Path):
        self.settings = Settings.load({"data_dir": data_dir, "model": str(model), "min_confidence": 0.0,
                                       "backend": "torch", "segment_merge_fraction": 1.0}, environ={})
        self.root = self.settings.index_root
        self.old = self.new = ""
        self.segments: tuple[str, ...] = ()

    @property
    def segment(self) -> str:
        return self.segments[0]

    def copy(self, target: Path) -> Index:
        shutil.copytree(self.settings.data_dir, target)
        copied = Index.__new__(Index)
        copied.settings = self.settings.replace(data_dir=target)
        copied.root = copied.settings.index_root
        copied.old, copied.new, copied.segments = self.old, self.new, self.segments
        return copied

    def path(self, where: str, file: str) -> Path:
        if where == "current":
            return self.root / directory.CURRENT
        if where == "segment":
            return SegmentLayout.of(self.root, self.new, self.segment).folder / file
        return Layout.of(self.root, self.new).folder / file

    def live_doc_ids(self) -> list[int]:
        with SqliteStore.open(self.settings.store_path) as store:
            return sorted(store.content_hashes())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_model_dir) -> Index:
    folder = tmp_path_factory.mktemp("pristine") / "data"
    index = Index(folder, tiny_model_dir)
    rows = make_corpus()
    publish_rows(index.settings, rows)
    old = directory.read_current(index.root)[0]
    embedder = lazy(index.settings, lambda: SentenceTransformerEmbedder.load(str(tiny_model_dir)))
    with SqliteStore.open(index.settings.store_path) as store:
        reindex(index.settings, store, embedder, force=True)  # the newer version
        store.upsert([parse_article(dict(rows[0], id="late-1", title="late talks")),
                      parse_article(dict(rows[7], id="late-2", title="late bridge"))])
        store.delete([rows[3]["id"]])
        assert reindex(index.settings, store, embedder).segment  # its segment
    new, index.segments = directory.read_current(index.root)
    assert old is not None and new is not None
    index.old, index.new = old, new
    assert index.new != old and len(index.segments) == 1
    assert sorted(p.name for p in Layout.of(index.root, index.new).folder.iterdir() if p.is_file()) == VERSION_FILES
    folder_files = SegmentLayout.of(index.root, index.new, index.segment).folder.iterdir()
    assert sorted(p.name for p in folder_files) == SEGMENT_FILES
    return index


CASES = ([("current", directory.CURRENT)] + [("version", f) for f in VERSION_FILES]
         + [("segment", f) for f in SEGMENT_FILES])


def expected_fallback(index: Index, where: str) -> tuple[str, tuple[str, ...]]:
    """The view a reader serves instead: the segment's version alone, else the older version."""
    if where == "segment":
        return index.new, ()
    if where == "current":
        return index.new, index.segments  # the newest version, with its segments, verifies
    return index.old, ()


@pytest.mark.parametrize("where, file", CASES, ids=[f"{w}-{f}" for w, f in CASES])
def test_every_damaged_file_is_refused_named_and_never_served(pristine, tmp_path, where, file):
    """Truncated, garbled and emptied: the reader refuses the view naming the
    file, serves the newest view that verifies (and answers from it), and
    verify fails on that file."""
    for how in DAMAGES:
        index = pristine.copy(tmp_path / how)
        damage(index.path(where, file), how)
        parts, refused = Views(index.root, model_id_for(str(index.settings.model))).newest_verified()
        assert parts is not None, (how, refused)
        assert (parts.view.name, parts.view.segments) == expected_fallback(index, where), (how, refused)
        assert refused and refused[0].file == file, (how, refused)
        if where != "current":
            assert refused[0].version == index.new and refused[0].segment == (index.segment if where == "segment" else None)
        view = parts.view
        assert view.live_count and np.isfinite(view.doc_vectors[view.live(np.arange(len(view)))]).all()

        failed = [c for c in verify(index.settings).checks if not c.ok]
        assert failed, how
        assert all(c.kind in ("current", "version", "segment") for c in failed), failed
        assert any(c.file is not None and c.file.endswith(file) for c in failed), (how, failed)
        if where == "current":  # CURRENT names nothing readable: the newest versions are all it has
            continue
        assert [c.name for c in failed] == ([index.new] if where == "version" else [f"{index.new}/{index.segment}"])


@pytest.mark.parametrize("where, file", CASES[1:], ids=[f"{w}-{f}" for w, f in CASES[1:]])
def test_a_folder_without_checksums_never_crashes_on_a_damaged_file(pristine, tmp_path, tiny_embedder, where, file):
    """The second line, for folders of an earlier release: the loaders' checks
    of sizes, dtypes, shapes and bounds. No damage crashes the reader (a
    segfault would end this test run); vectors that would be served as
    garbage, CSR indices that would be read out of bounds and segment doc_ids
    that would drop live articles are refused."""
    must_refuse = file in ("doc_vectors.npy", "chunk_vectors.npy", "tfidf_indices.npy", "bm25_indices.npy",
                           "doc_ids.npy", "manifest.json", "columns.npz")  # garbled FAISS codes: wrong, not fatal
    for how in DAMAGES:
        index = pristine.copy(tmp_path / how)
        strip_checksums(index.root)
        damage(index.path(where, file), how)
        parts, refused = Views(index.root, model_id_for(str(index.settings.model))).newest_verified()
        assert parts is not None, (how, refused)
        if how != "garble" or must_refuse:
            assert (parts.view.name, parts.view.segments) == expected_fallback(index, where), (how, refused)
            assert refused and refused[0].file is not None and file.split(".")[0] in refused[0].file, (how, refused)
        view = parts.view
        rows = view.live(np.arange(len(view)))
        assert np.isfinite(view.doc_vectors[rows]).all()
        with Engine.open(index.settings, lazy(index.settings, tiny_embedder)) as engine:
            assert engine.live.current.state == view.state  # what the server would serve
            for doc_id in view.doc_ids[rows[:3]].tolist():
                engine.related(stored_id(index, doc_id), 5)
            engine.search("peace talks", 5)


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir):
    return SentenceTransformerEmbedder.load(str(tiny_model_dir))


def stored_id(index: Index, doc_id: int) -> str:
    with SqliteStore.open(index.settings.store_path) as store:
        return store.get_many([doc_id])[doc_id].article.id


def test_nothing_verifies_is_503_saying_so(pristine, tmp_path, tiny_embedder):
    index = pristine.copy(tmp_path / "both")
    damage(Layout.of(index.root, index.new).doc_vectors, "garble")
    damage(Layout.of(index.root, index.old).docs, "truncate")
    with Engine.open(index.settings, lazy(index.settings, tiny_embedder)) as engine:
        with pytest.raises(IndexDamaged, match="no published index verifies") as raised:
            engine.live.current  # noqa: B018
        assert raised.value.status_code == 503 and "no index has been published" not in str(raised.value)
        assert {r.version for r in engine.live.refused} == {index.new, index.old}


def test_a_large_file_is_checked_in_the_background_and_the_view_withdrawn(pristine, tmp_path, tiny_embedder,
                                                                          monkeypatch):
    """A server starts serving once sizes and shapes hold; the checksums of
    files over ``SYNC_CHECKSUM_BYTES`` follow in a thread, and a mismatch
    withdraws the view for the newest one that verifies."""
    index = pristine.copy(tmp_path / "bg")
    damage(Layout.of(index.root, index.new).doc_vectors, "garble")
    strip = Layout.of(index.root, index.new).doc_vectors.stat().st_size - 1
    monkeypatch.setattr(integrity, "SYNC_CHECKSUM_BYTES", strip)
    with Engine.open(index.settings, lazy(index.settings, tiny_embedder), background_checksums=True) as engine:
        first = engine.live.verifying
        assert first is not None  # the view was served before its large file was summed
        first.join(timeout=HANG_GUARD)
        assert engine.live.current.name == index.old and engine.live.refused[0].file == "doc_vectors.npy"
        second = engine.live.verifying  # the older version's large file, summed in its turn
        assert second is not None and second is not first
        second.join(timeout=HANG_GUARD)
        assert engine.live.current.name == index.old and engine.live.checksums == "verified"


# -- CURRENT's form: the previous release's, read by both ------------------------------------


def previous_release_read_current(text: str) -> tuple[str | None, tuple[str, ...]]:
    """The previous release's parser of CURRENT, as it was (a rollback runs it on what this one wrote)."""
    lines = text.split()
    return (lines[0], tuple(lines[1:])) if lines else (None, ())


def test_current_is_written_in_the_previous_release_form_and_read_by_both(tmp_path):
    root = tmp_path / "index"
    version, segments = "20250101T000000.000000001-7", ("20250101T000000.000000002-7", "20250101T000000.000000003-7")
    for segment in segments:
        (directory.segments_dir(root, version) / segment).mkdir(parents=True)
    directory.write_current(root, version, segments)
    text = (root / directory.CURRENT).read_text(encoding="utf-8")
    assert text == f"{version}\n{segments[0]}\n{segments[1]}\n"  # no checksum: nothing the old parser misreads
    assert previous_release_read_current(text) == directory.read_current(root) == (version, segments)
    directory.write_current(root, version, ())
    assert (root / directory.CURRENT).read_text(encoding="utf-8") == f"{version}\n"
    assert previous_release_read_current(f"{version}\n") == directory.read_current(root) == (version, ())

    # What earlier builds of this release wrote: line 1 sealed, the seal checked.
    seal = f"crc32:{zlib.crc32(chr(10).join((version, *segments)).encode()):08x}"
    sealed = f"{version} {seal}\n" + "".join(f"{s}\n" for s in segments)
    (root / directory.CURRENT).write_text(sealed, encoding="utf-8")
    assert directory.read_current(root) == (version, segments)
    (root / directory.CURRENT).write_text(sealed.replace(segments[1], segments[0]), encoding="utf-8")
    with pytest.raises(IndexDamaged, match="checksum"):
        directory.read_current(root)


@pytest.mark.parametrize("content, reason", [
    (b"", "does not name"),
    (b"\xff\xfe\x00garbled\x81", "not text"),
    (b"20250101T000000.000000001-7\n\n", "does not name"),
    (b"20250101T000000.000000001-7\n20250101T000000.000000002-7 x\n", "does not name"),
    (b"../../etc\n", "does not name"),
    (b"20250101T000000.000000009-7\n", "names version 20250101T000000.000000009-7, which is not there"),
    (b"20250101T000000.000000001-7\n20250101T000000.00000000", "names segment 20250101T000000.00000000 of"),
], ids=["empty", "binary", "blank-line", "two-names-a-line", "path", "no-such-version", "cut-in-a-name"])
def test_a_current_that_does_not_name_what_is_there_is_refused(tmp_path, content, reason):
    root = tmp_path / "index"
    (directory.segments_dir(root, "20250101T000000.000000001-7") / "20250101T000000.000000002-7").mkdir(parents=True)
    (root / directory.CURRENT).write_bytes(content)
    with pytest.raises(IndexDamaged, match=reason) as raised:
        directory.read_current(root)
    assert raised.value.file == directory.CURRENT


def test_a_current_cut_at_a_line_end_reads_as_the_state_before_its_segments(pristine, tmp_path, tiny_embedder):
    """Without a checksum (the previous release reads CURRENT as a list of
    names), a CURRENT cut right after a name is a CURRENT of an earlier state:
    the version without its later segments. It is served as that, and the
    next publish brings the writes back (a segment holds every change since
    the version's snapshot)."""
    index = pristine.copy(tmp_path / "cut")
    path = index.path("current", directory.CURRENT)
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    parts, refused = Views(index.root, model_id_for(str(index.settings.model))).newest_verified()
    assert parts is not None and (parts.view.name, parts.view.segments, refused) == (index.new, (), [])
    with SqliteStore.open(index.settings.store_path) as store:
        report = reindex(index.settings, store, lazy(index.settings, tiny_embedder))
    assert report.segment and report.version == index.new
    view = load_view(index.root)
    assert sorted(view.doc_ids[view.live(np.arange(len(view)))].tolist()) == index.live_doc_ids()


# -- through a real server, the CLI's verify and repair ------------------------------------

SERVED = [  # representative: the faults of the review (docs/reliability.md)
    ("version", "tfidf_indices.npy", "garble"),  # segfaulted the server and reindex
    ("version", "docs.faiss", "truncate"),  # RuntimeError at start-up
    ("version", "story_ids.npy", "empty"),  # EOFError at start-up
    ("version", "columns.npz", "truncate"),  # BadZipFile at start-up
    ("version", "doc_vectors.npy", "garble"),  # served as garbage
    ("version", "manifest.json", "truncate"),  # every reindex failed, even --full --force
    ("segment", "doc_ids.npy", "garble"),  # silently dropped live articles
    ("current", directory.CURRENT, "garble"),  # UnicodeDecodeError; every reindex failed
]


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "recommender.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD)


@pytest.mark.parametrize("where, file, how", SERVED, ids=[f"{w}-{f}-{h}" for w, f, h in SERVED])
def test_a_server_serves_the_newest_view_that_verifies_and_repair_brings_back_every_article(
        pristine, tmp_path, tiny_model_dir, where, file, how):
    index = pristine.copy(tmp_path / "data")
    if where == "current":
        index.path(where, file).write_bytes(b"\xff\xfe\x00garbled\x81")  # binary
    else:
        damage(index.path(where, file), how)
    server = Server(index.settings.data_dir, tiny_model_dir)  # read-only: it serves, refuses, and waits
    try:
        status, ready = server.request("GET", "/readyz")
        assert status == 200, ready
        assert (ready["index"], ready["refused"][0]["file"]) == (expected_fallback(index, where)[0], file), ready
        status, related = server.request("GET", "/v1/articles/talks-1/related?k=5")
        assert status == 200 and related["items"], related
        assert server.process.poll() is None
    finally:
        server.stop()
    common = ["--data-dir", index.settings.data_dir, "--model", tiny_model_dir]
    checked = cli("verify", "--json", *common)
    assert checked.returncode == 1, checked.stderr
    failed = [c for c in json.loads(checked.stdout)["checks"] if not c["ok"]]
    assert any(c["file"] and c["file"].endswith(file) for c in failed), failed

    repaired = cli("repair", "--json", "--no-progress", *common)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert cli("verify", *common).returncode == 0
    view = load_view(index.root)
    assert sorted(view.doc_ids[view.live(np.arange(len(view)))].tolist()) == index.live_doc_ids()


def test_nothing_verifies_a_server_answers_503_with_a_clear_message(pristine, tmp_path, tiny_model_dir):
    index = pristine.copy(tmp_path / "data")
    damage(Layout.of(index.root, index.new).doc_ids, "garble")
    damage(Layout.of(index.root, index.old).manifest, "truncate")
    server = Server(index.settings.data_dir, tiny_model_dir, ready=False)
    try:
        status, body = server.request("GET", "/readyz")
        assert status == 503 and body["error"]["code"] == "index_damaged", body
        assert "no published index verifies" in body["error"]["message"]
        assert "doc_ids.npy" in body["error"]["message"] and "manifest.json" in body["error"]["message"]
        assert server.request("GET", "/v1/articles/talks-1/related")[0] == 503
    finally:
        server.stop()


def test_a_server_that_may_write_rebuilds_a_damaged_view_from_the_store(pristine, tmp_path, tiny_model_dir):
    index = pristine.copy(tmp_path / "data")
    damage(Layout.of(index.root, index.new).doc_vectors, "garble")
    server = Server(index.settings.data_dir, tiny_model_dir, env={"RECOMMENDER_API_KEY": KEY})
    try:
        deadline = time.monotonic() + HANG_GUARD
        ready = server.request("GET", "/readyz", headers=AUTH)[1]
        while ready.get("index") in (index.old, index.new) and time.monotonic() < deadline:
            time.sleep(0.3)  # a poll interval, as Server.wait_ready's: the condition is the rebuilt version serving
            ready = server.request("GET", "/readyz", headers=AUTH)[1]
        assert ready["index"] not in (index.old, index.new) and ready["refused"] == [] and ready["behind"] == 0, ready
        assert ready["articles"] == len(index.live_doc_ids())
    finally:
        server.stop()


# -- files that cannot be read, and files restored in place ------------------------------------


def test_a_file_that_cannot_be_read_is_a_refusal_not_no_index(pristine, tmp_path, tiny_embedder):
    """An I/O error other than a missing file (here real ones: a file replaced
    by a symbolic link to itself, ELOOP on stat and open; a file replaced by
    a folder, EISDIR on read) is a refusal naming the file, like damage: the
    reader serves the older version that verifies, never "no index has been
    published yet", and ``verify`` names the file instead of crashing."""
    index = pristine.copy(tmp_path / "io")
    looped = Layout.of(index.root, index.new).doc_vectors
    looped.unlink()
    looped.symlink_to(looped.name)
    with Engine.open(index.settings, lazy(index.settings, tiny_embedder)) as engine:
        assert engine.live.current.name == index.old, engine.live.error
        assert [(r.version, r.file) for r in engine.live.refused] == [(index.new, "doc_vectors.npy")]
    failed = [c for c in verify(index.settings).checks if not c.ok]
    assert [(c.name, c.file) for c in failed] == [(index.new, f"index/versions/{index.new}/doc_vectors.npy")]

    folder = Layout.of(index.root, index.old).folder
    checksums = json.loads(Layout.of(index.root, index.old).manifest.read_text())["checksums"]
    (folder / "ranker.json").unlink()
    (folder / "ranker.json").mkdir()  # read: EISDIR
    with pytest.raises(IndexDamaged) as raised:
        integrity.check_checksums(folder, checksums, f"version {index.old}")
    assert raised.value.file == "ranker.json" and "cannot be read" in str(raised.value)

    export = index.settings.data_dir / "models" / "export"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(b"onnx" * 64)
    (export / "model.bin").write_bytes(b"weights" * 64)
    (export / "checksums.json").write_text(json.dumps(integrity.record(export)[1]))
    (export / "model.bin").unlink()
    (export / "model.bin").mkdir()
    exports = [c for c in verify(index.settings).checks if c.kind == "export"]
    assert [(c.ok, c.file) for c in exports] == [(False, "models/export/model.bin")], exports


def test_a_file_restored_in_place_is_read_again(pristine, tmp_path):
    """A refusal is remembered while the folder's files stay as they are. Bit
    rot leaves a file's size and modification time; a restore with ``cp -p``
    (or ``rsync -a``) brings both back as they were: the file's change time
    (and, for rsync, its inode) says it is another file, and it is read again
    without a restart."""
    index = pristine.copy(tmp_path / "restore")
    path = Layout.of(index.root, index.new).doc_vectors
    pristine_path = Layout.of(pristine.root, pristine.new).doc_vectors
    before = path.stat()
    damage(path, "garble")  # the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # bit rot does not touch the mtime
    views = Views(index.root, model_id_for(str(index.settings.model)))
    parts, refused = views.newest_verified()
    assert parts is not None and parts.view.name == index.old and refused[0].file == "doc_vectors.npy"
    shutil.copy2(pristine_path, path)  # cp -p: the same size and mtime, the same inode
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    parts, refused = views.newest_verified()
    assert parts is not None and (parts.view.name, parts.view.segments) == (index.new, index.segments), refused
    assert refused == []
