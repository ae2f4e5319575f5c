"""Typed dependencies: what a route may touch is in its signature."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Header, HTTPException, Query, Request

from recommender.config import Settings
from recommender.errors import InvalidInput
from recommender.filters import Filters
from recommender.service import Engine, ListOptions, Reindexer


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_reindexer(request: Request) -> Reindexer:
    return request.app.state.reindexer


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReindexerDep = Annotated[Reindexer, Depends(get_reindexer)]


def get_filters(
    section: Annotated[str | None, Query(max_length=200, description="only this section")] = None,
    since: Annotated[str | None, Query(max_length=40, description="published on or after (ISO date)")] = None,
    until: Annotated[str | None, Query(max_length=40, description="published on or before (ISO date)")] = None,
    lang: Annotated[str | None, Query(max_length=20, description="only this language")] = None,
    tag: Annotated[str | None, Query(max_length=200, description="only articles with this tag")] = None,
) -> Filters:
    return Filters.parse(section, since, until, lang, tag)


FiltersDep = Annotated[Filters, Depends(get_filters)]


def get_options(
    settings: SettingsDep,
    half_life: Annotated[float | None, Query(ge=0, le=36500, description=(
        "recency: days after which an article has lost half of the recency weight, to 2 significant "
        "digits; 0 turns it off (default: the server's half_life_days)"))] = None,
    max_age: Annotated[int | None, Query(ge=0, le=36500, description=(
        "only articles published in the last N days; 0: no limit (default: the server's max_age_days)"))] = None,
    mmr: Annotated[float | None, Query(ge=0, le=1, description=(
        "diversity, to 2 decimals: 1 ranks by relevance alone, lower values avoid near-identical angles"))] = None,
    cross_language: Annotated[bool, Query(description=(
        "also list articles in other languages than the source's (needs a multilingual model)"))] = False,
    min_confidence: Annotated[float | None, Query(ge=0, le=1, description=(
        "related lists: leave out items whose confidence is below this, to 2 decimals; 0 shows every "
        "ranked item (default: the server's min_confidence)"))] = None,
    fallback: Annotated[Literal["none", "section", "latest"] | None, Query(description=(
        "related lists: fill a list the floor left short with the newest articles of the article's "
        "section, or of the archive, marked source: fallback (default: the server's fallback)"))] = None,
) -> ListOptions:
    if cross_language and not settings.multilingual:
        raise InvalidInput(
            "cross-language lists need a multilingual model: set `model` to one and `multilingual = true`",
            field="cross_language",
        )
    # Rounded before they reach the list cache's key: 1.000001 and 1.000002
    # are one list, not two cache entries.
    return ListOptions.from_settings(
        settings, half_life_days=None if half_life is None else significant(half_life, 2), max_age_days=max_age,
        mmr_lambda=None if mmr is None else round(mmr, 2), cross_language=cross_language,
        min_confidence=None if min_confidence is None else round(min_confidence, 2), fallback=fallback,
    )


def significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (0 stays 0)."""
    return float(f"{value:.{digits}g}")


OptionsDep = Annotated[ListOptions, Depends(get_options)]
K = Annotated[int, Query(ge=1, le=100, description="how many items (1-100)")]


def check_api_key(settings: Settings, authorization: str | None) -> None:
    """Raise 403 when no key is configured, 401 for a missing or wrong one."""
    if not settings.api_key:
        raise HTTPException(403, "writes are disabled: no API key is configured (set RECOMMENDER_API_KEY)")
    scheme, _, token = (authorization or "").partition(" ")
    valid = hmac.compare_digest(token.strip().encode(), settings.api_key.encode())
    if scheme.lower() != "bearer" or not valid:
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


def require_api_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> None:
    check_api_key(settings, authorization)


def key_given(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>: the full read")] = None,
) -> bool:
    """Public reads take an optional key: a Bearer key must be right (401
    otherwise) and gives the full read; without one (or with another scheme,
    such as a site's Basic auth the browser forwards) the public answer."""
    scheme = (authorization or "").partition(" ")[0].lower()
    if scheme != "bearer" or not settings.api_key:
        return False
    check_api_key(settings, authorization)
    return True


def ops_access(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>, with ops_key_required")] = None,
) -> None:
    """/metrics, /openapi.json and /docs: public unless ``ops_key_required``."""
    if settings.ops_key_required:
        check_api_key(settings, authorization)


WriteAccess = Annotated[None, Depends(require_api_key)]
OpsAccess = Annotated[None, Depends(ops_access)]
KeyGiven = Annotated[bool, Depends(key_given)]
