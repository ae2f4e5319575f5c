"""The keyword models against a plain reference (a Counter per document, as
the models were first written), on real news text: the vectorized build must
give the same vocabularies, idf and matrices; rows of new articles weighed
with frozen statistics must be the rows the build gives its own articles."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.lexical import (
    Bm25Model,
    KeywordFiles,
    TfidfModel,
    build_keyword_models,
    entity_terms,
    keyword_rows,
    stem_words,
)
from recommender.lexical.sparse import impact_postings
from recommender.text import keyword_text, tokenize

DEMO = Path(__file__).parents[1] / "recommender" / "data" / "sample_articles.jsonl"
BBC = Path("/work/shared/data/bbc_news.jsonl")  # the development sets; not in the repository


def _articles(path: Path, n: int) -> tuple[list[str], list[str]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n] if line.strip()]
    return [r["title"] for r in records], [r["body"] for r in records]


CORPORA = [pytest.param(DEMO, id="demo")]
if BBC.exists():
    CORPORA.append(pytest.param(BBC, id="bbc-600"))


@pytest.fixture(scope="module", params=CORPORA)
def articles(request) -> tuple[list[str], list[str]]:
    return _articles(request.param, 600)


# -- the reference ------------------------------------------------------------


def reference_tfidf(counts: list[Counter]) -> tuple[dict[str, int], np.ndarray, sp.csr_matrix]:
    df: Counter[str] = Counter()
    for c in counts:
        df.update(c.keys())
    vocabulary = {t: i for i, t in enumerate(sorted(df))}
    idf = np.array([math.log((1 + len(counts)) / (1 + df[t])) + 1.0 for t in vocabulary])
    rows = np.zeros((len(counts), len(vocabulary)))
    for i, c in enumerate(counts):
        for t, n in c.items():
            rows[i, vocabulary[t]] = (1.0 + math.log(n)) * idf[vocabulary[t]]
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return vocabulary, idf, sp.csr_matrix(rows)


def reference_bm25(counts: list[Counter], k1: float = 1.2, b: float = 0.75) -> tuple[dict[str, int], sp.csr_matrix]:
    stems: list[Counter[str]] = [Counter() for _ in counts]
    for merged, c in zip(stems, counts):
        for term, n in c.items():
            merged[stem_words([term])[0]] += n
    vocabulary = {s: i for i, s in enumerate(sorted({s for c in stems for s in c}))}
    lengths = [sum(c.values()) for c in counts]
    avgdl = sum(lengths) / len(counts)
    rows = np.zeros((len(counts), len(vocabulary)))
    for i, c in enumerate(stems):
        for s, tf in c.items():
            df = sum(s in other for other in stems)
            idf = math.log(1 + (len(counts) - df + 0.5) / (df + 0.5))
            rows[i, vocabulary[s]] = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[i] / avgdl))
    return vocabulary, sp.csr_matrix(rows)


def reference_counts(titles: list[str], bodies: list[str]) -> tuple[list[Counter], list[Counter], list[Counter]]:
    tfidf, bm25, entities = [], [], []
    for title, body in zip(titles, bodies):
        text = keyword_text(body)
        title_counts, body_counts = Counter(tokenize(title)), Counter(tokenize(text))
        tfidf.append(title_counts + body_counts)
        bm25.append(title_counts + title_counts + body_counts)
        entities.append(entity_terms(text))
    return tfidf, bm25, entities


def assert_close(actual: sp.spmatrix, expected: sp.spmatrix) -> None:
    assert actual.shape == expected.shape
    assert abs(sp.csr_matrix(actual, dtype=np.float64) - expected).max() < 1e-6


# -- the build ----------------------------------------------------------------


def test_build_matches_the_reference(articles):
    titles, bodies = articles
    tfidf, bm25, entities = build_keyword_models(titles, bodies)
    tfidf_counts, bm25_counts, entity_counts = reference_counts(titles, bodies)
    for model, counts in ((tfidf, tfidf_counts), (entities, entity_counts)):
        vocabulary, idf, matrix = reference_tfidf(counts)
        assert model.vocabulary == vocabulary and model.terms == sorted(vocabulary)
        np.testing.assert_allclose(model.idf, idf, rtol=1e-6)
        assert model.matrix.dtype == np.float32
        assert_close(model.matrix, matrix)
    vocabulary, matrix = reference_bm25(bm25_counts)
    assert bm25.vocabulary == vocabulary
    assert bm25.matrix.dtype == np.float32 and bm25.matrix.format == "csc"
    assert_close(bm25.matrix, matrix)
    assert "s" not in tfidf.vocabulary and entities.matrix.nnz > len(titles)  # stopwords out; names found


def test_counters_and_texts_build_the_same_models(articles):
    titles, bodies = articles
    texts = [f"{t}\n\n{b}" for t, b in zip(titles, bodies)]
    counts = [Counter(tokenize(t)) for t in texts]
    built, counted = TfidfModel.build(texts), TfidfModel.from_counts(counts)
    assert built.vocabulary == counted.vocabulary
    assert_close(built.matrix, counted.matrix)
    assert_close(built.transform(texts[:5]), built.matrix[:5])
    plain = Bm25Model.from_counts(counts, stem=False)
    assert plain.vocabulary == {t: i for i, t in enumerate(sorted({t for c in counts for t in c}))}


def test_entity_terms_skip_sentence_openers_and_stopwords():
    text = 'Talks opened in Geneva. The Mediators met Ilham Aliev at 10:30 on May 3, "Before" the vote.\nYes 2,500'
    assert entity_terms(text) == Counter({"geneva": 1, "mediators": 1, "ilham": 1, "aliev": 1, "10:30": 1,
                                          "may": 1, "3": 1, "2,500": 1})


# -- new articles, frozen statistics ------------------------------------------


def test_keyword_rows_of_the_corpus_are_its_own_rows(articles):
    titles, bodies = articles
    tfidf, bm25, entities = build_keyword_models(titles, bodies)
    for rows, matrix in zip(keyword_rows(tfidf, bm25, entities, titles, bodies),
                            (tfidf.matrix, bm25.matrix, entities.matrix)):
        assert rows.format == "csr"
        assert_close(rows, matrix)


def test_keyword_rows_of_new_articles_use_the_frozen_statistics(articles):
    titles, bodies = articles
    half = len(titles) // 2
    tfidf, bm25, entities = build_keyword_models(titles[:half], bodies[:half])
    new_tfidf, new_bm25, new_entities = keyword_rows(tfidf, bm25, entities, titles[half:], bodies[half:])
    tfidf_counts, bm25_counts, entity_counts = reference_counts(titles[half:], bodies[half:])

    # TF-IDF: A's idf, terms A never saw dropped, then normalized
    for model, rows, counts in ((tfidf, new_tfidf, tfidf_counts), (entities, new_entities, entity_counts)):
        expected = np.zeros(rows.shape)
        for i, c in enumerate(counts):
            for t, n in c.items():
                if t in model.vocabulary:
                    expected[i, model.vocabulary[t]] = (1.0 + math.log(n)) * model.idf[model.vocabulary[t]]
        expected /= np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
        assert_close(rows, sp.csr_matrix(expected))
        assert_close(model.transform_counts(counts), sp.csr_matrix(expected))
        assert rows.shape == (len(titles) - half, len(model.vocabulary))

    # BM25: A's idf and average length; a document's length counts its unknown stems too
    expected = np.zeros(new_bm25.shape)
    for i, c in enumerate(bm25_counts):
        merged: Counter[str] = Counter()
        for t, n in c.items():
            merged[stem_words([t])[0]] += n
        norm = bm25.k1 * (1 - bm25.b + bm25.b * sum(c.values()) / bm25.avgdl)
        for s, tf in merged.items():
            if s in bm25.vocabulary:
                col = bm25.vocabulary[s]
                expected[i, col] = bm25.idf[col] * tf * (bm25.k1 + 1) / (tf + norm)
    assert np.count_nonzero(expected) > 0
    assert_close(new_bm25, sp.csr_matrix(expected))
    assert_close(bm25.transform_counts(bm25_counts), sp.csr_matrix(expected))
    # frozen is not rebuilt: the B rows of a build over A + B differ (the idf moved)
    rebuilt = build_keyword_models(titles, bodies)[1]
    assert rebuilt.vocabulary != bm25.vocabulary or abs(rebuilt.matrix[half:] - new_bm25).max() > 1e-3


def test_bm25_statistics_survive_save_and_load(tmp_path, articles):
    titles, bodies = articles
    _, bm25, _ = build_keyword_models(titles, bodies)
    files = KeywordFiles(tmp_path / "bm25", tmp_path / "bm25_vocabulary.json", tmp_path / "bm25_idf.npy",
                         tmp_path / "bm25_parameters.json")
    bm25.save(files)
    loaded = Bm25Model.load(files)
    assert loaded.vocabulary == bm25.vocabulary and loaded.stem
    assert (loaded.avgdl, loaded.k1, loaded.b) == (bm25.avgdl, bm25.k1, bm25.b)
    assert loaded.idf.dtype == np.float64 and np.array_equal(loaded.idf, bm25.idf)
    counts = [Counter(tokenize(t)) for t in titles[:3]]
    assert_close(loaded.transform_counts(counts), bm25.transform_counts(counts))
    np.testing.assert_array_equal(loaded.scores(titles[0]), bm25.scores(titles[0]))


def test_impact_postings_keep_each_terms_largest_weights(articles):
    titles, bodies = articles
    tfidf, bm25, _ = build_keyword_models(titles, bodies)
    postings = tfidf.postings
    depth = 5
    cut = impact_postings(postings, depth)
    assert cut.shape == postings.shape and cut.has_sorted_indices
    for term in range(postings.shape[0]):
        full = postings[term].toarray().ravel()
        kept = cut[term].toarray().ravel()
        assert kept.astype(bool).sum() == min(depth, np.count_nonzero(full))
        assert np.all(kept[kept > 0] == full[kept > 0])  # entries kept unchanged, in document order
        if np.count_nonzero(full) > depth:  # and they are the largest
            assert kept[kept > 0].min() >= np.sort(full)[-depth]
    assert impact_postings(postings, postings.shape[1]) is postings  # no list that long: the same matrix


def test_bm25_row_scores_are_the_exact_scores(articles):
    titles, bodies = articles
    _, bm25, _ = build_keyword_models(titles, bodies)
    rows = np.arange(0, bm25.matrix.shape[0], 3)
    for query in titles[:10] + ["council budget", "zzzz unknown words"]:
        columns = bm25.query_columns(query)
        np.testing.assert_allclose(bm25.row_scores(columns, rows), bm25.scores(query)[rows], rtol=1e-5, atol=1e-6)
        exact = bm25.scores(query)
        candidates = bm25.impact_scores(columns)  # no list is IMPACT_DEPTH long here: all matching documents
        np.testing.assert_array_equal(candidates.rows, np.flatnonzero(exact))
        np.testing.assert_allclose(candidates.values, exact[candidates.rows], rtol=1e-5)


def test_cut_lists_reach_fewer_documents_and_exact_reads_them_all(articles):
    """A widened candidate pool (``exact=True``) reads the full postings: cut
    lists could not fill it."""
    titles, bodies = articles
    tfidf, bm25, _ = build_keyword_models(titles, bodies)
    tfidf._impacts, bm25._impacts = impact_postings(tfidf.postings, 3), impact_postings(bm25.matrix, 3)
    query = tfidf.matrix[0]
    exact = tfidf.scores(query)
    full, cut = tfidf.impact_scores(query, exact=True), tfidf.impact_scores(query)
    np.testing.assert_array_equal(full.rows, np.flatnonzero(exact))
    np.testing.assert_allclose(full.values, exact[full.rows], rtol=1e-5)
    assert len(cut.rows) < len(full.rows) and set(cut.rows) <= set(full.rows)
    columns = bm25.query_columns(titles[0])
    exact = bm25.scores(titles[0])
    full, cut = bm25.impact_scores(columns, exact=True), bm25.impact_scores(columns)
    np.testing.assert_array_equal(full.rows, np.flatnonzero(exact))
    assert len(cut.rows) < len(full.rows) and set(cut.rows) <= set(full.rows)


def test_empty_inputs():
    tfidf, bm25, entities = build_keyword_models([], [])
    assert tfidf.matrix.shape == (0, 0) and bm25.matrix.shape == (0, 0) and entities.vocabulary == {}
    tfidf, bm25, entities = build_keyword_models(["Harbour bridge"], ["The Corran bridge costs 30 million."])
    rows = keyword_rows(tfidf, bm25, entities, ["", "unknown"], ["", "nothing known here"])
    assert [r.shape[0] for r in rows] == [2, 2, 2] and all(r.nnz == 0 for r in rows)
