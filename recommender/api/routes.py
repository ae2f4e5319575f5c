"""The JSON API: public reads, key-protected writes, health and metrics."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse

from recommender.api import present
from recommender.api.deps import (
    EngineDep,
    FiltersDep,
    K,
    KeyGiven,
    OpsAccess,
    OptionsDep,
    ReindexerDep,
    SettingsDep,
    WriteAccess,
)
from recommender.api.schemas import (
    ArticleFull,
    ArticleIn,
    ArticleOut,
    DraftRelatedRequest,
    DraftRelatedResponse,
    RelatedResponse,
    RuleIn,
    RuleOut,
    RulesResponse,
    SearchResponse,
    WriteResult,
)
from recommender.articles import parse_article
from recommender.errors import InvalidInput, MetricsUnavailable
from recommender.filters import Filters
from recommender.rank.search import MAX_QUERY_CHARS
from recommender.rules import parse_rule

router = APIRouter()
ArticleId = Annotated[str, Path(min_length=1, max_length=512, description="the article's id")]
MAX_BATCH = 1000


def cached_response(request: Request, body: bytes, media_type: str, max_age: int) -> Response:
    """A public, cacheable response with a strong ETag; 304 when it matches."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}", "Vary": "Origin"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def cached_json(request: Request, payload: Any, max_age: int) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return cached_response(request, body, "application/json", max_age)


@router.get("/v1/articles/{article_id}/related", response_model=RelatedResponse, tags=["read"])
def related(request: Request, article_id: ArticleId, engine: EngineDep, settings: SettingsDep,
            filters: FiltersDep, options: OptionsDep, k: K = 10):
    """The k articles most related to one article (never itself, its copies, or two copies of a story).
    Editors' pins come at their positions with `source: "manual"`; blocked, embargoed and deleted
    articles never appear."""
    items = present.items(engine.related(article_id, k, filters, options))
    return cached_json(request, {"article_id": article_id, "items": items}, settings.cache_seconds)


@router.get("/v1/search", response_model=SearchResponse, tags=["read"])
def search(engine: EngineDep, filters: FiltersDep, options: OptionsDep,
           q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="free text")], k: K = 10):
    """Keyword + semantic search; each item carries an HTML-escaped snippet with <mark> highlights."""
    return {"query": q, "items": present.search_items(engine.search(q, k, filters, options), q)}


@router.post("/v1/related", response_model=DraftRelatedResponse, tags=["read"])
def related_to_draft(draft: DraftRelatedRequest, engine: EngineDep):
    """Related articles for an unpublished draft, while an editor writes it."""
    filters = Filters.parse(draft.section, draft.since, draft.until, draft.lang)
    return {"items": present.items(engine.related_to_draft(draft.title, draft.body, draft.k, filters))}


@router.get("/v1/articles/{article_id}", response_model=ArticleFull | ArticleOut, tags=["read"])
def get_article(article_id: ArticleId, engine: EngineDep, response: Response, full: KeyGiven):
    """An article as a page shows it. With the API key: also its metadata (the
    extra ingest fields), and also while it is embargoed; without it an
    embargoed article is answered like an unknown id."""
    if full:
        response.headers["Cache-Control"] = "private, no-store"
    return present.article(engine.article(article_id, full=full), full=full)


@router.put("/v1/articles/{article_id}", response_model=WriteResult, tags=["write"])
def put_article(article_id: ArticleId, article: ArticleIn, engine: EngineDep, reindexer: ReindexerDep,
                _: WriteAccess):
    """Create or replace an article. Related lists and search follow within seconds."""
    record = {**article.model_dump(exclude_none=True), "id": article_id}
    try:
        parsed = parse_article(record)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    counts = engine.upsert([parsed])
    reindexer.request()
    return WriteResult(added=counts.added, updated=counts.updated, unchanged=counts.unchanged)


@router.delete("/v1/articles/{article_id}", response_model=WriteResult, tags=["write"])
def delete_article(article_id: ArticleId, engine: EngineDep, reindexer: ReindexerDep, _: WriteAccess):
    engine.delete(article_id)
    reindexer.request()
    return WriteResult(deleted=1)


@router.post("/v1/articles", response_model=WriteResult, tags=["write"])
def post_articles(
    articles: Annotated[list[Any], Body(description="articles, each an object with id, title, body, ...")],
    engine: EngineDep,
    reindexer: ReindexerDep,
    _: WriteAccess,
):
    """Upsert a batch (at most 1000). Bad records are listed by position; the good ones are kept."""
    if len(articles) > MAX_BATCH:
        raise InvalidInput(f"a batch holds at most {MAX_BATCH} articles, got {len(articles)}", field="body")
    good, rejected = [], []
    for position, record in enumerate(articles):
        try:
            good.append(parse_article(record))
        except ValueError as exc:
            article_id = record.get("id") if isinstance(record, dict) else None
            rejected.append({"index": position, "id": None if article_id is None else str(article_id)[:512],
                             "reason": str(exc)})
    counts = engine.upsert(good)
    if good:
        reindexer.request()
    return WriteResult(added=counts.added, updated=counts.updated, unchanged=counts.unchanged, rejected=rejected)


@router.get("/v1/rules", response_model=RulesResponse, tags=["rules"])
def list_rules(engine: EngineDep, _: WriteAccess,
               article: Annotated[str | None, Query(max_length=512, description="only this article's list")] = None):
    """Editorial rules (key required: rules are not public)."""
    return {"rules": [r.to_dict() for r in engine.rules(article)]}


@router.post("/v1/rules", response_model=RuleOut, status_code=201, tags=["rules"])
def add_rule(rule: RuleIn, engine: EngineDep, _: WriteAccess):
    """Add a pin, block, boost or bury. It applies to the next request; no reindex is needed."""
    return engine.add_rule(parse_rule(rule.model_dump(exclude_none=True))).to_dict()


@router.delete("/v1/rules/{rule_id}", response_model=WriteResult, tags=["rules"])
def delete_rule(rule_id: Annotated[int, Path(ge=1, le=2**62)], engine: EngineDep, _: WriteAccess):
    engine.delete_rule(rule_id)
    return WriteResult(deleted=1)


@router.get("/healthz", tags=["ops"])
def healthz():
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
def readyz(engine: EngineDep, reindexer: ReindexerDep):
    """200 while an index serves. ``behind``: articles written or deleted that
    the served index does not reflect yet (0 when it is current).
    ``checksums``: the served version's ("verified", "checking" in the
    background, "not recorded"). ``refused``: the views newer than the served
    one that failed verification, and why (the served one is the newest that verifies)."""
    version = engine.live.current  # 503 until an index is loaded (or while none verifies)
    return {"status": "ready", "index": version.name, "articles": len(version),
            "built_at": version.manifest.built_at, "behind": engine.behind(),
            "last_reindex_error": reindexer.last_error,
            "checksums": engine.live.checksums,
            "refused": [r.to_dict() for r in engine.live.refused]}


@router.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
def metrics(request: Request, engine: EngineDep, _: OpsAccess):
    # Prometheus text, added up over all the server's workers (recommender/api/metrics.py).
    version = engine.live.version_or_none
    app_metrics = request.app.state.metrics
    app_metrics.refresh(index_articles=len(version) if version else None,
                        index_built_at=version.manifest.built_timestamp if version else None)
    text = app_metrics.scrape()
    if text is None:
        raise MetricsUnavailable("the metrics files cannot be read; see the log")
    # The 0.0.4 text format's type, whatever prometheus_client's latest is.
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
