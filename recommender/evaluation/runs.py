"""Quality against labelled data: this engine, as a widget gets its lists
(the served defaults, through ``Engine``), and lexical baselines (TF-IDF
cosine, Okapi BM25, SQLite's FTS5), ranked to the same depth in the same
run. Stories, not copies, are scored (``recommender.evaluation.metrics``)."""


from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from recommender.articles import Article, read_articles
from recommender.config import Settings
from recommender.embedders import LazyEmbedder, model_id_for, resolve
from recommender.evaluation.baselines import Fts5Bm25, fts_query, plain_bm25, ranking
from recommender.evaluation.metrics import (
    DEPTH,
    RELATED_METRICS,
    SEARCH_METRICS,
    copy_clusters,
    mean_metrics,
    related_metrics,
    search_metrics,
)
from recommender.lexical import TfidfModel
from recommender.pipeline import reindex
from recommender.service import Engine
from recommender.store import open_store
from recommender.text import document_text


def load_dataset(path: Path) -> tuple[list[Article], dict[str, str | None]]:
    articles: list[Article] = []
    groups: dict[str, str | None] = {}
    for record in read_articles(path):
        if isinstance(record, Article):
            articles.append(record)
            groups[record.id] = record.metadata.get("group")
    if not articles:
        raise ValueError(f"{path} holds no valid articles")
    return articles, groups


def prepare_engine(settings: Settings, articles: list[Article], on_progress: Callable[[int, int], None] | None = None):
    """Index the dataset into its own data folder (cached vectors are reused)
    and open it as the server does: the lists are scored as a widget gets them."""
    embedder = LazyEmbedder(resolve(settings))
    with open_store(settings) as store:
        wanted = {a.id for a in articles}
        store.delete([s.article.id for s in store.iter_articles() if s.article.id not in wanted])
        store.upsert(articles)
        reindex(settings, store, embedder, on_progress=on_progress)
    return Engine.open(settings, embedder)


def _counted(items: Sequence, on_progress: Callable[[int, int], None] | None) -> Iterable:
    """``items``, calling ``on_progress(done, total)`` before the first and after each."""
    if on_progress:
        on_progress(0, len(items))
    for done, item in enumerate(items, 1):
        yield item
        if on_progress:
            on_progress(done, len(items))


def _variant(engine, settings: Settings):
    """The engine's index and model under other settings (an ablation)."""
    return Engine(settings, engine.live, engine.embedder)


def _run(engine, baselines: dict, served: Callable, settings: Settings, task: str, ablation: bool):
    """The engine, then the baselines, then (with ``ablation``) the engine
    under each variant of its settings, timed; the engine is closed after."""
    runs = {"recommender": served(engine), **baselines}
    if ablation:
        runs.update({f"recommender, {name}": served(_variant(engine, v))
                     for name, v in ablation_variants(settings, task).items()})
    try:
        return _timed(runs)
    finally:
        engine.close()


def _timed(systems: dict[str, Callable[[], dict[str, float]]]) -> tuple[dict, dict]:
    results, seconds = {}, {}
    for name, run in systems.items():
        start = time.perf_counter()
        results[name] = run()
        seconds[name] = round(time.perf_counter() - start, 2)
    return results, seconds


def ablation_variants(settings: Settings, task: str) -> dict[str, Settings]:
    """One served default switched at a time. (Each ranking signal removed in
    turn needs a model trained without it: scripts/train_ranker.py --ablation.)"""
    variants = {
        "dedup off" if settings.dedup else "dedup on": settings.replace(dedup=not settings.dedup),
        "recency off" if settings.half_life_days else "recency on (half-life 30 days)":
            settings.replace(half_life_days=0.0 if settings.half_life_days else 30.0),
    }
    if task == "related":
        variants["floor off" if settings.min_confidence else "floor on (0.5)"] = settings.replace(
            min_confidence=0.0 if settings.min_confidence else 0.5)
        variants["MMR off" if settings.mmr_lambda < 1 else "MMR on (lambda 0.7)"] = settings.replace(
            mmr_lambda=1.0 if settings.mmr_lambda < 1 else 0.7
        )
    else:
        variants["vectors only (no hybrid)"] = settings.replace(search_semantic_weight=1.0)
        variants["keywords only"] = settings.replace(search_semantic_weight=0.0)
    return variants


