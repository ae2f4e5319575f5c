from __future__ import annotations

import math

import pytest

from recommender import evaluate
from recommender.evaluate import Bm25, average_precision, ndcg_at, r_precision, reciprocal_rank
from tests.conftest import write_jsonl


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
    model = Bm25(["harbour bridge cost", "bridge club", "football club goal"])
    scores = model.scores("harbour bridge")
    assert scores.argmax() == 0 and scores[2] == 0


def test_eval_related_and_search_report_shape(tmp_path, corpus, settings):
    dataset = write_jsonl(tmp_path / "set.jsonl", corpus)
    report = evaluate.evaluate_related(settings, dataset, progress=False)
    assert report["dataset"] == "set.jsonl" and report["queries"] == 30
    assert set(report["systems"]) == {"recommender", "tfidf", "bm25"}
    for name, metrics in report["systems"].items():
        extra = {"map, one per story"} if name == "recommender" else set()
        assert set(metrics) == {"map", "ndcg@10", "p@5", "r-precision"} | extra
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert report["systems"]["recommender"]["map"] > 0.5  # five clear topics
    assert "recommender" in evaluate.format_table(report)

    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query": "reservoir wells", "relevant_ids": [r["id"] for r in corpus if r["group"] == "drought"]},
        {"query": "striker penalty", "relevant_ids": [r["id"] for r in corpus if r["group"] == "football"]},
    ])
    report = evaluate.evaluate_search(settings, dataset, queries, progress=False)
    assert set(report["systems"]["recommender"]) == {"map", "ndcg@10", "mrr", "recall@100"}
    assert report["systems"]["recommender"]["mrr"] == 1.0


def test_story_map_counts_stories_not_copies():
    from recommender.evaluate import story_map

    story_of = {"q": 0, "q-copy": 0, "a": 1, "a-copy": 1, "b": 2, "c": 3}
    relevant = {"q-copy", "a", "a-copy", "b"}
    # Dedup on: one copy per story; dedup off: the second copy is skipped, not charged.
    assert story_map(["a", "b", "c"], relevant, story_of, 0) == 1.0
    assert story_map(["q-copy", "a", "a-copy", "b", "c"], relevant, story_of, 0) == 1.0
    assert story_map(["c", "a", "b"], relevant, story_of, 0) == pytest.approx((1 / 2 + 2 / 3) / 2)
