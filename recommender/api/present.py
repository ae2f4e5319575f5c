"""Presenters: typed results (``recommender.rank.lists.Item``, a stored
article) into what the API, the widget fragment and the CLI show. Every
response item is built here, so the JSON, the HTML and the terminal agree."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from recommender.articles import http_url
from recommender.lexical import stem_words
from recommender.rank.lists import Item
from recommender.store import StoredArticle
from recommender.text import tokenize


def item(entry: Item) -> dict[str, Any]:
    """A response item: scores of ranked items only (pins and filler have none)."""
    a, hit = entry.article, entry.hit
    out: dict[str, Any] = {"id": a.id, "title": a.title, "url": http_url(a.url), "published": a.published,
                           "section": a.section, "score": round(hit.score, 4) if hit.source == "auto" else None,
                           "source": hit.source}
    if hit.confidence is not None:
        out["confidence"] = hit.confidence
    if entry.reasons is not None:
        reasons: dict[str, Any] = {"shared": list(entry.reasons.shared)}
        if entry.reasons.days_apart is not None:
            reasons["days_apart"] = entry.reasons.days_apart
        out["reasons"] = reasons
    return out


def items(entries: list[Item]) -> list[dict[str, Any]]:
    return [item(e) for e in entries]


def search_items(entries: list[Item], query: str) -> list[dict[str, Any]]:
    """Search results, each with an HTML-escaped snippet with <mark> highlights."""
    return [{**item(e), "snippet": snippet_html(e.article.body, query)} for e in entries]


def article(stored: StoredArticle, *, full: bool = False) -> dict[str, Any]:
    """What a page shows of an article; with ``full`` also its metadata."""
    data = stored.article.to_dict()
    data["url"] = http_url(data["url"])
    if not full:
        del data["metadata"]
    return data


def fallback_heading(entries: list[Item]) -> str:
    """"More from Politics" when every fallback item is of one section, else "Latest"."""
    sections = {e.article.section for e in entries}
    return f"More from {sections.pop()}" if len(sections) == 1 and None not in sections else "Latest"


def fragment(article_id: str, entries: list[Item]) -> str:
    """The related list as a plain HTML fragment (every value escaped, only http(s) links)."""
    related = [e for e in entries if e.hit.source != "fallback"]
    filler = [e for e in entries if e.hit.source == "fallback"]
    more = ""
    if filler:
        more = (f'<h2 class="rec-related__title rec-related__title--fallback">{html.escape(fallback_heading(filler))}'
                f'</h2><ul>{"".join(_rows(filler))}</ul>')
    head = f'<h2 class="rec-related__title">Related articles</h2><ul>{"".join(_rows(related))}</ul>' if related else ""
    return (
        f'<nav class="rec-related" aria-label="Related articles" data-article-id="{html.escape(article_id, quote=True)}">'
        f'{head}{more}</nav>'
    )


def _rows(entries: list[Item]) -> list[str]:
    rows = []
    for e in entries:
        a = e.article
        title = html.escape(a.title or a.id)
        href = http_url(a.url)  # only http(s) links: javascript:, data: are dropped
        link = f'<a href="{html.escape(href, quote=True)}">{title}</a>' if href else f"<span>{title}</span>"
        date = html.escape(a.published or "")
        time_tag = f' <time datetime="{date}">{date[:10]}</time>' if date else ""
        rows.append(f'<li data-source="{e.hit.source}">{link}{time_tag}</li>')
    return rows


SNIPPET_SCAN_WORDS = 600
_PUNCTUATION = "".join(chr(c) for c in range(0x2000, 0x206F)) + "\"'.,;:!?()[]{}<>«»“”‘’-–—/\\*"


def snippet_html(body: str, query: str, words: int = 28) -> str:
    """The window of ``words`` words with the most query-term hits among the
    first SNIPPET_SCAN_WORDS of ``body``, HTML-escaped, matches in <mark>."""
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
