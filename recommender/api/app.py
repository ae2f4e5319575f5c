"""create_app(settings): lifespan, middleware and the one error shape."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from recommender import __version__
from recommender.api.metrics import Metrics
from recommender.config import Settings
from recommender.errors import RecommenderError

log = logging.getLogger(__name__)

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "body_too_large", 422: "invalid_input"}


def create_app(settings: Settings, *, load_embedder: Callable | None = None) -> FastAPI:
    """The service. The index, the store and the model load in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from recommender.service import Engine, Reindexer

        engine = Engine.open(settings, load_embedder)
        _ = engine.embedder  # load the model now, not on the first search
        _limit_torch_threads(settings)
        engine.live.watch(settings.index_poll_seconds)
        reindexer = Reindexer(settings, engine).start()
        app.state.engine, app.state.reindexer = engine, reindexer
        try:
            yield
        finally:
            reindexer.close()
            engine.close()

    app = FastAPI(
        title="recommender",
        version=__version__,
        description="Related articles and search for a news archive.",
        lifespan=lifespan,
        responses={422: {"model": _error_model()}},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()

    from recommender.api.routes import router
    from recommender.api.widget import router as widget_router

    app.include_router(router)
    app.include_router(widget_router)
    _install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "If-None-Match"],
        expose_headers=["ETag"],
        max_age=600,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def _limit_torch_threads(settings: Settings) -> None:
    """Workers share the cores: without a limit each one's torch takes them all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, settings.workers))
        torch.set_num_threads(threads)


def app_from_environment() -> FastAPI:
    """Factory for uvicorn workers: settings from RECOMMENDER_* variables."""
    return create_app(Settings.load())


def _error_model():
    from recommender.api.schemas import ErrorResponse

    return ErrorResponse


def error_response(status: int, code: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RecommenderError)
    async def domain_error(request: Request, exc: RecommenderError):
        return error_response(exc.status_code, exc.code, str(exc), getattr(exc, "field", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(p) for p in first.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header", "cookie"):
            location = location[1:]  # where it came from; the rest names the field
        field = ".".join(location) or None
        message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid request"))
        return error_response(422, "invalid_input", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; it has been logged")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 to a body over the limit, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({"error": {"status": 413, "code": "body_too_large",
                                     "message": f"request body is larger than {self.max_bytes} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count requests and time them, labelled by route template (not raw path)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
