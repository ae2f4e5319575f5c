#!/usr/bin/env python
"""What verification costs when a view is opened: a synthetic version of N
articles (384-d float32 vectors, one passage each, IVF,SQ8 FAISS indexes,
random keyword matrices of ``--terms`` entries per row), written by
``IndexVersion.save`` (so with sizes and CRC-32 checksums in its manifest),
then opened in fresh processes, each way a median of ``--repeat``:

* ``before``: the loader of the release before checksums (``--before``, a git
  commit, read from a worktree), which checked nothing;
* ``server_ready``: ``IndexVersion.load(defer_checksums=True)``, what a server
  waits for before serving: manifest, sizes, dtypes, shapes and bounds, and
  the checksums of files up to ``integrity.SYNC_CHECKSUM_BYTES``;
* ``background``: the checksums of the larger files, summed after the server
  is ready (``LiveIndex``);
* ``all_checksums``: ``IndexVersion.load()``, every checksum before the load
  returns (the commands: ``related``, ``search``, ``reindex``, ``verify``);
* ``no_checksums``: the folder as an earlier release wrote it (no checksums):
  sizes are unknown, the vectors are checked for unit length instead.

Also the checksum's speed (CRC-32 against SHA-256 and BLAKE2b) on the
version's doc_vectors.npy. The page cache is warm (the files were just
written or read), as at a server's restart.

    python scripts/bench_verify.py --rows 100000 1000000 --out docs/bench-verify.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommender import __version__, integrity  # noqa: E402
from recommender.clock import utc_stamp  # noqa: E402
from recommender.embedders.machine import cpu_info  # noqa: E402
from recommender.filters import FilterColumns  # noqa: E402
from recommender.index import VectorIndex  # noqa: E402
from recommender.lexical import Bm25Model, TfidfModel  # noqa: E402
from recommender.rank.signals import SIGNALS  # noqa: E402
from recommender.ranker import DEFAULT_MODEL, Ranker  # noqa: E402
from recommender.version import FORMAT_VERSION, IndexVersion, Layout, Manifest  # noqa: E402

DIM = 384
NAME = "20250101T000000.000000000-1"


def vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    centres = rng.standard_normal((1000, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def keywords(n: int, width: int, per_row: int, rng: np.random.Generator) -> sp.csr_matrix:
    indptr = np.arange(0, (n + 1) * per_row, per_row, dtype=np.int64)
    indices = np.sort(rng.integers(0, width, (n, per_row)), axis=1).astype(np.int32).ravel()
    data = rng.random(n * per_row, dtype=np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n, width))
    matrix.sum_duplicates()
    return matrix


def synthetic_version(root: Path, n: int, terms: int) -> None:
    rng = np.random.default_rng(0)
    doc_vectors = vectors(n, rng)
    ids = np.arange(1, n + 1, dtype=np.int64)
    factory = "IVF1024,SQ8" if n >= 50_000 else "Flat"
    docs = VectorIndex.build(doc_vectors, ids, factory)
    chunks = VectorIndex.build(doc_vectors, None, factory, candidates_only=True)
    width = 50_000
    vocabulary = {f"t{i}": i for i in range(width)}
    idf = rng.random(width, dtype=np.float32) + 1
    tfidf = TfidfModel(vocabulary, idf, keywords(n, width, terms, rng))
    entities = TfidfModel(vocabulary, idf, keywords(n, width, max(1, terms // 5), rng))
    bm25 = Bm25Model(vocabulary, keywords(n, width, terms, rng), idf, avgdl=200.0, k1=1.2, b=0.75, stem=True)
    columns = FilterColumns(("en",), ("world",), ("tag",), lang=np.zeros(n, np.int32), section=np.zeros(n, np.int32),
                            published=np.full(n, b"2025-01-01", dtype="S40"),
                            tag_rows=sp.csc_matrix((n, 1), dtype=np.int8))
    manifest = Manifest(version=NAME, model_id="synthetic", embedding_key="synthetic", dimension=DIM,
                        faiss_type=docs.type_name, faiss_factory=docs.factory, chunk_faiss_factory=chunks.factory,
                        count=n, chunks=n, stories=n, built_at=utc_stamp(), corpus_hash="", chunk_words=200,
                        max_chunks=1, recommender_version=__version__, format_version=FORMAT_VERSION)
    folder = Layout.of(root, NAME).folder
    folder.mkdir(parents=True)
    IndexVersion(name=NAME, path=folder, manifest=manifest, docs=docs, chunks=chunks, doc_ids=ids,
                 doc_vectors=doc_vectors, story_ids=np.arange(n, dtype=np.int64),
                 published_days=np.full(n, 20000.0), chunk_vectors=doc_vectors,
                 chunk_offsets=np.arange(n + 1, dtype=np.int64), tfidf=tfidf, bm25=bm25, entities=entities,
                 ranker=Ranker.load(DEFAULT_MODEL, SIGNALS), columns=columns).save(folder)


OPEN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from recommender.version import IndexVersion
how, root, name = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
if how == "before":
    version = IndexVersion.load(root, name=name)
    version.tfidf.postings, version.bm25.impacts
    print(time.perf_counter() - started)
else:
    from recommender import integrity
    version = IndexVersion.load(root, name=name, defer_checksums=how == "server_ready")
    ready = time.perf_counter() - started
    started = time.perf_counter()
    integrity.check_checksums(version.path, version.manifest.checksums, name, version.unchecked)
    print(ready, time.perf_counter() - started)
"""


