#!/usr/bin/env python
"""A whole reindex job on every backend, against plain ``SentenceTransformer.encode``, in one run.

    HF_HUB_OFFLINE=1 python scripts/bench_reindex.py --data ../shared/data [--articles 2000] \\
        [--rounds 2] [--backends torch-float32,openvino-int8,...] [--quality] [--out docs/bench-reindex.json]

Each row is a fresh process timed from its start, so loading Python, the
libraries and the model counts on both sides:

* **plain encode, one text per article**: ``SentenceTransformer.encode`` of
  title + body (cut at 256 word pieces), float32, batch 32, 2 torch threads:
  how most tools embed an archive; the baseline;
* **plain encode, the same passages**: the texts our reindex embeds;
* **recommender reindex** on each backend (``RECOMMENDER_BACKEND`` and
  ``RECOMMENDER_PRECISION``; a row ``NAME@K`` also sets ``max_chunks = K``): the whole job (embedding, FAISS, keyword models,
  stories, publish) over articles ingested beforehand (not timed). The
  exports each backend needs are made before, once, and timed apart;
  ``auto`` is timed after its one-time measurement, which is timed apart too.

Rows take turns for ``--rounds`` rounds and each row's median counts. The
script checks its output: every article embedded, the backend the job's
embedding key names, and each backend's vectors of the first ``--check``
passages against plain float32 encode of them (cosine, min and mean; not for
``@K`` rows, which cut articles into fewer passages). ``--quality`` also runs the evaluation
(story MAP on the related sets, MAP on the search sets) on each backend.
The CPU's model and flags are printed and saved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from devsets import DATA, EVALUATED  # noqa: E402

from recommender.config import Settings  # noqa: E402
from recommender.embedders import Choice, EmbedderSpec, candidates, load_embedder  # noqa: E402
from recommender.embedders.base import resolve_model_path  # noqa: E402
from recommender.embedders.choice import choose  # noqa: E402
from recommender.embedders.machine import cpu_info  # noqa: E402
from recommender.passages import chunk_article  # noqa: E402
from recommender.store import SqliteStore  # noqa: E402
from recommender.version import read_current_manifest  # noqa: E402

THREADS = 2
PLAIN = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1], encoding="utf-8"))
model = SentenceTransformer(sys.argv[2], device="cpu")
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
np.save(sys.argv[3], vectors)
"""


def load_rows(path: Path, limit: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def env_for(name: str) -> dict[str, str]:
    """A row's settings: ``backend-precision`` or ``auto``, and ``@K`` for ``max_chunks = K``."""
    name, _, chunks = name.partition("@")
    backend, _, precision = name.partition("-")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "RECOMMENDER_BACKEND": backend,
           "RECOMMENDER_PRECISION": precision or "auto"}
    if chunks:
        env["RECOMMENDER_MAX_CHUNKS"] = chunks
    return env


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env or {**os.environ, "OMP_NUM_THREADS": str(THREADS)}, check=True,
                          capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


