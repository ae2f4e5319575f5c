"""Words: the tokens the keyword models and the search baselines read, and how much of a body they read."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+(?:['’.]\w+)*", re.UNICODE)

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
