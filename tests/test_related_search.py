from __future__ import annotations

import re

import numpy as np
import pytest

from recommender.articles import parse_article
from recommender.embedders.torch_backend import SentenceTransformerEmbedder
from recommender.errors import ArticleNotFound, InvalidInput
from recommender.evaluation.baselines import Fts5Bm25, fts_query
from recommender.pipeline import reindex
from recommender.rank import related
from recommender.rank.related import related_to_row
from recommender.rank.signals import features, query_for_row
from recommender.service import Engine
from recommender.store import SqliteStore
from tests.helpers import lazy


@pytest.fixture
def engine(settings, corpus):
    rows = list(corpus)
    # A syndicated copy of talks-0 and a lightly updated copy of bridge-1.
    rows.append(dict(corpus[0], id="talks-0-wire", title="Wire: " + corpus[0]["title"]))
    rows.append(dict(corpus[7], id="bridge-1-v2", body=corpus[7]["body"] + " updated"))
    rows.append({"id": "names", "title": "irena kalvos", "body": "irena kalvos marek dunhill x x", "group": "names"})
    with SqliteStore.open(settings.store_path) as store:
        store.upsert([parse_article(r) for r in rows])
        reindex(settings, store, lazy(settings, lambda: SentenceTransformerEmbedder.load(settings.model)))
    with Engine.open(settings) as engine:
        yield engine


def test_related_excludes_self_and_its_copies(engine):
    items = engine.related("talks-0", 10)
    ids = [i.id for i in items]
    assert "talks-0" not in ids and "talks-0-wire" not in ids
    assert len(ids) == 10 == len(set(ids))
    assert all(i.startswith("talks-") for i in ids[:5])  # the 5 other talks articles come first
    assert "talks-0" not in [i.id for i in engine.related("talks-0-wire", 10)]


def test_related_never_lists_two_copies_of_one_story(engine):
    version, store = engine.live.current, engine.stores.get()
    story = {a: version.story_ids[version.row_of(store.get(a).doc_id)] for a in ("talks-0", "talks-0-wire", "talks-1", "bridge-1", "bridge-1-v2")}
    assert story["talks-0"] == story["talks-0-wire"] != story["talks-1"]
    assert story["bridge-1"] == story["bridge-1-v2"]
    assert len(set(version.story_ids)) == len(version) - 2
    ids = [i.id for i in engine.related("bridge-0", 30)]
    assert len({"bridge-1", "bridge-1-v2"} & set(ids)) == 1
    assert len(ids) == 30  # 33 articles less itself and two copies


def brute_force_list(version, row: int) -> list[int]:
    """Every article scored exactly by the version's ranker, best first, one
    doc id per story, shown by the story's original."""
    ranker = version.ranker
    values, _ = features(version, query_for_row(version, row), np.arange(len(version)), list(ranker.names))
    score = ranker.score(values)
    story = version.story_ids
    expected, seen = [], {story[row]}
    for r in np.argsort(-score, kind="stable"):
        if story[r] in seen:
            continue
        seen.add(story[r])
        expected.append(int(version.doc_ids[story[r]]))  # a story is shown by its original
    return expected


@pytest.mark.parametrize("pool", [8, 12])
def test_candidate_pool_holds_the_nearest_vectors_and_the_best_keyword_matches(engine, pool):
    """The pool is a real subset of the archive, and it holds every article
    nearer (by exact vector similarity) than its pool-th neighbour and every
    article scoring higher on the query's most distinctive terms than the
    pool-th keyword match (ties at the boundary may go either way)."""
    version = engine.live.current
    n = len(version)
    vectors = np.asarray(version.doc_vectors, dtype=np.float32)
    for row in range(n):
        query = query_for_row(version, row)
        rows = set(related.candidate_rows(version, query, pool).tolist())
        assert len(rows) <= 2 * pool + 1 < n  # pool + 1 nearest vectors, pool keyword matches
        similarity = vectors @ query.vector
        boundary = np.sort(similarity)[::-1][pool]  # FAISS returns pool + 1: the article itself is among them
        assert set(np.flatnonzero(similarity > boundary + 1e-5).tolist()) <= rows, f"row {row}"
        lexical = version.tfidf.scores(related.strongest_terms(query.terms, related.QUERY_TERMS))
        boundary = np.sort(lexical)[::-1][pool - 1]
        assert set(np.flatnonzero((lexical > boundary) & (lexical > 0)).tolist()) <= rows, f"row {row}"


