"""The embeddable widget, its server-rendered HTML fragment, and the editors' page."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from recommender.api.deps import EngineDep, FiltersDep, K, OptionsDep, SettingsDep
from recommender.api.routes import ArticleId, cached_response
from recommender.articles import http_url

router = APIRouter(include_in_schema=True)

STATIC = {  # the only files served: no request input reaches a file path
    "widget.js": "application/javascript; charset=utf-8",
    "editor.js": "application/javascript; charset=utf-8",
    "editor.css": "text/css; charset=utf-8",
    "editor.html": "text/html; charset=utf-8",
}


@cache
def _static(name: str) -> bytes:
    return (resources.files("recommender.api") / "static" / name).read_bytes()


@router.get("/widget.js", tags=["widget"])
def widget_js(request: Request, settings: SettingsDep):
    """Add <script src=".../widget.js" async></script> and <div data-article-id="ID"></div> to a page."""
    return cached_response(request, _static("widget.js"), STATIC["widget.js"], max(settings.cache_seconds, 300))


@router.get("/static/{name}", tags=["widget"])
def static_file(name: str, request: Request, settings: SettingsDep):
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    return cached_response(request, _static(name), STATIC[name], settings.cache_seconds)


@router.get("/", response_class=HTMLResponse, tags=["widget"])
def editors_page(request: Request, settings: SettingsDep):
    """The editors' page: search the archive, check each article's related list."""
    return cached_response(request, _static("editor.html"), STATIC["editor.html"], 0)


@router.get("/widget/related/{article_id}", response_class=HTMLResponse, tags=["widget"])
def widget_fragment(request: Request, article_id: ArticleId, engine: EngineDep, settings: SettingsDep,
                    filters: FiltersDep, options: OptionsDep, k: K = 5):
    """The related list as a plain HTML fragment, for servers that render it themselves."""
    body = render_fragment(article_id, engine.related(article_id, k, filters, options)).encode()
    return cached_response(request, body, "text/html; charset=utf-8", settings.cache_seconds)


def fallback_heading(items: list[dict[str, Any]]) -> str:
    """"More from Politics" when every fallback item is of one section, else "Latest"."""
    sections = {item.get("section") for item in items}
    return f"More from {sections.pop()}" if len(sections) == 1 and None not in sections else "Latest"


def render_fragment(article_id: str, items: list[dict[str, Any]]) -> str:
    related = [i for i in items if i.get("source") != "fallback"]
    filler = [i for i in items if i.get("source") == "fallback"]
    more = ""
    if filler:
        more = (f'<h2 class="rec-related__title rec-related__title--fallback">{html.escape(fallback_heading(filler))}'
                f'</h2><ul>{"".join(_rows(filler))}</ul>')
    head = f'<h2 class="rec-related__title">Related articles</h2><ul>{"".join(_rows(related))}</ul>' if related else ""
    return (
        f'<nav class="rec-related" aria-label="Related articles" data-article-id="{html.escape(article_id, quote=True)}">'
        f'{head}{more}</nav>'
    )


def _rows(items: list[dict[str, Any]]) -> list[str]:
    rows = []
    for item in items:
        title = html.escape(item["title"] or item["id"])
        href = http_url(item.get("url"))  # only http(s) links: javascript:, data: are dropped
        link = f'<a href="{html.escape(href, quote=True)}">{title}</a>' if href else f"<span>{title}</span>"
        date = html.escape(item.get("published") or "")
        time_tag = f' <time datetime="{date}">{date[:10]}</time>' if date else ""
        source = item.get("source") if item.get("source") in ("manual", "fallback") else "auto"
        rows.append(f'<li data-source="{source}">{link}{time_tag}</li>')
    return rows