def recommender(*args: str) -> list[str]:
    return [sys.executable, "-m", "recommender.cli", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with bbc_news.jsonl")
    parser.add_argument("--articles", type=int, default=2000, help="the first N BBC articles (default: 2,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every row, in turn (default: 2)")
    parser.add_argument("--backends", help="comma-separated backend-precision rows, e.g. torch-float32,"
                        "openvino-int8, or auto (default: every installed candidate, and auto)")
    parser.add_argument("--no-plain-passages", action="store_true",
                        help="leave out the plain encode of the same passages (the slowest row)")
    parser.add_argument("--check", type=int, default=400,
                        help="passages whose vectors are checked against torch float32 (default: 400)")
    parser.add_argument("--quality", action="store_true", help="also evaluate each backend on the development sets")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags']) or 'none of note'}",
          file=sys.stderr, flush=True)
    defaults = Settings.load({}, environ={})
    rows = load_rows(args.data / "bbc_news.jsonl", args.articles)
    n = len(rows)
    passages = [p for r in rows for p in chunk_article(r["title"], r["body"], defaults.chunk_words,
                                                        defaults.max_chunks)]
    names = args.backends.split(",") if args.backends else [
        c.name for c in candidates(Settings.load({"precision": "float32"}, environ={}))
    ] + [c.name for c in candidates(Settings.load({}, environ={})) if c.precision != "float32"] + ["auto"]
    names = list(dict.fromkeys(names))
    model_path = resolve_model_path(defaults.model)
    results: dict = {"articles": n, "passages": len(passages), "threads": THREADS, "cpu": cpu, "rounds": args.rounds,
                     "one_time": {}, "rows": {}}
    print(f"{n} BBC articles, {len(passages)} passages ({len(passages) / n:.2f} per article); rows: "
          f"{', '.join(names)}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-reindex-") as tmp:
        root = Path(tmp)
        articles_file, per_article, same_passages = root / "articles.jsonl", root / "one.json", root / "passages.json"
        articles_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        per_article.write_text(json.dumps([f"{r['title']}. {r['body']}" for r in rows]), encoding="utf-8")
        same_passages.write_text(json.dumps(passages), encoding="utf-8")
        plain = [sys.executable, "-c", PLAIN.format(threads=THREADS)]

        # One-time work, timed apart: the exports, and auto's measurement (once per backend; @K rows share it).
        for name in dict.fromkeys(row.split("@")[0] for row in names):
            settings = Settings.load({"data_dir": root / name}, environ={})
            started = time.perf_counter()
            if name == "auto":
                choice, measured = choose(settings)
                results["one_time"][name] = {"seconds": round(time.perf_counter() - started, 1),
                                             "choice": choice.name, "measured": [vars(m) for m in measured]}
            else:
                load_embedder(EmbedderSpec.of(settings, Choice.parse(name)))
                results["one_time"][name] = {"seconds": round(time.perf_counter() - started, 1)}
            print(f"  one-time {name}: {results['one_time'][name]['seconds']} s", file=sys.stderr, flush=True)

        times: dict[str, list[float]] = {"plain, one text per article": [], "plain, same passages": [],
                                         **{name: [] for name in names}}
        if args.no_plain_passages:
            del times["plain, same passages"]
        reports: dict[str, dict] = {}
        for number in range(args.rounds):
            order = list(times) if number % 2 == 0 else list(reversed(times))
            for row in order:
                if row == "plain, one text per article":
                    seconds, _ = timed([*plain, str(per_article), model_path, str(root / "one.npy")])
                elif row == "plain, same passages":
                    seconds, _ = timed([*plain, str(same_passages), model_path, str(root / "passages.npy")])
                else:
                    data = root / row / f"round-{number}"
                    if data.exists():
                        raise RuntimeError(f"{data} exists")
                    # The exports and the record are the data folder's models/: each round's folder gets them.
                    data.mkdir(parents=True)
                    (data / "models").symlink_to(root / row.split("@")[0] / "models")
                    env = env_for(row)
                    timed(recommender("ingest", str(articles_file), "--data-dir", str(data)), env)  # not timed
                    seconds, out = timed(recommender("reindex", "--json", "--no-progress", "--data-dir", str(data)), env)
                    reports[row] = {**json.loads(out), "data_dir": str(data)}
                times[row].append(seconds)
                print(f"  round {number + 1} {row}: {seconds:.1f} s", file=sys.stderr, flush=True)

        # Plain float32 encode of the first passages, in the order the store holds them (not timed).
        reference = _plain_vectors(model_path, passages[: args.check])
        base = statistics.median(times["plain, one text per article"])
        passages_base = statistics.median(times["plain, same passages"]) if "plain, same passages" in times else None
        for row, taken in times.items():
            seconds = statistics.median(taken)
            entry: dict = {"seconds": [round(t, 2) for t in taken], "median_seconds": round(seconds, 2),
                           "articles_per_second": round(n / seconds, 2),
                           "passages_per_second": round(len(passages) / seconds, 2),
                           "vs_plain_one_text": round(base / seconds, 3),
                           "vs_plain_same_passages": round(passages_base / seconds, 3) if passages_base else None}
            if row in reports:
                report = reports[row]
                key = _key_of(Path(report["data_dir"]))
                backend = key.split("|backend=")[1] if "|backend=" in key else "?"
                precision = key.split("|precision=")[1].split("|")[0] if "|precision=" in key else "?"
                vectors = _passage_vectors(Path(report["data_dir"]), row)[: len(reference)]
                cosine = (vectors * reference).sum(axis=1) if "@" not in row and vectors.shape == reference.shape else None
                entry.update(
                    backend_used=f"{backend}-{precision}", embedded=report["embedded"], failed=len(report["failed"]),
                    all_embedded=report["embedded"] == n and not report["failed"],
                    passages_embedded=report["passages_embedded"],
                    cosine_min=None if cosine is None else round(float(cosine.min()), 5),
                    cosine_mean=None if cosine is None else round(float(cosine.mean()), 5),
                )
                if not entry["all_embedded"] or (row.split("@")[0] not in ("auto", entry["backend_used"])):
                    raise RuntimeError(f"{row}: the job did not embed every article on {row}: {entry}")
            results["rows"][row] = entry

        if args.quality:
            results["quality"] = {row: quality(args.data, root, row) for row in names}

    _print(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _plain_vectors(model_path: str, texts: list[str]) -> np.ndarray:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(model_path, device="cpu")
    return np.asarray(model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True))


