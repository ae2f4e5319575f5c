from __future__ import annotations

import math

import pytest

from recommender.evaluation import baselines, runs
from recommender.evaluation.metrics import average_precision, ndcg_at, r_precision, reciprocal_rank
from tests.helpers import write_jsonl


def test_metrics_on_hand_computed_cases():
    ranked = ["a", "x", "b", "y", "c"]
    relevant = {"a", "b", "c", "d"}
    assert average_precision(ranked, relevant) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert r_precision(ranked, relevant) == 0.5
    assert reciprocal_rank(["x", "a"], relevant) == 0.5
    ideal = sum(1 / math.log2(i + 1) for i in range(1, 5))
    assert ndcg_at(ranked, relevant, 10) == pytest.approx((1 + 1 / 2 + 1 / math.log2(6)) / ideal)
    assert average_precision(["x"], {"a"}) == 0.0


def test_bm25_prefers_rare_matching_terms():
    model = baselines.plain_bm25(["harbour bridge cost", "bridge club", "football club goal"])
    scores = model.scores("harbour bridge")
    assert scores.argmax() == 0 and scores[2] == 0


def test_fts5_baseline_stems_and_weighs_the_title():
    fts = baselines.Fts5Bm25([(7, "Talks", "Ilham Aliev met the mediators"), (9, "harbour costs", "bridge"),
                             (11, "bridge", "harbour costs")])
    assert [d for d, _ in fts.search('"aliev"', 10)] == [7]
    assert [d for d, _ in fts.search('"mediator"', 10)] == [7]  # porter stemming
    assert [d for d, _ in fts.search('"bridge"', 10)] == [11, 9]  # the same words: the title weighs more
    assert fts.search('"ferry"', 10) == [] and len(fts.search('"bridge" OR "aliev"', 1)) == 1


def test_eval_related_and_search_report_shape(tmp_path, corpus, settings):
    dataset = write_jsonl(tmp_path / "set.jsonl", corpus)
    report = runs.evaluate_related(settings, dataset)
    assert report["dataset"] == "set.jsonl" and report["queries"] == 30 and report["depth"] == 29
    assert set(report["systems"]) == {"recommender", "tfidf", "bm25"}
    for metrics in report["systems"].values():
        assert set(metrics) == {"story map", "map", "dup@10", "ndcg@10", "p@5", "shorter than 10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert report["systems"]["recommender"]["story map"] > 0.5  # five clear topics
    assert "recommender" in runs.format_table(report)

    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query": "reservoir wells", "relevant_ids": [r["id"] for r in corpus if r["group"] == "drought"]},
        {"query": "striker penalty", "relevant_ids": [r["id"] for r in corpus if r["group"] == "football"]},
    ])
    report = runs.evaluate_search(settings, dataset, queries)
    assert set(report["systems"]["recommender"]) == {"map", "ndcg@10", "mrr", "recall@100"}
    assert report["systems"]["recommender"]["mrr"] == 1.0
    assert report["systems"]["bm25_fts5_porter"]["mrr"] == 1.0


def test_story_map_counts_the_first_copy_and_charges_the_rest():
    from recommender.evaluation.metrics import shows_copies, story_average_precision

    cluster_of = {"q": 0, "q-copy": 0, "a": 1, "a-copy": 1, "b": 2, "c": 3}
    relevant = {1, 2}  # the query's group holds a, a-copy, b and the query's own copy
    assert story_average_precision(["a", "b", "c"], relevant, cluster_of) == 1.0
    # A second copy, or a copy of the query, takes a slot: it is a miss.
    assert story_average_precision(["a", "a-copy", "b"], relevant, cluster_of) == pytest.approx((1 + 2 / 3) / 2)
    assert story_average_precision(["q-copy", "a", "b"], relevant, cluster_of) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert story_average_precision(["c", "a"], relevant, cluster_of) == pytest.approx((1 / 2) / 2)
    assert not shows_copies(["a", "b", "c"], "q", cluster_of)
    assert shows_copies(["a", "b", "a-copy"], "q", cluster_of)
    assert shows_copies(["q-copy", "b"], "q", cluster_of)
    assert not shows_copies(["b"] + ["c"] * 0 + ["a"] + ["x"] * 0, "q", cluster_of)


def test_copy_clusters_follow_the_text_not_the_subject():
    from recommender.evaluation.metrics import copy_clusters

    report = ("Fire crews were called to the Harbour Road warehouse shortly after midnight on Sunday and "
              "found the building well alight with flames through the roof and smoke across the bay")
    update = ("The site manager said on Monday that nobody had been inside the Harbour Road warehouse when "
              "it caught fire and that the stock had been moved out the week before")
    arson = ("Police are treating the Harbour Road warehouse fire as arson after two men were seen running "
             "from the yard, and they have asked witnesses to come forward")
    clusters = copy_clusters([report, update, arson, report + " Copyright the Ledger.", report[: len(report) // 2]])
    assert clusters == [0, 1, 2, 0, 0]  # follow-ups stay apart; a copy and a truncation join the report
