"""Keyword models over the published articles, rebuilt with each index
version and saved beside it.

* TfidfModel: the lexical half of "related". Names, places and numbers carry
  the identity of a news event better than a sentence embedding does; cosine
  over sublinear TF-IDF captures them.
* Bm25Model: the keyword half of search, Okapi BM25 over Snowball-stemmed
  terms with the title counted twice, scored with sparse column sums (so a
  query costs the length of its terms' posting lists, nothing more).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recommender.text import STOPWORDS, keyword_text, tokenize


@dataclass(frozen=True)
class KeywordFiles:
    """Where one keyword model is saved; the names are the index layout's
    (``recommender.version.Layout``). BM25 has no idf file."""

    matrix: Path
    vocabulary: Path
    idf: Path


class TfidfModel:
    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, matrix: sp.csr_matrix):
        self.vocabulary = vocabulary
        self.idf = idf
        self.matrix = matrix  # rows: documents, L2-normalized
        self._postings: sp.csr_matrix | None = None

    @classmethod
    def build(cls, texts: Iterable[str], *, min_df: int = 1) -> TfidfModel:
        return cls.from_counts([Counter(tokenize(t)) for t in texts], min_df=min_df)

    @classmethod
    def from_counts(cls, counts: Sequence[Counter], *, min_df: int = 1) -> TfidfModel:
        df: Counter[str] = Counter()
        for c in counts:
            df.update(c.keys())
        vocabulary = {term: i for i, term in enumerate(sorted(t for t, n in df.items() if n >= min_df))}
        n_docs = len(counts)
        idf = np.array(
            [math.log((1 + n_docs) / (1 + df[t])) + 1.0 for t in vocabulary], dtype=np.float32
        )
        matrix = cls._weigh(counts, vocabulary, idf)
        return cls(vocabulary, idf, matrix)

    @staticmethod
    def _weigh(counts: Sequence[Counter], vocabulary: dict[str, int], idf: np.ndarray) -> sp.csr_matrix:
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        for c in counts:
            row = sorted((vocabulary[t], 1.0 + math.log(n)) for t, n in c.items() if t in vocabulary)
            indices.extend(i for i, _ in row)
            data.extend(w for _, w in row)
            indptr.append(len(indices))
        matrix = sp.csr_matrix(
            (np.array(data, np.float32), np.array(indices, np.int32), np.array(indptr, np.int64)),
            shape=(len(counts), len(vocabulary)),
        )
        matrix = matrix.multiply(idf.reshape(1, -1)).tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix, dtype=np.float32)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows for texts outside the corpus (a draft, a query)."""
        return self.transform_counts([Counter(tokenize(t)) for t in texts])

    def transform_counts(self, counts: Sequence[Counter]) -> sp.csr_matrix:
        return self._weigh(counts, self.vocabulary, self.idf)

    @cached_property
    def terms(self) -> list[str]:
        """Column -> term."""
        return sorted(self.vocabulary, key=self.vocabulary.__getitem__)

    @property
    def postings(self) -> sp.csr_matrix:
        """Term -> documents, for scoring one query against the whole corpus."""
        if self._postings is None:
            self._postings = self.matrix.T.tocsr()
        return self._postings

    def scores(self, query: sp.csr_matrix) -> np.ndarray:
        """Cosine of one query row against every document (dense, length n_docs).
        Costs the total length of the query terms' posting lists."""
        return (query @ self.postings).toarray().ravel()

    def pair_scores(self, query: sp.csr_matrix, rows: np.ndarray | None = None, matrix: sp.csr_matrix | None = None) -> np.ndarray:
        """Cosine of one query row against the documents at ``rows`` (sorted,
        unique), or against every row of a given ``matrix`` (e.g. a sample)."""
        if matrix is None:
            matrix = self.matrix if rows is None or len(rows) == self.matrix.shape[0] else self.matrix[rows]
        return (matrix @ query.T).toarray().ravel().astype(np.float32)

    def save(self, files: KeywordFiles) -> None:
        sp.save_npz(files.matrix, self.matrix, compressed=False)
        np.save(files.idf, self.idf)
        files.vocabulary.write_text(json.dumps(self.terms, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, files: KeywordFiles) -> TfidfModel:
        matrix = sp.load_npz(files.matrix).tocsr()
        idf = np.load(files.idf)
        terms = json.loads(files.vocabulary.read_text(encoding="utf-8"))
        return cls({t: i for i, t in enumerate(terms)}, idf, matrix)


_local = threading.local()


def stem_words(words: Sequence[str]) -> list[str]:
    """Snowball (Porter 2) English stems; one stemmer per thread (they are not thread-safe)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer.stemWords(list(words))


class Bm25Model:
    def __init__(self, vocabulary: dict[str, int], matrix: sp.csc_matrix, *, stem: bool = True,
                 idf: np.ndarray | None = None, avgdl: float = 1.0, k1: float = 1.2, b: float = 0.75):
        self.vocabulary = vocabulary  # stem (or term) -> column
        self.matrix = matrix  # documents x stems, BM25 term weights
        self.stem = stem
        self.idf = idf if idf is not None else np.zeros(len(vocabulary))
        self.avgdl, self.k1, self.b = avgdl, k1, b

    def with_rows(self, rows: sp.spmatrix) -> Bm25Model:
        """A model over other documents' rows, weighed with these statistics."""
        return Bm25Model(self.vocabulary, sp.csc_matrix(rows, dtype=np.float32), stem=self.stem, idf=self.idf,
                         avgdl=self.avgdl, k1=self.k1, b=self.b)

    def transform_counts(self, counts: Sequence[Counter]) -> sp.csr_matrix:
        """BM25 rows of new documents, weighed with this model's statistics (unknown stems dropped)."""
        rows, cols, weights = [], [], []
        for i, c in enumerate(counts):
            length = sum(c.values())
            merged: Counter[int] = Counter()
            stems = stem_words(list(c)) if self.stem else list(c)
            for stem, n in zip(stems, c.values()):
                if stem in self.vocabulary:
                    merged[self.vocabulary[stem]] += n
            norm = self.k1 * (1 - self.b + self.b * length / max(self.avgdl, 1e-9))
            for col, tf in merged.items():
                rows.append(i)
                cols.append(col)
                weights.append(self.idf[col] * tf * (self.k1 + 1) / (tf + norm))
        return sp.csr_matrix((np.array(weights, np.float32), (rows, cols)), shape=(len(counts), len(self.vocabulary)))

    @classmethod
    def from_counts(cls, counts: Sequence[Counter], *, k1: float = 1.2, b: float = 0.75, stem: bool = True) -> Bm25Model:
        """``stem``: Snowball stems (the served search); off, the tokens as
        they are (the evaluation's plain BM25 baseline)."""
        terms = sorted({t for c in counts for t in c})
        stem_of = dict(zip(terms, stem_words(terms) if stem else terms))
        vocabulary = {s: i for i, s in enumerate(sorted(set(stem_of.values())))}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[float] = []
        for i, c in enumerate(counts):
            merged: Counter[int] = Counter()
            for term, n in c.items():
                merged[vocabulary[stem_of[term]]] += n
            rows.extend([i] * len(merged))
            cols.extend(merged.keys())
            tfs.extend(merged.values())
        n = len(counts)
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        tf = np.array(tfs, dtype=np.float64)
        col = np.array(cols, dtype=np.int64)
        row = np.array(rows, dtype=np.int64)
        df = np.bincount(col, minlength=len(vocabulary))
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths[row] / max(float(lengths.mean()) if n else 1.0, 1e-9))
        weights = (idf[col] * tf * (k1 + 1) / (tf + norm)).astype(np.float32)
        matrix = sp.csc_matrix((weights, (row, col)), shape=(n, len(vocabulary)), dtype=np.float32)
        avgdl = max(float(lengths.mean()) if n else 1.0, 1e-9)
        return cls(vocabulary, matrix, stem=stem, idf=idf, avgdl=avgdl, k1=k1, b=b)

    def query_columns(self, text: str) -> np.ndarray:
        stems = stem_words(tokenize(text)) if self.stem else tokenize(text)
        return np.array(sorted({self.vocabulary[s] for s in stems if s in self.vocabulary}), dtype=np.int64)

    def scores(self, text: str) -> np.ndarray:
        """BM25 of the query against every document (0 where no term matches)."""
        columns = self.query_columns(text)
        if len(columns) == 0:
            return np.zeros(self.matrix.shape[0], dtype=np.float32)
        return np.asarray(self.matrix[:, columns].sum(axis=1), dtype=np.float32).ravel()

    def save(self, files: KeywordFiles) -> None:
        sp.save_npz(files.matrix, self.matrix, compressed=False)
        stems = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        files.vocabulary.write_text(json.dumps(stems, ensure_ascii=False), encoding="utf-8")
        np.save(files.idf, np.concatenate([self.idf, [self.avgdl, self.k1, self.b]]))

    @classmethod
    def load(cls, files: KeywordFiles) -> Bm25Model:
        matrix = sp.load_npz(files.matrix).tocsc()
        stems = json.loads(files.vocabulary.read_text(encoding="utf-8"))
        stats = np.load(files.idf)
        return cls({s: i for i, s in enumerate(stems)}, matrix, idf=stats[:-3], avgdl=float(stats[-3]),
                   k1=float(stats[-2]), b=float(stats[-1]))


