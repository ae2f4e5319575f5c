"""Copies: one text published twice (a wire story under two ids, a re-post, a
longer or shorter version of one text), decided from the words alone.

Two bodies are copies when their word 5-gram sets overlap with a Jaccard of
at least COPY_JACCARD, or when one body holds at least COPY_CONTAINMENT of the
other's 5-grams. 5-grams found in more than BOILERPLATE_BODIES bodies (a site's
sign-off, a cookie notice) are left out of both counts. A story is the
transitive closure of that relation, plus articles that share a canonical URL.

Meaning never merges two articles: three outlets' reports of one fire, or a
report and its follow-up, share a subject but not their sentences, and each
is worth showing. The 5-grams are hashed to 64 bits (a word's hash is
blake2b; a 5-gram's is a polynomial over its words' hashes), so an archive's
sets are numpy arrays and the closure is one sparse product.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

SHINGLE_WORDS = 5
COPY_JACCARD = 0.5
COPY_CONTAINMENT = 0.8
BOILERPLATE_BODIES = 50
COPY_TEXT_CHARS = 200_000
"""Only the first 200,000 characters of a body are shingled (as the keyword models read)."""

_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class WordHashes(dict):
    """word -> 64-bit hash, shared across the bodies of one build (a dict
    lookup costs less than hashing each occurrence)."""

    def __missing__(self, word: str) -> int:
        value = self[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        return value


def shingles(body: str, words: WordHashes | None = None) -> np.ndarray:
    """The sorted, unique 64-bit hashes of the body's word 5-grams (lower-cased
    ``\\w+`` words, stopwords kept)."""
    tokens = _WORD.findall(body[:COPY_TEXT_CHARS].lower())
    if len(tokens) < SHINGLE_WORDS:
        return np.zeros(0, dtype=np.uint64)
    words = WordHashes() if words is None else words
    hashed = np.fromiter((words[t] for t in tokens), dtype=np.uint64, count=len(tokens))
    n = len(tokens) - SHINGLE_WORDS + 1
    acc = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(SHINGLE_WORDS):
            acc = acc * _MULTIPLIER + hashed[offset : offset + n]
    return np.unique(acc)


def is_copy(overlap: int | np.ndarray, size_a: int | np.ndarray, size_b: int | np.ndarray):
    """The copy rule on counted 5-grams (boilerplate already left out)."""
    overlap = np.asarray(overlap, dtype=np.float64)
    union = np.asarray(size_a, dtype=np.float64) + size_b - overlap
    smaller = np.minimum(size_a, size_b).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
        contained = np.where(smaller > 0, overlap / np.maximum(smaller, 1), 0.0)
    return (overlap > 0) & ((jaccard >= COPY_JACCARD) | (contained >= COPY_CONTAINMENT))


def copy_pairs(sets: Sequence[np.ndarray], *, boilerplate_bodies: int = BOILERPLATE_BODIES) -> np.ndarray:
    """Every pair (i, j), i < j, of bodies the rule calls copies, as an (m, 2) array."""
    n = len(sets)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    lengths = np.array([len(s) for s in sets], dtype=np.int64)
    flat = np.concatenate([s for s in sets] + [np.zeros(0, np.uint64)])
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    values, column, df = np.unique(flat, return_inverse=True, return_counts=True)
    counted = df[column] <= boilerplate_bodies
    sizes = np.bincount(owner[counted], minlength=n)
    shared = counted & (df[column] >= 2)  # a 5-gram of one body links nothing
    matrix = sp.csr_matrix(
        (np.ones(int(shared.sum()), dtype=np.int32), (owner[shared], column[shared])), shape=(n, len(values))
    )
    overlap = sp.triu(matrix @ matrix.T, k=1).tocoo()
    keep = is_copy(overlap.data, sizes[overlap.row], sizes[overlap.col])
    return np.stack([overlap.row[keep], overlap.col[keep]], axis=1).astype(np.int64)


def story_labels(
    sets: Sequence[np.ndarray],
    *,
    urls: Sequence[str] | None = None,
    published: Sequence[str | None] | None = None,
    boilerplate_bodies: int = BOILERPLATE_BODIES,
) -> np.ndarray:
    """Each article's story, as the row of the story's original: its earliest
    published copy (undated copies count as newest; ties go to the lower row,
    the one ingested first). Copies by the rule above, and articles with one
    canonical URL (``urls[i]``, "" for none), share a story."""
    n = len(sets)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for i, j in copy_pairs(sets, boilerplate_bodies=boilerplate_bodies).tolist():
        union(i, j)
    if urls is not None:
        first: dict[str, int] = {}
        for row, key in enumerate(urls):
            if key:
                union(first.setdefault(key, row), row)
    roots = [find(i) for i in range(n)]
    order = sorted(range(n), key=lambda r: ((published[r] if published else None) or "~", r))
    original: dict[int, int] = {}
    for row in order:
        original.setdefault(roots[row], row)
    return np.array([original[r] for r in roots], dtype=np.int64)


def copies_among(body: str, others: Sequence[str]) -> list[bool]:
    """Whether each of ``others`` is a copy of ``body`` (a draft, or an article
    written since the last publish, against the bodies a list would show).
    Boilerplate cannot be told apart within so few bodies, so all 5-grams count."""
    words = WordHashes()
    mine = shingles(body, words)
    result = []
    for other in others:
        theirs = shingles(other, words)
        overlap = len(np.intersect1d(mine, theirs, assume_unique=True))
        result.append(bool(is_copy(overlap, len(mine), len(theirs))))
    return result
