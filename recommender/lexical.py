"""A TF-IDF model over the published articles: the lexical half of "related".

Names, places and numbers carry the identity of a news event better than a
sentence embedding does; cosine over sublinear TF-IDF captures them. The model
is rebuilt with each index version and saved beside it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from recommender.text import tokenize


class TfidfModel:
    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, matrix: sp.csr_matrix):
        self.vocabulary = vocabulary
        self.idf = idf
        self.matrix = matrix  # rows: documents, L2-normalized
        self._postings: sp.csr_matrix | None = None

    @classmethod
    def build(cls, texts: Iterable[str], *, min_df: int = 1) -> "TfidfModel":
        counts = [Counter(tokenize(t)) for t in texts]
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
        return self._weigh([Counter(tokenize(t)) for t in texts], self.vocabulary, self.idf)

    @property
    def postings(self) -> sp.csr_matrix:
        """Term -> documents, for scoring one query against the whole corpus."""
        if self._postings is None:
            self._postings = self.matrix.T.tocsr()
        return self._postings

    def scores(self, query: sp.csr_matrix) -> np.ndarray:
        """Cosine of one query row against every document (dense, length n_docs)."""
        return np.asarray((query @ self.postings).todense()).ravel()

    def pair_scores(self, query: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        """Cosine of one query row against the documents at ``rows`` (sorted, unique)."""
        matrix = self.matrix if len(rows) == self.matrix.shape[0] else self.matrix[rows]
        return np.asarray((matrix @ query.T).todense(), dtype=np.float32).ravel()

    def save(self, directory: Path) -> None:
        sp.save_npz(directory / "tfidf.npz", self.matrix, compressed=False)
        np.save(directory / "idf.npy", self.idf)
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        (directory / "vocabulary.json").write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "TfidfModel":
        matrix = sp.load_npz(directory / "tfidf.npz").tocsr()
        idf = np.load(directory / "idf.npy")
        terms = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
        return cls({t: i for i, t in enumerate(terms)}, idf, matrix)
