"""Keyword models over the published articles, rebuilt with each index
version and saved beside it.

* ``TfidfModel`` (``tfidf``): the lexical half of "related", and the entity
  model (names, places and numbers: ``entities``).
* ``Bm25Model`` (``bm25``): the keyword half of search.
* ``build``: the models of a version, and new articles' rows weighed with a
  version's frozen statistics (a segment's).
* ``sparse``: the matrices on disk (memory-mapped) and the kernels scoring
  with them; ``counting``: documents into count matrices.

The ``Stacked*`` readers beside each model read a version's rows and its
segments' rows as one (``recommender.view``).
"""

from recommender.lexical.bm25 import Bm25Model, StackedBm25, stem_words
from recommender.lexical.build import build_keyword_models, keyword_rows
from recommender.lexical.entities import entity_terms
from recommender.lexical.sparse import IMPACT_DEPTH, IMPACT_POOL, KeywordFiles, Scores, posting_sums, sparse_dot
from recommender.lexical.tfidf import StackedCsr, StackedTfidf, TfidfModel

__all__ = [
    "IMPACT_DEPTH", "IMPACT_POOL", "Bm25Model", "KeywordFiles", "Scores", "StackedBm25", "StackedCsr", "StackedTfidf",
    "TfidfModel", "build_keyword_models", "entity_terms", "keyword_rows", "posting_sums", "sparse_dot", "stem_words",
]
