#!/usr/bin/env python
"""Reindex throughput against plain ``SentenceTransformer.encode``, in one run.

    HF_HUB_OFFLINE=1 python scripts/bench_reindex.py --data ../shared/data [--limit 1000] \\
        [--rounds 2] [--quality] [--out docs/bench-reindex.json]

On real BBC articles, with the packaged all-MiniLM-L6-v2 and the same torch
threads for every row, it times:

* plain encode, one text per article: ``SentenceTransformer.encode`` of title +
  body (the model cuts it at 256 word pieces), float32, batch 32 - how most
  tools embed an archive;
* plain encode, the same passages: the exact texts our reindex embeds (the
  title and ~180-word passages of each article), float32, batch 32;
* ``reindex`` with the defaults: ingest (not timed), then the whole job -
  embedding, FAISS, keyword models, near-duplicate stories, atomic publish;
* ``reindex`` with ``precision = "float32"``, to separate the gains;
* a second ``reindex`` over the unchanged store, and one after 5% of the
  articles got an extra paragraph (only the new passages are embedded).

Ratios are docs/s against the plain-encode rows, measured in this one process.
Plain encode of the passages and the default reindex run ``--rounds`` times as
back-to-back pairs in alternating order (plain first, then reindex first), and
each pair gives its own ratio; the table shows the medians, so a noisy
neighbour's burst does not decide the result. ``--quality`` also
runs the development sets' evaluation (related MAP on BBC, NewsWCL50,
WikiRef220; search MAP on TIME) with float32 and with the default precision,
each in its own fresh data folder, and prints the MAP difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from recommender.articles import parse_article  # noqa: E402
from recommender.config import Settings  # noqa: E402
from recommender.embed import SentenceTransformerEmbedder, model_id_for, resolve_model_path, resolve_precision  # noqa: E402
from recommender.pipeline import reindex  # noqa: E402
from recommender.store import Store  # noqa: E402
from recommender.text import chunk_article  # noqa: E402

QUALITY_SETS = [
    ("related", "bbc_news.jsonl", None),
    ("related", "newswcl50.jsonl", None),
    ("related", "wikiref220.jsonl", None),
    ("search", "time_docs.jsonl", "time_queries.jsonl"),
]


def load_articles(path: Path, limit: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def plain_encode(model, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - start, vectors


def run_reindex(rows: list[dict], root: Path, name: str, model, **overrides) -> tuple[dict, Settings, Store]:
    """Ingest (not timed), then one whole reindex job with the already loaded
    model, as the plain-encode rows have it too."""
    settings = Settings.load({"data_dir": root / name, **overrides}, environ={})
    store = Store.open(settings.store_path)
    store.upsert([parse_article(r) for r in rows])
    embedder = SentenceTransformerEmbedder(model, model_id_for(settings.model), settings.batch_size, settings.precision)
    report = reindex(settings, store, lambda: embedder)
    return report.to_dict(), settings, store


def quality(data: Path, root: Path, precision: str) -> dict[str, float]:
    from recommender.evaluate import evaluate_related, evaluate_search

    out = {}
    for task, dataset, queries in QUALITY_SETS:
        settings = Settings.load({"data_dir": root / f"quality-{precision}-{dataset}", "precision": precision}, environ={})
        if task == "related":
            report = evaluate_related(settings, data / dataset)
        else:
            report = evaluate_search(settings, data / dataset, data / queries)
        name = f"{dataset.split('.')[0]} {task}"
        out[name] = report["systems"]["recommender"]["map"]
        print(f"  {precision:9s} {name:18s} MAP {out[name]:.4f}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with bbc_news.jsonl")
    parser.add_argument("--limit", type=int, default=0, help="use the first N BBC articles (default: all 2,127)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="pairs of plain encode and reindex, in alternating order (default: 2)")
    parser.add_argument("--quality", action="store_true", help="also compare MAP on the development sets (minutes)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    rows = load_articles(args.data / "bbc_news.jsonl", args.limit)
    n = len(rows)
    defaults = Settings.load({}, environ={})
    passages = [
        p for r in rows for p in chunk_article(r["title"], r["body"], defaults.chunk_words, defaults.max_chunks)
    ]
    precision = resolve_precision(defaults.precision)
    print(
        f"{n} BBC articles, {len(passages)} passages; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"precision auto -> {precision}",
        file=sys.stderr,
        flush=True,
    )
    model = SentenceTransformer(resolve_model_path(defaults.model), device="cpu")
    model.encode(passages[:64], batch_size=32)  # warm-up
    results: dict = {"articles": n, "passages": len(passages), "precision": precision,
                     "torch_threads": torch.get_num_threads(), "rows": {}}

    def row(name: str, seconds: float, note: str, **extra) -> None:
        results["rows"][name] = {"seconds": round(seconds, 2), "docs_per_second": round(n / seconds, 2), "note": note, **extra}
        print(f"  {name}: {seconds:.1f}s, {n / seconds:.1f} docs/s", file=sys.stderr, flush=True)

    seconds, article_vectors = plain_encode(model, [f"{r['title']}. {r['body']}" for r in rows])
    row("plain encode, one text per article", seconds, "float32, batch 32, cut at 256 word pieces")
    with tempfile.TemporaryDirectory(prefix="bench-reindex-") as tmp:
        root = Path(tmp)
        # Plain encode of the passages and our whole job, back to back, in
        # alternating order (A B, then B A, ...): drift in the machine's speed
        # hits both sides alike. Each round's ratio is its own pair's.
        rounds, store = [], None
        for number in range(args.rounds):
            pair: dict = {}
            for step in ("plain", "ours") if number % 2 == 0 else ("ours", "plain"):
                if step == "plain":
                    pair["plain_seconds"], passage_vectors = plain_encode(model, passages)
                else:
                    if store is not None:
                        store.close()
                    report, settings, store = run_reindex(rows, root, f"default-{number}", model)
                    pair["reindex_seconds"] = report["seconds"]
            pair["ratio"] = round(pair["plain_seconds"] / pair["reindex_seconds"], 3)
            rounds.append({k: round(v, 2) if k != "ratio" else v for k, v in pair.items()})
            print(f"  round {number + 1}: plain encode {pair['plain_seconds']:.1f}s, reindex {pair['reindex_seconds']:.1f}s, "
                  f"{pair['ratio']:.2f}x", file=sys.stderr, flush=True)
        results["rounds"] = rounds
        results["ratio_median"] = round(statistics.median(r["ratio"] for r in rounds), 3)
        row("plain encode, the same passages", statistics.median(r["plain_seconds"] for r in rounds),
            f"float32, batch 32; median of {args.rounds} rounds")
        row(f"recommender reindex ({precision})", statistics.median(r["reindex_seconds"] for r in rounds),
            f"whole job: embed, FAISS, stories, publish; median of {args.rounds} rounds",
            passages_embedded=report["passages_embedded"], passages_reused=report["passages_reused"])
        ours = np.concatenate([v for _, v in store.iter_embeddings(_key(settings))])
        cosine = (ours * passage_vectors[: len(ours)]).sum(axis=1) if len(ours) == len(passage_vectors) else None

        fp32, _, fp32_store = run_reindex(rows, root, "float32", model, precision="float32")
        row("recommender reindex (float32)", fp32["seconds"], "whole job, float32",
            passages_embedded=fp32["passages_embedded"], passages_reused=fp32["passages_reused"])
        fp32_store.close()

        embedder = SentenceTransformerEmbedder(model, model_id_for(settings.model), settings.batch_size, settings.precision)
        again = reindex(settings, store, lambda: embedder)
        results["unchanged_rerun"] = {"seconds": again.seconds, "embedded": again.embedded, "published": again.published}
        changed = rows[:: 20]
        store.upsert([parse_article(dict(r, body=r["body"] + "\n\nThis article was updated with a new closing paragraph."))
                      for r in changed])
        update = reindex(settings, store, lambda: embedder)
        results["update_5_percent"] = {
            "articles_changed": len(changed), "seconds": update.seconds, "embedded": update.embedded,
            "passages_embedded": update.passages_embedded, "passages_reused": update.passages_reused,
        }
        # Precomputing every related list in the job: what one list costs.
        from recommender.index import set_query_threads
        from recommender.rank.related import Policy, related_to_row
        from recommender.version import IndexVersion

        set_query_threads(1)
        version = IndexVersion.load(settings.index_root).warm()
        policy = Policy(dedup=settings.dedup, min_confidence=settings.min_confidence)
        start = time.perf_counter()
        for row in range(len(version)):
            related_to_row(version, row, 10, settings, policy=policy)
        per_list = (time.perf_counter() - start) / len(version)
        results["precompute_related"] = {"lists": len(version), "ms_per_list": round(per_list * 1000, 3),
                                         "threads": 1}
        store.close()

        if cosine is not None:
            results["cosine_to_plain_encode"] = {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)}
        if args.quality:
            fp = quality(args.data, root, "float32")
            de = quality(args.data, root, defaults.precision)
            results["quality_map"] = {k: {"float32": fp[k], "default": de[k], "delta": round(de[k] - fp[k], 4)} for k in fp}

    _print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _key(settings: Settings) -> str:
    from recommender.pipeline import embedding_key

    return embedding_key(settings)


def _print_table(results: dict) -> None:
    rows = results["rows"]
    per_article = rows["plain encode, one text per article"]["docs_per_second"]
    same_texts = rows["plain encode, the same passages"]["docs_per_second"]
    print(f"{results['articles']} BBC articles ({results['passages']} passages), "
          f"{results['torch_threads']} torch threads\n")
    print("| run | seconds | docs/s | vs plain encode, same passages | vs plain encode, one text per article |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['docs_per_second']:.1f} | "
              f"{r['docs_per_second'] / same_texts:.2f}x | {r['docs_per_second'] / per_article:.2f}x |")
    ratios = ", ".join(f"{r['ratio']:.2f}x" for r in results["rounds"])
    print(f"\nReindex against plain encode of the same passages, round by round: {ratios}; "
          f"median {results['ratio_median']:.2f}x.")
    if "cosine_to_plain_encode" in results:
        c = results["cosine_to_plain_encode"]
        print(f"\nPassage vectors against plain float32 encode: cosine min {c['min']}, mean {c['mean']}.")
    u, c = results["unchanged_rerun"], results["update_5_percent"]
    print(f"Rerun over the unchanged store: {u['embedded']} embedded in {u['seconds']:.2f}s.")
    print(f"After {c['articles_changed']} articles got a new paragraph: {c['embedded']} re-embedded articles, "
          f"{c['passages_embedded']} passages embedded, {c['passages_reused']} reused, {c['seconds']:.1f}s.")
    p = results["precompute_related"]
    print(f"Precomputing related lists (k = 10, one thread): {p['ms_per_list']:.2f} ms per list over "
          f"{p['lists']} articles.")
    if "quality_map" in results:
        print("\n| set | MAP float32 | MAP default | difference |")
        print("|---|---:|---:|---:|")
        for name, q in results["quality_map"].items():
            print(f"| {name} | {q['float32']:.4f} | {q['default']:.4f} | {q['delta']:+.4f} |")


if __name__ == "__main__":
    sys.exit(main())
