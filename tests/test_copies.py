"""Copies are decided by words, never by meaning: the engine's hashed 5-gram
index (recommender.copies) against the evaluation's exact rule
(recommender.evaluate.copy_clusters), on real news text with the edits that
copies get, and through a real reindex."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import numpy as np
import pytest

from recommender import copies
from recommender.evaluation.metrics import copy_clusters


def sample_articles() -> list[dict]:
    text = (resources.files("recommender") / "data" / "sample_articles.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


BOILERPLATE = ("Sign up for our morning newsletter to get the day's top stories in your inbox. "
               "Follow us on social media and share your tips with the newsroom at any time of day.")


def edited_copies(article: dict, other: dict) -> list[tuple[str, str]]:
    """(kind, body) of copies a newsroom publishes: each is a copy by the rule."""
    words = article["body"].split(" ")
    paragraphs = article["body"].split("\n\n")
    rewritten = list(paragraphs)
    longest = max(range(len(paragraphs)), key=lambda i: len(paragraphs[i]))
    if len(paragraphs) >= 6:  # one paragraph of a long article rewritten
        rewritten[longest] = other["body"].split("\n\n")[0]
    return [
        ("truncated to 60%", " ".join(words[: int(len(words) * 0.6)])),
        ("boilerplate added", article["body"] + "\n\n" + BOILERPLATE),
        ("retitled", article["body"]),
        ("syndicated under another id", article["body"]),
        ("one paragraph rewritten", "\n\n".join(rewritten)),
    ]


def pairs(labels) -> set[tuple[int, int]]:
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(i)
    return {p for rows in by_label.values() for p in itertools.combinations(rows, 2)}


def test_engine_merges_exactly_what_the_rule_calls_copies():
    articles = sample_articles()
    bodies = [a["body"] for a in articles]
    made = []
    for i in range(0, len(articles), 6):
        for kind, body in edited_copies(articles[i], articles[(i + 1) % len(articles)]):
            made.append((i, kind, len(bodies)))
            bodies.append(body)
    rule = pairs(copy_clusters(bodies))
    words = copies.WordHashes()
    engine = pairs(copies.story_labels([copies.shingles(b, words) for b in bodies]))
    assert engine == rule  # merge if and only if the rule calls them copies
    for original, kind, row in made:
        assert (original, row) in rule, kind  # every edit is still a copy
    # The originals that are not copies of each other stay apart.
    originals = {p for p in rule if p[1] < len(articles)}
    assert len(originals) <= 2


def test_hashed_rule_agrees_with_exact_rule_near_the_thresholds():
    rng = np.random.default_rng(3)
    vocabulary = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocabulary, 300)) for _ in range(30)]
    bodies = list(base)
    for text in base:
        words = text.split()
        for keep in (0.35, 0.45, 0.55, 0.65, 0.75, 0.85):  # share of the text kept, around both thresholds
            cut = int(len(words) * keep)
            bodies.append(" ".join(words[:cut] + list(rng.choice(vocabulary, len(words) - cut))))
            bodies.append(" ".join(words[:cut]))  # contained in the original
    hashes = copies.WordHashes()
    assert pairs(copies.story_labels([copies.shingles(b, hashes) for b in bodies])) == pairs(copy_clusters(bodies))


def test_boilerplate_shared_by_many_bodies_links_nothing():
    rng = np.random.default_rng(5)
    vocabulary = [f"w{i}" for i in range(5000)]
    footer = " ".join(["read", "more", "stories", "like", "this", "on", "our", "site", "every", "day"] * 8)
    bodies = [" ".join(rng.choice(vocabulary, 40)) + " " + footer for _ in range(60)]
    assert len(set(copy_clusters(bodies))) == 60
    words = copies.WordHashes()
    assert len(set(copies.story_labels([copies.shingles(b, words) for b in bodies]).tolist())) == 60


def test_story_is_shown_by_its_earliest_copy_and_canonical_urls_merge():
    text = "one two three four five six seven eight nine ten eleven twelve"
    sets = [copies.shingles(t) for t in (text, "alpha beta gamma delta epsilon zeta", text, "x y z w v u t")]
    labels = copies.story_labels(sets, urls=["", "a.example/p", "", "a.example/p"],
                                 published=["2025-02-01", "2025-01-05", "2025-01-01", None])
    assert labels.tolist() == [2, 1, 2, 1]


def test_copies_among_finds_a_draft_copy():
    article = sample_articles()[0]["body"]
    others = [article[: len(article) * 2 // 3], sample_articles()[1]["body"]]
    assert copies.copies_among(article, others) == [True, False]


@pytest.mark.parametrize("body", ["", "too short", "a b c d"])
def test_bodies_under_five_words_have_no_shingles(body):
    assert len(copies.shingles(body)) == 0
