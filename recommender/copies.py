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
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from recommender.store import Store, StoredArticle
    from recommender.view import View

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


class Components:
    """Union-find over 0..n-1 with path halving; a component's root is its lowest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


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
    components = Components(n)
    for i, j in copy_pairs(sets, boilerplate_bodies=boilerplate_bodies).tolist():
        components.union(i, j)
    if urls is not None:
        first: dict[str, int] = {}
        for row, key in enumerate(urls):
            if key:
                components.union(first.setdefault(key, row), row)
    roots = [components.find(i) for i in range(n)]
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


def canonical_url(url: str | None) -> str:
    """host + path + query without tracking parameters; "" for a site's home
    page (some feeds give it for every article) and for no URL."""
    if not url:
        return ""
    parts = urlsplit(url.strip())
    host = parts.netloc.lower().removeprefix("www.")
    path = parts.path.rstrip("/")
    query = "&".join(sorted(p for p in parts.query.split("&") if p and not p.lower().startswith("utm_")))
    if not host or (not path and not query):
        return ""
    return host + path + ("?" + query if query else "")


# -- stories of new articles (a segment's) ---------------------------------------


STORY_NEIGHBORS = 10
"""A new article's copies are looked for among its nearest articles by vector
(a copy shares most of its text, so it is among them); the shingle rule decides."""


def segment_stories(view: View, store: Store, articles: Sequence[StoredArticle], vectors: np.ndarray) -> np.ndarray:
    """Each new article's story, as the doc_id of the story's original: the
    story of an indexed copy (by the copy rule of ``recommender.copies``, or a
    shared canonical URL) among its nearest articles; else, among the new
    articles that copy one another, the earliest published one."""
    n = len(articles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    words = WordHashes()
    sets = [shingles(a.article.body, words) for a in articles]
    urls = [canonical_url(a.article.metadata.get("canonical_url") or a.article.url) for a in articles]
    own = {a.doc_id for a in articles}
    _, ids = view.docs.search(vectors, min(STORY_NEIGHBORS, len(view.docs)))
    neighbor_ids = sorted({int(d) for d in ids.ravel().tolist() if d >= 0} - own)
    live = set(view.doc_ids[view.rows_of(np.asarray(neighbor_ids, dtype=np.int64))].tolist())
    neighbors = store.get_many([d for d in neighbor_ids if d in live])
    neighbor_sets = {d: shingles(s.article.body, words) for d, s in neighbors.items()}
    external: dict[int, int] = {}
    for i, row_ids in enumerate(ids.tolist()):
        for d in row_ids:
            if d not in neighbors:
                continue
            theirs = neighbor_sets[d]
            other = neighbors[d].article
            overlap = len(np.intersect1d(sets[i], theirs, assume_unique=True))
            same_url = bool(urls[i]) and urls[i] == canonical_url(other.metadata.get("canonical_url") or other.url)
            if same_url or is_copy(overlap, len(sets[i]), len(theirs)):
                row = view.row_of(d)
                assert row is not None  # live, checked above
                external[i] = int(view.doc_ids[view.story_ids[row]])
                break
    components = Components(n)
    pairs = copy_pairs(sets).tolist()
    first_url: dict[str, int] = {}
    for i, url in enumerate(urls):
        if url:
            pairs.append([first_url.setdefault(url, i), i])
    for i, j in pairs:
        components.union(i, j)
    find = components.find
    order = sorted(range(n), key=lambda i: (articles[i].article.published or "~", articles[i].doc_id))
    story: dict[int, int] = {}
    for i in order:  # an indexed copy's story first, else the earliest published new copy
        root = find(i)
        if i in external:
            story[root] = external[i]
    for i in order:
        story.setdefault(find(i), articles[i].doc_id)
    return np.array([story[find(i)] for i in range(n)], dtype=np.int64)
