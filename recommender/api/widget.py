"""The embeddable widget, its server-rendered HTML fragment, and the editors' page."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from recommender.api import present
from recommender.api.deps import EngineDep, FiltersDep, K, OptionsDep, SettingsDep
from recommender.api.routes import ArticleId, cached_response

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
    body = present.fragment(article_id, engine.related(article_id, k, filters, options)).encode()
    return cached_response(request, body, "text/html; charset=utf-8", settings.cache_seconds)