def timed(code: Path, how: str, root: Path, repeat: int) -> list[list[float]]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", OPEN, str(code), how, str(root), NAME], capture_output=True,
                             text=True, check=True).stdout.split()
        runs.append([float(x) for x in out])
    return runs


def speed(path: Path) -> dict[str, float]:
    data = path.read_bytes()
    out: dict[str, float] = {}
    for name, run in (("crc32", lambda: zlib.crc32(data)), ("sha256", lambda: hashlib.sha256(data).digest()),
                      ("blake2b", lambda: hashlib.blake2b(data).digest())):
        started = time.perf_counter()
        run()
        out[f"{name}_mb_per_s"] = round(len(data) / 2**20 / (time.perf_counter() - started))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--terms", type=int, default=30, help="keyword entries per row")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", default="ed9b21d", help="the commit before checksums (its loader checks nothing)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    results = {"cpu": cpu_info().get("model", ""), "sync_checksum_bytes": integrity.SYNC_CHECKSUM_BYTES, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(before), args.before], check=True,
                       capture_output=True)
        try:
            for n in args.rows:
                root = Path(tmp) / f"index-{n}"
                started = time.perf_counter()
                synthetic_version(root, n, args.terms)
                folder = Layout.of(root, NAME).folder
                size = sum(p.stat().st_size for p in folder.iterdir())
                row: dict = {"build_seconds": round(time.perf_counter() - started, 1), "folder_mb": round(size / 2**20)}
                row.update(speed(Layout.of(root, NAME).doc_vectors))
                ways = {"before": timed(before, "before", root, args.repeat),
                        "server_ready": timed(repo, "server_ready", root, args.repeat),
                        "all_checksums": timed(repo, "all_checksums", root, args.repeat)}
                row["before_s"] = round(statistics.median(r[0] for r in ways["before"]), 3)
                row["server_ready_s"] = round(statistics.median(r[0] for r in ways["server_ready"]), 3)
                row["background_s"] = round(statistics.median(r[1] for r in ways["server_ready"]), 3)
                row["all_checksums_s"] = round(statistics.median(r[0] for r in ways["all_checksums"]), 3)
                data = json.loads((folder / "manifest.json").read_text())
                for key in ("files", "checksums", integrity.SEAL):
                    data.pop(key, None)
                (folder / "manifest.json").write_text(json.dumps(data))
                row["no_checksums_s"] = round(statistics.median(
                    r[0] for r in timed(repo, "all_checksums", root, args.repeat)), 3)
                results["rows"][str(n)] = row
                print(n, row, flush=True)
                shutil.rmtree(root)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(before)], check=False)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