def related_queries(articles: list[Article], groups: dict[str, str | None]):
    """Per query article: its relevant articles (same group), its relevant
    copy clusters (the group's, less its own) and every article's cluster."""
    clusters = copy_clusters([a.body for a in articles])
    cluster_of = {a.id: c for a, c in zip(articles, clusters)}
    members: dict[str, set[str]] = {}
    for a in articles:
        if groups[a.id] is not None:
            members.setdefault(str(groups[a.id]), set()).add(a.id)
    queries = []
    for a in articles:
        group = groups[a.id]
        if group is None or len(members[str(group)]) < 2:
            continue
        relevant = members[str(group)] - {a.id}
        relevant_clusters = {cluster_of[r] for r in relevant} - {cluster_of[a.id]}
        if relevant_clusters:
            queries.append((a.id, relevant, relevant_clusters))
    return queries, cluster_of


def evaluate_related(
    settings: Settings, dataset: Path, *, depth: int | None = None,
    on_progress: Callable[[int, int], None] | None = None, ablation: bool = False, lists_out: Path | None = None,
) -> dict:
    """``on_progress(done, total)``: the embedding, then each system's queries, each from 0."""
    articles, groups = load_dataset(dataset)
    ids = [a.id for a in articles]
    index_of = {a: i for i, a in enumerate(ids)}
    depth = min(depth or DEPTH, len(articles) - 1)
    queries, cluster_of = related_queries(articles, groups)
    texts = [document_text(a.title, a.body) for a in articles]
    engine = prepare_engine(settings, articles, on_progress)

    def score(ranking: Callable[[str], list[str]]) -> dict[str, float]:
        rows, lengths = [], []
        for query, relevant, clusters in _counted(queries, on_progress):
            ranked = ranking(query)
            lengths.append(len(ranked))
            rows.append(related_metrics(ranked, query, relevant, clusters, cluster_of, depth))
        result = mean_metrics(rows, RELATED_METRICS)
        result["shorter than 10"] = round(float(np.mean([n < min(10, depth) for n in lengths])), 4)
        return result

    lists: dict[str, list[str]] = {}

    def served(variant) -> Callable[[], dict[str, float]]:
        def ranking(query: str) -> list[str]:
            ids = [item.id for item in variant.related(query, depth)]
            if variant is engine:
                lists[query] = ids
            return ids

        return lambda: score(ranking)


    def tfidf() -> dict[str, float]:
        model = TfidfModel.build(texts)
        return score(lambda q: ranking(model.scores(model.matrix[index_of[q]]), ids, depth, index_of[q]))

    def bm25() -> dict[str, float]:
        model = plain_bm25(texts)
        return score(lambda q: ranking(model.scores(texts[index_of[q]]), ids, depth, index_of[q]))

    systems, seconds = _run(engine, {"tfidf": tfidf, "bm25": bm25}, served, settings, "related", ablation)
    if lists_out is not None:
        lists_out.write_text("".join(json.dumps({"id": q, "items": items}) + "\n" for q, items in lists.items()),
                             encoding="utf-8")
    return _report(dataset, "related", settings, len(articles), len(queries), depth, systems, seconds)


def load_queries(queries_path: Path, known: set[str]) -> list[tuple[str, set[str], str | None]]:
    """(query, relevant ids, source id) per line; the source article (whose
    headline a query is) is left out of every ranking before scoring."""
    queries = []
    with queries_path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            relevant = set(record.get("relevant_ids") or []) & known
            if not record.get("query") or not relevant:
                raise ValueError(f"{queries_path}:{line_no}: needs `query` and `relevant_ids` naming dataset articles")
            queries.append((record["query"], relevant, record.get("source_id")))
    return queries


