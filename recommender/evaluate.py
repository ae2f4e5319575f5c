"""Quality against labelled data: this engine, as a widget gets its lists,
and lexical baselines (TF-IDF cosine, Okapi BM25), ranked to the same depth
in the same run.

Stories, not copies, are scored. Copies are defined here from the text
alone, independently of the engine's own dedup (``recommender.copies``):
two bodies are copies when their word 5-gram sets have a Jaccard of at least
0.5, or one holds at least 0.8 of the other's 5-grams; 5-grams in more than
50 bodies are ignored; clusters are the transitive closure. Story MAP then
counts the first returned member of each relevant cluster as a hit, later
members and copies of the query as misses; dup@10 is the share of lists
whose top 10 shows one text twice (or a copy of the query)."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recommender.articles import Article, read_articles
from recommender.config import Settings
from recommender.lexical import Bm25Model, TfidfModel
from recommender.text import document_text, tokenize

RELATED_METRICS = ("story map", "map", "dup@10", "ndcg@10", "p@5")
SEARCH_METRICS = ("map", "ndcg@10", "mrr", "recall@100")
DEPTH = 100
"""Lists are scored to 100 items: the most a widget may ask for (k <= 100)."""
COPY_NGRAM = 5
COPY_JACCARD = 0.5
COPY_CONTAINMENT = 0.8
COPY_BOILERPLATE = 50


# -- copies, from the text alone ----------------------------------------------


def copy_clusters(bodies: Sequence[str]) -> list[int]:
    """The copy cluster of each body (the lowest index in it), by the rule in
    this module's docstring: exact 5-gram sets, no hashing, no sampling."""
    grams = []
    for body in bodies:
        words = re.findall(r"\w+", body.lower())
        grams.append(set(zip(*(words[i:] for i in range(COPY_NGRAM)))))
    df = Counter(g for s in grams for g in s)
    kept = [{g for g in s if df[g] <= COPY_BOILERPLATE} for s in grams]
    postings: dict[tuple, list[int]] = {}
    for i, s in enumerate(kept):
        for g in s:
            if df[g] > 1:
                postings.setdefault(g, []).append(i)
    overlap: Counter[tuple[int, int]] = Counter()
    for docs in postings.values():
        for a in range(len(docs)):
            for b in range(a + 1, len(docs)):
                overlap[docs[a], docs[b]] += 1
    parent = list(range(len(bodies)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), shared in overlap.items():
        size_a, size_b = len(kept[a]), len(kept[b])
        if shared / (size_a + size_b - shared) >= COPY_JACCARD or shared / min(size_a, size_b) >= COPY_CONTAINMENT:
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(len(bodies))]


# -- metrics ------------------------------------------------------------------


def average_precision(ranked: Sequence[str], relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for i, item in enumerate(ranked, 1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant) if relevant else 0.0


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal if ideal else 0.0


def precision_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / k


def r_precision(ranked: Sequence[str], relevant: set[str]) -> float:
    r = len(relevant)
    return sum(1 for item in ranked[:r] if item in relevant) / r if r else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    return next((1.0 / i for i, item in enumerate(ranked, 1) if item in relevant), 0.0)


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant) if relevant else 0.0


def story_average_precision(ranked: Sequence[Hashable], relevant_clusters: set[int], cluster_of: Mapping[Any, int],
                            depth: int = DEPTH) -> float:
    """Average precision over stories: the first returned member of a relevant
    cluster is a hit; later members, copies of the query and the rest are
    misses. Divided by min(relevant clusters, depth), the most a list of
    ``depth`` items can find."""
    seen: set[int] = set()
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:depth], 1):
        cluster = cluster_of[item]
        if cluster in relevant_clusters and cluster not in seen:
            seen.add(cluster)
            hits += 1
            total += hits / i
    return total / min(len(relevant_clusters), depth) if relevant_clusters else 0.0


def shows_copies(ranked: Sequence[str], query: str, cluster_of: dict[str, int], k: int = 10) -> bool:
    """Whether the top k shows one text twice, or a copy of the query article."""
    clusters = [cluster_of[item] for item in ranked[:k]]
    return len(set(clusters)) < len(clusters) or cluster_of[query] in clusters


def related_metrics(ranked: Sequence[str], query: str, relevant: set[str], relevant_clusters: set[int],
                    cluster_of: dict[str, int], depth: int = DEPTH) -> dict[str, float]:
    """Story MAP (the headline), raw MAP (every group member counts, copies
    too), dup@10, nDCG@10 and P@5 of one list."""
    return {
        "story map": story_average_precision(ranked, relevant_clusters, cluster_of, depth),
        "map": average_precision_at(ranked, relevant, depth),
        "dup@10": float(shows_copies(ranked, query, cluster_of)),
        "ndcg@10": ndcg_at(ranked, relevant, 10),
        "p@5": precision_at(ranked, relevant, 5),
    }


def average_precision_at(ranked: Sequence[str], relevant: set[str], depth: int = DEPTH) -> float:
    """Average precision of the first ``depth`` items, divided by min(relevant, depth)."""
    if not relevant:
        return 0.0
    return average_precision(ranked[:depth], relevant) * len(relevant) / min(len(relevant), depth)


def search_metrics(ranked: Sequence[str], relevant: set[str]) -> dict[str, float]:
    return {
        "map": average_precision(ranked, relevant),
        "ndcg@10": ndcg_at(ranked, relevant, 10),
        "mrr": reciprocal_rank(ranked, relevant),
        "recall@100": recall_at(ranked, relevant, 100),
    }