def _article_counts(titles: Sequence[str], bodies: Sequence[str]) -> tuple[list[Counter], list[Counter], list[Counter]]:
    tfidf_counts, bm25_counts, entity_counts = [], [], []
    for title, body in zip(titles, bodies):
        text = keyword_text(body)
        title_counts = Counter(tokenize(title))
        body_counts = Counter(tokenize(text))
        tfidf_counts.append(title_counts + body_counts)
        bm25_counts.append(title_counts + title_counts + body_counts)
        entity_counts.append(entity_terms(text))
    return tfidf_counts, bm25_counts, entity_counts


def build_keyword_models(titles: Sequence[str], bodies: Sequence[str]) -> tuple[TfidfModel, Bm25Model, TfidfModel]:
    """Tokenize each article once; TF-IDF reads title + body, BM25 counts the
    title twice; the entity model holds the names, places and numbers."""
    tfidf_counts, bm25_counts, entity_counts = _article_counts(titles, bodies)
    return TfidfModel.from_counts(tfidf_counts), Bm25Model.from_counts(bm25_counts), TfidfModel.from_counts(entity_counts)


def keyword_rows(
    tfidf: TfidfModel, bm25: Bm25Model, entities: TfidfModel, titles: Sequence[str], bodies: Sequence[str]
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The three models' rows for new articles, with the models' statistics frozen."""
    tfidf_counts, bm25_counts, entity_counts = _article_counts(titles, bodies)
    return tfidf.transform_counts(tfidf_counts), bm25.transform_counts(bm25_counts), entities.transform_counts(entity_counts)


_NAME = re.compile(r"(?<![\w'’])([A-Z][\w'’-]*\w|\d[\d,.:]*\d|\d)(?![\w'’])")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"“”]\s+|\n)\s*[\"'“‘(\[]?$")


def entity_terms(text: str) -> Counter:
    """Names, places and numbers of a body: capitalized words that do not
    open a sentence (an opening word is capitalized whatever it is), and
    numbers. Lower-cased, stopwords left out; a proxy for named entities that
    costs one regular expression and needs no model."""
    found: Counter[str] = Counter()
    for match in _NAME.finditer(text):
        word = match.group(1)
        if word[0].isupper():
            before = text[max(0, match.start() - 3) : match.start()]
            if match.start() == 0 or _SENTENCE_START.search(before):
                continue
        word = word.lower().rstrip(".,:")
        if word and word not in STOPWORDS and len(word) < 40:
            found[word] += 1
    return found




SNIPPET_SCAN_WORDS = 600
_PUNCTUATION = "".join(chr(c) for c in range(0x2000, 0x206F)) + "\"'.,;:!?()[]{}<>«»“”‘’-–—/\\*"


def snippet_html(body: str, query: str, words: int = 28) -> str:
    """The window of ``words`` words with the most query-term hits among the
    first SNIPPET_SCAN_WORDS of ``body``, HTML-escaped, matches in <mark>."""
    import html

    targets = set(stem_words(tokenize(query)))
    tokens = body.split(maxsplit=SNIPPET_SCAN_WORDS)[:SNIPPET_SCAN_WORDS]
    if not tokens:
        return ""
    stems = stem_words([t.lower().strip(_PUNCTUATION) for t in tokens])
    hits = np.array([s in targets for s in stems], dtype=np.int32)
    start = 0
    if len(tokens) > words:
        start = int(np.argmax(np.convolve(hits, np.ones(words, dtype=np.int32), mode="valid")))
    end = min(len(tokens), start + words)
    parts = [f"<mark>{html.escape(t)}</mark>" if hits[i] else html.escape(t) for i, t in enumerate(tokens[start:end], start)]
    more = end < len(tokens) or len(body.split(maxsplit=end)) > end
    return ("… " if start > 0 else "") + " ".join(parts) + (" …" if more else "")
