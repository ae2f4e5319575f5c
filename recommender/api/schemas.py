"""Request and response bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from recommender.articles import (
    MAX_BODY_CHARS,
    MAX_DATE_CHARS,
    MAX_DRAFT_CHARS,
    MAX_LANG_CHARS,
    MAX_SECTION_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
)


class Item(BaseModel):
    id: str
    title: str
    url: str | None = None
    published: str | None = None
    section: str | None = None
    score: float | None = Field(description="the ranking score; null for pinned and fallback items")
    source: str = Field("auto", description=(
        "'auto' for a ranked item, 'manual' for an editor's pin, 'fallback' for filler the request asked "
        "for (`fallback=section|latest`) when fewer than k items pass the confidence floor"))
    confidence: float | None = Field(None, description=(
        "related lists: the calibrated chance that a reader calls this item related (ranked items only)"))
    reasons: dict[str, Any] | None = Field(None, description=(
        "related lists: `shared` names, places and numbers (rarest first) and `days_apart`"))


class SearchItem(Item):
    snippet: str = Field(description="HTML-escaped text; matched words are wrapped in <mark>")


class RelatedResponse(BaseModel):
    article_id: str
    items: list[Item]


class SearchResponse(BaseModel):
    query: str
    items: list[SearchItem]


class DraftRelatedRequest(BaseModel):
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    body: str = Field(..., min_length=1, max_length=MAX_DRAFT_CHARS,
                      description=f"the draft's text (public endpoint: at most {MAX_DRAFT_CHARS:,} characters)")
    k: int = Field(10, ge=1, le=100)
    section: str | None = Field(None, max_length=MAX_SECTION_CHARS)
    since: str | None = Field(None, max_length=MAX_DATE_CHARS)
    until: str | None = Field(None, max_length=MAX_DATE_CHARS)
    lang: str | None = Field(None, max_length=MAX_LANG_CHARS)


class DraftRelatedResponse(BaseModel):
    items: list[Item]


class ArticleIn(BaseModel):
    """An article to create or replace. Fields beyond these are kept as
    metadata (at most 64 KiB of JSON, 16 levels deep). The same limits apply
    to each record of a batch and to `recommender ingest`."""

    model_config = ConfigDict(extra="allow")
    title: str = Field(..., max_length=MAX_TITLE_CHARS)
    body: str = Field(..., max_length=MAX_BODY_CHARS)
    url: str | None = Field(None, max_length=MAX_URL_CHARS, description="an absolute http(s) URL")
    published: str | None = Field(None, max_length=MAX_DATE_CHARS)
    section: str | None = Field(None, max_length=MAX_SECTION_CHARS)
    category: str | None = Field(None, max_length=MAX_SECTION_CHARS)
    tags: list[Annotated[str, Field(max_length=MAX_TAG_CHARS)]] | None = Field(None, max_length=MAX_TAGS)
    lang: str | None = Field(None, max_length=MAX_LANG_CHARS)


class ArticleOut(BaseModel):
    """What a page shows of an article: the public read."""

    id: str
    title: str
    body: str
    url: str | None = None
    published: str | None = None
    section: str | None = None
    tags: list[str] = []
    lang: str | None = None


class ArticleFull(ArticleOut):
    """The read with the key: also the extra ingest fields."""

    metadata: dict[str, Any]


class WriteResult(BaseModel):
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: list[dict[str, Any]] = []
    reindex: str = Field("scheduled", description="the index is rebuilt in the background within seconds")


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class RuleIn(BaseModel):
    """An editorial rule. ``pin``: show ``target`` in ``article``'s list at
    ``position``. ``block``: never show ``target`` in ``article``'s list, or
    anywhere when ``article`` is omitted. ``boost``/``bury``: move an article,
    a section or a tag (``target_type``) up or down by ``weight``."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "1" for 1, no true for 1
    kind: str = Field(..., max_length=10, description="pin, block, boost or bury")
    target: str = Field(..., min_length=1, max_length=512)
    article: str | None = Field(None, max_length=512, description="the list's article; omit for every list")
    target_type: str = Field("article", max_length=10, description="article, section or tag")
    position: int | None = Field(None, description="pins: 1-based slot")
    weight: float | None = Field(None, description="boosts and buries: standard deviations of the score (default 1)")
    note: str | None = Field(None, max_length=512)


class RuleOut(BaseModel):
    id: int
    kind: str
    target: str
    article: str | None = None
    target_type: str
    position: int | None = None
    weight: float | None = None
    note: str = ""
    created_at: str | None = None


class RulesResponse(BaseModel):
    rules: list[RuleOut]
