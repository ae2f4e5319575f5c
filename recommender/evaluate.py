"""Quality against labelled data: this engine and two lexical baselines
(TF-IDF cosine and Okapi BM25), ranked to the same depth in the same run."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recommender.articles import Article, read_articles
from recommender.config import Settings
from recommender.lexical import TfidfModel
from recommender.text import document_text, tokenize

RELATED_METRICS = ("map", "ndcg@10", "p@5", "r-precision")
SEARCH_METRICS = ("map", "ndcg@10", "mrr", "recall@100")


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


def story_map(ranked: Sequence[str], relevant: set[str], story_of: dict[str, int], own_story: int) -> float:
    """Average precision counting stories, not copies: the ranking keeps the
    first copy of each story, a story is relevant when any copy is, and the
    query's own story (its copies) is neither. Story dedup is then neither
    rewarded nor charged for hiding second copies of one story."""
    seen: set[int] = {own_story}
    stories: list[str] = []
    for article in ranked:
        story = story_of.get(article)
        if story is None or story in seen:
            continue
        seen.add(story)
        stories.append(str(story))
    wanted = {str(story_of[a]) for a in relevant if a in story_of and story_of[a] != own_story}
    return average_precision(stories, wanted)


def related_metrics(ranked: Sequence[str], relevant: set[str]) -> dict[str, float]:
    return {
        "map": average_precision(ranked, relevant),
        "ndcg@10": ndcg_at(ranked, relevant, 10),
        "p@5": precision_at(ranked, relevant, 5),
        "r-precision": r_precision(ranked, relevant),
    }


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


class Bm25:
    """Okapi BM25 (k1=1.2, b=0.75) over the same tokens as the TF-IDF model."""

    def __init__(self, texts: Iterable[str], k1: float = 1.2, b: float = 0.75):
        counts = [Counter(tokenize(t)) for t in texts]
        vocabulary: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        for i, c in enumerate(counts):
            for term, tf in c.items():
                rows.append(i)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                tfs.append(tf)
        n = len(counts)
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        tf = np.array(tfs, dtype=np.float64)
        df = np.bincount(cols, minlength=len(vocabulary))
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths[rows] / max(lengths.mean(), 1e-9))
        weights = idf[cols] * tf * (k1 + 1) / (tf + norm)
        self.vocabulary = vocabulary
        self.matrix = sp.csr_matrix((weights, (rows, cols)), shape=(n, len(vocabulary)))

    def scores(self, text: str) -> np.ndarray:
        terms = sorted({self.vocabulary[t] for t in tokenize(text) if t in self.vocabulary})
        if not terms:
            return np.zeros(self.matrix.shape[0])
        return np.asarray(self.matrix[:, terms].sum(axis=1)).ravel()


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


def _prepare_engine(settings: Settings, articles: list[Article], progress: bool):
    """Index the dataset into its own data folder (cached vectors are reused)."""
    from recommender.embed import SentenceTransformerEmbedder, model_id_for
    from recommender.index import set_query_threads
    from recommender.pipeline import reindex
    from recommender.store import Store
    from recommender.version import IndexVersion

    store = Store.open(settings.store_path)
    wanted = {a.id for a in articles}
    store.delete([s.article.id for s in store.iter_articles() if s.article.id not in wanted])
    store.upsert(articles)
    embedders: list = []

    def load():
        if not embedders:
            embedders.append(
                SentenceTransformerEmbedder.from_settings(settings)
            )
        return embedders[0]

    reindex(settings, store, load, progress=progress)
    set_query_threads(1)
    version = IndexVersion.load(settings.index_root, model_id=model_id_for(settings.model))
    id_of = {s.doc_id: s.article.id for s in store.iter_articles()}
    row_of = {id_of[int(d)]: r for r, d in enumerate(version.doc_ids)}
    return store, version, id_of, row_of, load


def _timed(systems: dict[str, Callable[[], dict[str, float]]]) -> tuple[dict, dict]:
    results, seconds = {}, {}
    for name, run in systems.items():
        start = time.perf_counter()
        results[name] = run()
        seconds[name] = round(time.perf_counter() - start, 2)
    return results, seconds


def ablation_variants(settings: Settings, task: str) -> dict[str, Settings]:
    """One feature switched against the configured engine at a time."""
    weight = "related_semantic_weight" if task == "related" else "search_semantic_weight"
    variants = {
        "dedup off" if settings.dedup else "dedup on": settings.replace(dedup=not settings.dedup),
        "recency off" if settings.half_life_days else "recency on (half-life 30 days)":
            settings.replace(half_life_days=0.0 if settings.half_life_days else 30.0),
        "vectors only (no hybrid)": settings.replace(**{weight: 1.0}),
        "keywords only": settings.replace(**{weight: 0.0}),
    }
    if task == "related":
        variants["MMR off" if settings.mmr_lambda < 1 else "MMR on (lambda 0.7)"] = settings.replace(
            mmr_lambda=1.0 if settings.mmr_lambda < 1 else 0.7
        )
    return variants


def eval_policy(version, settings: Settings):
    """The engine's policy for an evaluation: dedup, diversity and recency as
    configured. Recency counts age from the newest article of the dataset
    (the development sets are historical)."""
    from recommender.related import Policy, recency_adjust

    adjust = None
    if settings.half_life_days:
        dated = version.published_days[~np.isnan(version.published_days)]
        if len(dated):
            adjust = recency_adjust(version, settings.half_life_days, settings.recency_weight, float(dated.max()))
    return Policy(adjust=adjust, mmr_lambda=settings.mmr_lambda, dedup=settings.dedup)


def evaluate_related(
    settings: Settings, dataset: Path, *, depth: int | None = None, progress: bool = True, ablation: bool = False
) -> dict:
    from tqdm.auto import tqdm

    from recommender.related import related_to_row

    articles, groups = load_dataset(dataset)
    ids = [a.id for a in articles]
    members: dict[str, set[str]] = {}
    for a in articles:
        if groups[a.id] is not None:
            members.setdefault(str(groups[a.id]), set()).add(a.id)
    queries = [i for i, a in enumerate(articles) if groups[a.id] is not None and len(members[str(groups[a.id])]) > 1]
    depth = min(depth or len(articles) - 1, len(articles) - 1)
    texts = [document_text(a.title, a.body) for a in articles]

    def relevant(i: int) -> set[str]:
        return members[str(groups[ids[i]])] - {ids[i]}

    store, version, id_of, row_of, _ = _prepare_engine(settings, articles, progress)

    story_of = {id_of[int(d)]: int(version.story_ids[r]) for r, d in enumerate(version.doc_ids)}

    def engine(variant: Settings = settings) -> dict[str, float]:
        rows = []
        policy = eval_policy(version, variant)
        for i in tqdm(queries, desc="related", unit="query", disable=not progress):
            hits = related_to_row(version, row_of[ids[i]], depth, variant, policy=policy)
            ranked = [id_of[h.doc_id] for h in hits]
            row = related_metrics(ranked, relevant(i))
            row["map, one per story"] = story_map(ranked, relevant(i), story_of, story_of[ids[i]])
            rows.append(row)
        return _mean(rows, (*RELATED_METRICS, "map, one per story"))

    def tfidf() -> dict[str, float]:
        model = TfidfModel.build(texts)
        return _mean(
            [related_metrics(_ranking(model.scores(model.matrix[i]), ids, depth, i), relevant(i)) for i in queries],
            RELATED_METRICS,
        )

    def bm25() -> dict[str, float]:
        model = Bm25(texts)
        return _mean([related_metrics(_ranking(model.scores(texts[i]), ids, depth, i), relevant(i)) for i in queries], RELATED_METRICS)

    runs = {"recommender": engine, "tfidf": tfidf, "bm25": bm25}
    if ablation:
        runs.update({f"recommender, {name}": (lambda v=v: engine(v)) for name, v in ablation_variants(settings, "related").items()})
    systems, seconds = _timed(runs)
    store.close()
    return _report(dataset, "related", settings, len(articles), len(queries), depth, systems, seconds)


def evaluate_search(
    settings: Settings, dataset: Path, queries_path: Path, *, depth: int | None = None, progress: bool = True,
    ablation: bool = False,
) -> dict:
    from tqdm.auto import tqdm

    from recommender.search import fts_query, search

    articles, _ = load_dataset(dataset)
    ids = [a.id for a in articles]
    known = set(ids)
    queries = []
    with queries_path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            relevant = set(record.get("relevant_ids") or []) & known
            if not record.get("query") or not relevant:
                raise ValueError(f"{queries_path}:{line_no}: needs `query` and `relevant_ids` naming dataset articles")
            queries.append((record["query"], relevant))
    depth = min(depth or len(articles), len(articles))
    texts = [document_text(a.title, a.body) for a in articles]

    store, version, id_of, _, load_embedder = _prepare_engine(settings, articles, progress)

    vectors: dict[str, np.ndarray] = {}

    def engine(variant: Settings = settings) -> dict[str, float]:
        embedder = load_embedder()
        rows = []
        policy = eval_policy(version, variant)
        for query, relevant in tqdm(queries, desc="search", unit="query", disable=not progress):
            if query not in vectors:
                vectors[query] = embedder.embed([query])[0]
            hits = search(version, vectors[query], query, depth, variant, policy=policy)
            rows.append(search_metrics([id_of[h.doc_id] for h in hits], relevant))
        return _mean(rows, SEARCH_METRICS)

    def tfidf() -> dict[str, float]:
        model = TfidfModel.build(texts)
        return _mean(
            [search_metrics(_ranking(model.scores(model.transform([q])), ids, depth), rel) for q, rel in queries],
            SEARCH_METRICS,
        )

    def bm25() -> dict[str, float]:
        model = Bm25(texts)
        return _mean([search_metrics(_ranking(model.scores(q), ids, depth), rel) for q, rel in queries], SEARCH_METRICS)

    def bm25_stemmed() -> dict[str, float]:
        rows = []
        for query, relevant in queries:
            hits = store.keyword_search(fts_query(query), depth)
            rows.append(search_metrics([id_of[d] for d, _ in hits], relevant))
        return _mean(rows, SEARCH_METRICS)

    runs = {"recommender": engine, "tfidf": tfidf, "bm25": bm25, "bm25_fts5_porter": bm25_stemmed}
    if ablation:
        runs.update({f"recommender, {name}": (lambda v=v: engine(v)) for name, v in ablation_variants(settings, "search").items()})
    systems, seconds = _timed(runs)
    store.close()
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
                "chunk_words", "max_chunks", "related_semantic_weight", "search_semantic_weight", "candidates",
                "duplicate_threshold", "lexical_duplicate_threshold", "duplicate_floor", "dedup",
                "half_life_days", "mmr_lambda",
            )
        },
        "systems": systems,
        "seconds": seconds,
    }


def format_table(report: dict) -> str:
    names = RELATED_METRICS if report["task"] == "related" else SEARCH_METRICS
    width = max(len(s) for s in report["systems"]) + 2
    lines = [
        f"{report['task']} on {report['dataset']}: {report['articles']} articles, "
        f"{report['queries']} queries, ranked to depth {report['depth']}",
        "system".ljust(width) + "".join(n.rjust(13) for n in names) + "seconds".rjust(10),
    ]
    best = {n: max(s[n] for s in report["systems"].values()) for n in names}
    for system, metrics in report["systems"].items():
        cells = "".join((f"{metrics[n]:.4f}" + ("*" if metrics[n] == best[n] else " ")).rjust(13) for n in names)
        lines.append(system.ljust(width) + cells + f"{report['seconds'][system]:10.1f}")
    lines.append("* best in column")
    return "\n".join(lines)