def _mean(rows: list[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {name: round(float(np.mean([r[name] for r in rows])), 4) if rows else 0.0 for name in names}


# -- baselines ----------------------------------------------------------------


def plain_bm25(texts: Iterable[str]) -> Bm25Model:
    """The BM25 baseline: Okapi BM25 (k1=1.2, b=0.75) over the same tokens
    as the TF-IDF model, unstemmed (the served search stems)."""
    return Bm25Model.from_counts([Counter(tokenize(t)) for t in texts], stem=False)


FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"


class Fts5Bm25:
    """The FTS5 baseline: SQLite's BM25 with Porter stemming, the title
    weighed 2 and the body 1, over an in-memory full-text table of the given
    articles (the store keeps none: it cost every upsert). ``rows`` are the
    keys search returns (the store's doc_ids, whose order breaks ties)."""

    def __init__(self, rows: Iterable[tuple[int, str, str]]):
        self.connection = sqlite3.connect(":memory:")
        self.connection.execute(f"CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='{FTS5_TOKENIZER}')")
        self.connection.executemany("INSERT INTO docs(rowid, title, body) VALUES (?, ?, ?)", rows)

    def search(self, match: str, limit: int) -> list[tuple[int, float]]:
        """(key, BM25 score) pairs, best first; higher is better. ``match`` is an FTS5 query."""
        sql = "SELECT rowid, -bm25(docs, 2.0, 1.0) AS score FROM docs WHERE docs MATCH ? ORDER BY score DESC LIMIT ?"
        return [(int(r), float(s)) for r, s in self.connection.execute(sql, (match, int(limit)))]


def _ranking(scores: np.ndarray, ids: Sequence[str], depth: int, exclude: int | None = None) -> list[str]:
    scores = scores.astype(np.float64, copy=True)
    if exclude is not None:
        scores[exclude] = -np.inf
    top = np.argsort(-scores, kind="stable")[: depth + (exclude is not None)]
    return [ids[i] for i in top if i != exclude][:depth]


# -- runs ---------------------------------------------------------------------


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


def _prepare_engine(settings: Settings, articles: list[Article], on_progress: Callable[[int, int], None] | None = None):
    """Index the dataset into its own data folder (cached vectors are reused)
    and open it as the server does: the lists are scored as a widget gets them."""
    from recommender.embed import LazyEmbedder, load_embedder
    from recommender.pipeline import reindex
    from recommender.service import Engine
    from recommender.store import Store

    with Store.open(settings.store_path) as store:
        wanted = {a.id for a in articles}
        store.delete([s.article.id for s in store.iter_articles() if s.article.id not in wanted])
        store.upsert(articles)
        embedder = LazyEmbedder(partial(load_embedder, settings))
        reindex(settings, store, lambda: embedder, on_progress=on_progress)
    return Engine.open(settings, embedder.get)


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
    from recommender.service import Engine

    return Engine(settings, engine.live, engine.embedder.get)


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
    engine = _prepare_engine(settings, articles, on_progress)

    def score(ranking: Callable[[str], list[str]]) -> dict[str, float]:
        rows, lengths = [], []
        for query, relevant, clusters in _counted(queries, on_progress):
            ranked = ranking(query)
            lengths.append(len(ranked))
            rows.append(related_metrics(ranked, query, relevant, clusters, cluster_of, depth))
        result = _mean(rows, RELATED_METRICS)
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
        return score(lambda q: _ranking(model.scores(model.matrix[index_of[q]]), ids, depth, index_of[q]))

    def bm25() -> dict[str, float]:
        model = plain_bm25(texts)
        return score(lambda q: _ranking(model.scores(texts[index_of[q]]), ids, depth, index_of[q]))

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
    from recommender.rank.search import fts_query

    articles, _ = load_dataset(dataset)
    ids = [a.id for a in articles]
    queries = load_queries(queries_path, set(ids))
    depth = min(depth or DEPTH, len(articles))
    texts = [document_text(a.title, a.body) for a in articles]
    engine = _prepare_engine(settings, articles, on_progress)
    id_of = {s.doc_id: s.article.id for s in engine.stores.get().iter_articles()}

    def score(ranking: Callable[[str, int], list[str]]) -> dict[str, float]:
        rows = []
        for query, relevant, source in _counted(queries, on_progress):
            ranked = [i for i in ranking(query, depth + 1) if i != source][:depth]
            rows.append(search_metrics(ranked, relevant))
        return _mean(rows, SEARCH_METRICS)

    def served(variant) -> Callable[[], dict[str, float]]:
        return lambda: score(lambda q, n: [item.id for item in variant.search(q, n)])

    def tfidf() -> dict[str, float]:
        model = TfidfModel.build(texts)
        return score(lambda q, n: _ranking(model.scores(model.transform([q])), ids, n))

    def bm25() -> dict[str, float]:
        model = plain_bm25(texts)
        return score(lambda q, n: _ranking(model.scores(q), ids, n))

    def bm25_stemmed() -> dict[str, float]:
        fts = Fts5Bm25((s.doc_id, s.article.title, s.article.body) for s in engine.stores.get().iter_articles())
        return score(lambda q, n: [id_of[d] for d, _ in fts.search(fts_query(q), n)])

    baselines = {"tfidf": tfidf, "bm25": bm25, "bm25_fts5_porter": bm25_stemmed}
    systems, seconds = _run(engine, baselines, served, settings, "search", ablation)
    return _report(dataset, "search", settings, len(articles), len(queries), depth, systems, seconds)


def _report(dataset, task, settings, n_articles, n_queries, depth, systems, seconds) -> dict:
    from recommender.embed import model_id_for

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
