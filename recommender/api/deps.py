"""Typed dependencies: what a route may touch is in its signature."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request

from recommender.config import Settings
from recommender.filters import Filters
from recommender.service import Engine, Reindexer


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
) -> Filters:
    return Filters.parse(section, since, until, lang)


FiltersDep = Annotated[Filters, Depends(get_filters)]
K = Annotated[int, Query(ge=1, le=100, description="how many items (1-100)")]


def require_api_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> None:
    if not settings.api_key:
        raise HTTPException(403, "writes are disabled: no API key is configured (set RECOMMENDER_API_KEY)")
    scheme, _, token = (authorization or "").partition(" ")
    valid = hmac.compare_digest(token.strip().encode(), settings.api_key.encode())
    if scheme.lower() != "bearer" or not valid:
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


WriteAccess = Annotated[None, Depends(require_api_key)]
