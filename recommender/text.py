"""Text handling shared by the embedder, the keyword model and the evaluation."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+(?:['’.]\w+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(\[]?[A-Z0-9])")

STOPWORDS = frozenset(
    ["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "s", "said", "same", "she", "should", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "mr", "mrs", "ms", "says"]
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stopwords; keeps names, places and numbers."""
    return [t for t in _WORD.findall(text.lower()) if t not in STOPWORDS and len(t) < 40]


KEYWORD_TEXT_CHARS = 200_000
"""The keyword models (TF-IDF, BM25) read this much of a body: about 30,000
words, 3.5 times the longest article of the development sets (57,597
characters). A stored article may hold 2,000,000; what lies beyond is kept
and shown, but does not cost every publish its tokenizing."""


def keyword_text(body: str) -> str:
    return body[:KEYWORD_TEXT_CHARS]


def document_text(title: str, body: str) -> str:
    body = keyword_text(body)
    return f"{title}\n\n{body}" if title else body


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
