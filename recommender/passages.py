"""An article's passages: how its body is cut for the embedder
(``chunk_article``), and how the passages' vectors make the article's one
vector (``article_vectors``)."""

from __future__ import annotations

import re

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(\[]?[A-Z0-9])")

CHARS_PER_WORD = 40
"""A body is cut at ``max_chunks * chunk_words * CHARS_PER_WORD`` characters
before it is split into passages. Only ``max_chunks * chunk_words`` words are
ever embedded, and real text averages 6-7 characters a word, so the cut never
changes the passages of an article; it bounds the work a hostile body (one
2 MB run-on "sentence", one 2 MB "word") can cause."""


def chunk_article(title: str, body: str, chunk_words: int, max_chunks: int) -> list[str]:
    """Cut an article into passages of about ``chunk_words`` words, on sentence
    boundaries where possible. The title leads the first passage. The cost is
    bounded by the ``max_chunks`` passages kept, whatever the body's length."""
    body = body[: max_chunks * chunk_words * CHARS_PER_WORD]
    chunks: list[str] = []
    current: list[str] = []
    for paragraph in body.split("\n"):
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            words = sentence.split()
            start = 0
            while len(words) - start > chunk_words:  # a run-on "sentence" (tables, transcripts)
                if current:
                    chunks.append(" ".join(current))
                    current = []
                chunks.append(" ".join(words[start : start + chunk_words]))
                start += chunk_words
                if len(chunks) >= max_chunks:
                    return _with_title(title, chunks[:max_chunks])
            rest = words[start:] if start else words
            if len(current) + len(rest) > chunk_words and current:
                chunks.append(" ".join(current))
                current = []
            current.extend(rest)
            if len(chunks) >= max_chunks:
                return _with_title(title, chunks[:max_chunks])
    if current:
        chunks.append(" ".join(current))
    return _with_title(title, chunks[:max_chunks] or [""])


def _with_title(title: str, chunks: list[str]) -> list[str]:
    if title:
        chunks[0] = f"{title}. {chunks[0]}".strip()
    return chunks


def article_vectors(chunk_vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One vector per article: the sum of its lead passage (title + opening,
    which names the event) and the mean of all its passages (the topic)."""
    sums = np.add.reduceat(chunk_vectors, offsets[:-1], axis=0)
    counts = np.diff(offsets).reshape(-1, 1).astype(np.float32)
    vectors = chunk_vectors[offsets[:-1]] + sums / counts
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