def evaluate_search(
    settings: Settings, dataset: Path, queries_path: Path, *, depth: int | None = None,
    on_progress: Callable[[int, int], None] | None = None, ablation: bool = False,
) -> dict:
    """``on_progress(done, total)``: the embedding, then each system's queries, each from 0."""

    articles, _ = load_dataset(dataset)
    ids = [a.id for a in articles]
    queries = load_queries(queries_path, set(ids))
    depth = min(depth or DEPTH, len(articles))
    texts = [document_text(a.title, a.body) for a in articles]
    engine = prepare_engine(settings, articles, on_progress)
    id_of = {s.doc_id: s.article.id for s in engine.stores.get().iter_articles()}

    def score(ranking: Callable[[str, int], list[str]]) -> dict[str, float]:
        rows = []
        for query, relevant, source in _counted(queries, on_progress):
            ranked = [i for i in ranking(query, depth + 1) if i != source][:depth]
            rows.append(search_metrics(ranked, relevant))
        return mean_metrics(rows, SEARCH_METRICS)

    def served(variant) -> Callable[[], dict[str, float]]:
        return lambda: score(lambda q, n: [item.id for item in variant.search(q, n)])

    def tfidf() -> dict[str, float]:
        model = TfidfModel.build(texts)
        return score(lambda q, n: ranking(model.scores(model.transform([q])), ids, n))

    def bm25() -> dict[str, float]:
        model = plain_bm25(texts)
        return score(lambda q, n: ranking(model.scores(q), ids, n))

    def bm25_stemmed() -> dict[str, float]:
        fts = Fts5Bm25((s.doc_id, s.article.title, s.article.body) for s in engine.stores.get().iter_articles())
        return score(lambda q, n: [id_of[d] for d, _ in fts.search(fts_query(q), n)])

    baselines = {"tfidf": tfidf, "bm25": bm25, "bm25_fts5_porter": bm25_stemmed}
    systems, seconds = _run(engine, baselines, served, settings, "search", ablation)
    return _report(dataset, "search", settings, len(articles), len(queries), depth, systems, seconds)


def _report(dataset, task, settings, n_articles, n_queries, depth, systems, seconds) -> dict:
    return {
        "dataset": Path(dataset).name,
        "task": task,
        "articles": n_articles,
        "queries": n_queries,
        "depth": depth,
        "model": model_id_for(settings.model),
        "settings": {
            name: getattr(settings, name)
            for name in (
                "chunk_words", "max_chunks", "search_semantic_weight", "candidates", "dedup", "min_confidence",
                "fallback", "half_life_days", "mmr_lambda",
            )
        },
        "systems": systems,
        "seconds": seconds,
    }


def format_table(report: dict) -> str:
    names = RELATED_METRICS if report["task"] == "related" else SEARCH_METRICS
    lower_is_better = {"dup@10"}
    width = max(len(s) for s in report["systems"]) + 2
    lines = [
        f"{report['task']} on {report['dataset']}: {report['articles']} articles, "
        f"{report['queries']} queries, ranked to depth {report['depth']}",
        "system".ljust(width) + "".join(n.rjust(13) for n in names) + "seconds".rjust(10),
    ]
    best = {n: (min if n in lower_is_better else max)(s[n] for s in report["systems"].values()) for n in names}
    for system, metrics in report["systems"].items():
        cells = "".join((f"{metrics[n]:.4f}" + ("*" if metrics[n] == best[n] else " ")).rjust(13) for n in names)
        lines.append(system.ljust(width) + cells + f"{report['seconds'][system]:10.1f}")
    lines.append("* best in column")
    return "\n".join(lines)
