"""The measures of quality, and copies decided from the text alone.

Stories, not copies, are scored. Copies are defined here from the text
alone, independently of the engine's own dedup (``recommender.copies``):
two bodies are copies when their word 5-gram sets have a Jaccard of at least
0.5, or one holds at least 0.8 of the other's 5-grams; 5-grams in more than
50 bodies are ignored; clusters are the transitive closure. Story MAP then
counts the first returned member of each relevant cluster as a hit, later
members and copies of the query as misses; dup@10 is the share of lists
whose top 10 shows one text twice (or a copy of the query)."""


from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from recommender.copies import Components

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
    components = Components(len(bodies))
    for (a, b), shared in overlap.items():
        size_a, size_b = len(kept[a]), len(kept[b])
        if shared / (size_a + size_b - shared) >= COPY_JACCARD or shared / min(size_a, size_b) >= COPY_CONTAINMENT:
            components.union(a, b)
    return [components.find(i) for i in range(len(bodies))]


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


def mean_metrics(rows: list[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {name: round(float(np.mean([r[name] for r in rows])), 4) if rows else 0.0 for name in names}