def _key_of(data_dir: Path) -> str:
    manifest = read_current_manifest(data_dir / "index")
    assert manifest is not None
    return manifest.embedding_key


def _passage_vectors(data_dir: Path, row: str) -> np.ndarray:
    with SqliteStore.open(data_dir / "store.sqlite") as store:
        return np.concatenate([v for _, v in store.iter_embeddings(_key_of(data_dir))])


def quality(data: Path, root: Path, row: str) -> dict[str, float]:
    """Story MAP (related) and MAP (search) on each development set, on this backend."""
    out = {}
    for dev in EVALUATED:
        assert dev.task is not None
        command = recommender("eval", dev.task, "--dataset", str(dev.path(data)), "--json", "--data-dir",
                              str(root / "quality" / row / f"{dev.file}-{dev.task}"))
        queries = dev.queries_path(data)
        if queries:
            command += ["--queries", str(queries)]
        _, stdout = timed(command, env_for(row))
        system = json.loads(stdout)["systems"]["recommender"]
        name = f"{dev.name} {dev.task}"
        out[name] = system.get("story map", system["map"])
        print(f"  {row:18s} {name:20s} {out[name]:.4f}", file=sys.stderr, flush=True)
    return out


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _print(results: dict) -> None:
    cpu = results["cpu"]
    print(f"{results['articles']} BBC articles ({results['passages']} passages), {results['threads']} threads, "
          f"median of {results['rounds']} rounds; CPU {cpu['model']} ({' '.join(cpu['flags'])})\n")
    print("| run | seconds | articles/s | passages/s | vs plain, one text per article | vs plain, same passages "
          "| backend used | cosine to torch float32 (min / mean) |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for name, r in results["rows"].items():
        cos = f"{r['cosine_min']:.4f} / {r['cosine_mean']:.5f}" if r.get("cosine_min") is not None else ""
        print(f"| {name} | {r['median_seconds']:.1f} | {r['articles_per_second']:.1f} | {r['passages_per_second']:.1f} "
              f"| {r['vs_plain_one_text']:.2f}x | {_ratio(r['vs_plain_same_passages'])} | {r.get('backend_used', '')} "
              f"| {cos} |")
    print("\nOne-time work (not in the rows): " + ", ".join(
        f"{name} {v['seconds']} s" for name, v in results["one_time"].items()))
    if "auto" in results["one_time"]:
        print(f"auto chose {results['one_time']['auto']['choice']}; its measurement:")
        for m in results["one_time"]["auto"]["measured"]:
            print(f"  {m['choice']}: {m['passages_per_second']} passages/s, cosine min {m['min_cosine']} "
                  f"mean {m['mean_cosine']}{'' if m['passed'] else ' (refused)'}")
    if "quality" in results:
        sets = list(next(iter(results["quality"].values())))
        print("\n| backend | " + " | ".join(sets) + " |")
        print("|---|" + "---:|" * len(sets))
        for row, q in results["quality"].items():
            print(f"| {row} | " + " | ".join(f"{q[s]:.4f}" for s in sets) + " |")


if __name__ == "__main__":
    sys.exit(main())
