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


def document_text(title: str, body: str) -> str:
    return f"{title}\n\n{body}" if title else body


def chunk_article(title: str, body: str, chunk_words: int, max_chunks: int) -> list[str]:
    """Cut an article into passages of about ``chunk_words`` words, on sentence
    boundaries where possible. The title leads the first passage."""
    sentences = [s for p in body.split("\n") for s in _SENTENCE_END.split(p.strip()) if s]
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in sentences:
        words = sentence.split()
        while len(words) > chunk_words:  # a run-on "sentence" (tables, transcripts)
            if current:
                chunks.append(" ".join(current))
                current, count = [], 0
            chunks.append(" ".join(words[:chunk_words]))
            words = words[chunk_words:]
        if count + len(words) > chunk_words and current:
            chunks.append(" ".join(current))
            current, count = [], 0
        current.extend(words)
        count += len(words)
        if len(chunks) >= max_chunks:
            break
    if current and len(chunks) < max_chunks:
        chunks.append(" ".join(current))
    chunks = chunks[:max_chunks] or [""]
    if title:
        chunks[0] = f"{title}. {chunks[0]}".strip()
    return chunks
