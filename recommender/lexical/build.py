"""The keyword models of a version, and the keyword rows of new articles
weighed with a version's frozen statistics (a segment's)."""

from __future__ import annotations

from collections.abc import Sequence

import scipy.sparse as sp

from recommender.lexical.bm25 import Bm25Model
from recommender.lexical.counting import Tally, term_index
from recommender.lexical.entities import entity_term, name_words
from recommender.lexical.tfidf import TfidfModel
from recommender.text import keyword_text, tokenize


def _tally_articles(titles: Sequence[str], bodies: Sequence[str]) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str],
                                                                            sp.csr_matrix, list[str]]:
    """Tokenize each article once: (title counts, body counts, their terms,
    name counts, the names as written)."""
    words, names = term_index(), term_index()
    title_tally, body_tally, name_tally = Tally(words), Tally(words), Tally(names)
    for title, body in zip(titles, bodies):
        text = keyword_text(body)
        title_tally.add(tokenize(title))
        body_tally.add(tokenize(text))
        name_tally.add(name_words(text))
    return title_tally.counts(), body_tally.counts(), list(words), name_tally.counts(), list(names)


def build_keyword_models(titles: Sequence[str], bodies: Sequence[str]) -> tuple[TfidfModel, Bm25Model, TfidfModel]:
    """TF-IDF reads title + body, BM25 counts the title twice; the entity
    model holds the names, places and numbers."""
    title, body, terms, names, written = _tally_articles(titles, bodies)
    tfidf = TfidfModel.from_matrix(title + body, terms)
    bm25 = Bm25Model.from_matrix(title * 2 + body, terms)
    return tfidf, bm25, TfidfModel.from_matrix(names, [entity_term(w) for w in written])


def keyword_rows(tfidf: TfidfModel, bm25: Bm25Model, entities: TfidfModel, titles: Sequence[str],
                 bodies: Sequence[str]) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The TF-IDF, BM25 and entity rows of new articles, tokenized as
    :func:`build_keyword_models` tokenizes and weighed with the models'
    frozen vocabularies and statistics (unknown terms dropped)."""
    title, body, terms, names, written = _tally_articles(titles, bodies)
    return (tfidf.rows(title + body, terms), bm25.rows(title * 2 + body, terms),
            entities.rows(names, [entity_term(w) for w in written]))