@pytest.mark.parametrize("k", [2, 3, 5])
def test_pooled_ranking_matches_brute_force_scoring(engine, settings, k):
    """With a pool of 8 (at least 4 x k) candidates of 33 articles, every
    article's list equals the exact scoring of the whole archive: on topics
    this well separated the pool misses nothing that would be listed."""
    version = engine.live.current
    small = settings.replace(candidates=8)
    assert max(small.candidates, 4 * k) < len(version) - 10  # the pool is not the archive
    for row in range(len(version)):
        hits = related_to_row(version, row, k, small)
        assert [h.doc_id for h in hits] == brute_force_list(version, row)[:k], f"row {row}"


def test_served_list_is_the_brute_force_list(engine):
    """The service's list (rules, cache and deletion margin around the
    ranking) shows the exact ranking, copies collapsed to their original."""
    version = engine.live.current
    for article in ("drought-2", "bridge-0", "talks-1"):
        row = version.row_of(engine.stores.get().get(article).doc_id)
        assert [i.doc_id for i in engine.related(article, 8)] == brute_force_list(version, row)[:8]


def test_related_unknown_and_unindexed(engine):
    with pytest.raises(ArticleNotFound):
        engine.related("no-such-article", 5)
    engine.stores.get().upsert([parse_article({"id": "fresh", "title": "striker", "body": "club goal stadium fans penalty"})])
    ids = [i.id for i in engine.related("fresh", 5)]  # not indexed yet: ranked like a draft
    assert len(ids) == 5 and "fresh" not in ids and all(i.startswith("football-") for i in ids[:3])


def test_search_finds_exact_names_first(engine):
    items = engine.search("Irena Kalvos", 5)
    assert items[0].id == "names"


def test_search_by_topic_words(engine):
    ids = [i.id for i in engine.search("reservoir irrigation for the harvest", 5)]
    assert len(ids) == 5 and all(i.startswith("drought-") for i in ids)


@pytest.mark.parametrize("query", ['"unbalanced', "AND OR NOT", "NEAR(a b)", "title:x*", "-- ; DROP TABLE", "ü ß ç",
                                   'bridge)) OR "', "harbour NEAR/2 bridge"])
def test_search_survives_query_syntax(engine, query):
    """Quotes, FTS5 operators and punctuation are read as plain words: the
    keyword side of the served search and the FTS5 keyword search (the eval
    baseline) score exactly what the query's words alone score, and neither
    raises. (The vector side embeds the raw text, by design.)"""
    words = re.sub(r"[^\w\s]", " ", query)
    found = [i.id for i in engine.search(query, 5)]
    assert len(found) == 5
    bm25 = engine.live.current.bm25
    np.testing.assert_array_equal(bm25.scores(query), bm25.scores(words))
    fts = Fts5Bm25((s.doc_id, s.article.title, s.article.body) for s in engine.stores.get().iter_articles())
    keyword = fts.search(fts_query(query), 5)
    assert keyword == fts.search(fts_query(words), 5)
    if "bridge" in query:
        assert found[0].startswith("bridge-") and keyword and all(
            engine.stores.get().get_many([d])[d].article.id.startswith("bridge-") for d, _ in keyword[:3])


def test_search_rejects_empty_and_huge_queries(engine):
    with pytest.raises(InvalidInput):
        engine.search("   ", 3)
    with pytest.raises(InvalidInput):
        engine.search("x" * 5000, 3)


def test_fts_query_quotes_every_word():
    assert fts_query('Ilham "Aliev" AND the') == '"ilham" OR "aliev"'
    assert fts_query("the and") == '"the" OR "and"'
