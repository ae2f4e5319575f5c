"""create_app(settings): lifespan, middleware and the one error shape."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from recommender import __version__
from recommender.api.errors import error_body
from recommender.api.metrics import Metrics
from recommender.config import Settings
from recommender.errors import RecommenderError, storage_fault

if TYPE_CHECKING:
    from recommender.embedders import LazyEmbedder

log = logging.getLogger(__name__)



def create_app(settings: Settings, *, embedder: LazyEmbedder | None = None) -> FastAPI:
    """The service. The index, the store and the model load in the lifespan;
    the embedder's backend is resolved there (``embedder``: a given one, in tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from recommender.service import Engine, Reindexer

        engine = Engine.open(settings, embedder, background_checksums=True)  # ready before big files are summed
        engine.embedder.get()  # load the model now, not on the first search
        _limit_torch_threads(settings)
        engine.query_embedder.prepare(background=True)  # queries answer now; ONNX ("auto") is prepared beside
        engine.live.watch(settings.index_poll_seconds)
        reindexer = Reindexer(settings, engine, on_run=app.state.metrics.reindex_run).start()
        app.state.engine, app.state.reindexer = engine, reindexer
        try:
            yield
        finally:
            # Background work gets half of shutdown_seconds (requests in flight
            # had the other half, in uvicorn), then it is left to stop with the
            # process: its threads are daemons and every publish is atomic.
            deadline = time.monotonic() + settings.shutdown_seconds / 2
            reindexer.close(deadline)
            engine.close(deadline)
            app.state.metrics.close()  # multiprocess: mark this worker dead

    app = FastAPI(
        title="recommender",
        version=__version__,
        description="Related articles and search for a news archive.",
        lifespan=lifespan,
        responses={422: {"model": _error_model()}},
        docs_url=None,  # served below: behind the key when ops_key_required, /docs only when api_docs
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()

    from recommender.api.routes import router
    from recommender.api.widget import router as widget_router

    app.include_router(router)
    app.include_router(widget_router)
    _install_docs(app, settings)
    _install_error_handlers(app)
    # Outermost last: metrics see every answer, security headers go on every
    # answer (CORS's too), the key is checked before a write's body is read,
    # and the body limit reads the body before the app parses it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(WriteKeyGuard, settings=settings)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "If-None-Match"],
        expose_headers=["ETag"],
        max_age=600,
    )
    app.add_middleware(SecurityHeaders, settings=settings)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def _install_docs(app: FastAPI, settings: Settings) -> None:
    from fastapi import Depends
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    from recommender.api.deps import ops_access

    guard = [Depends(ops_access)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    if settings.api_docs:
        @app.get("/docs", include_in_schema=False, dependencies=guard)
        def swagger_ui():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="recommender API")

        @app.get("/redoc", include_in_schema=False, dependencies=guard)
        def redoc():
            return get_redoc_html(openapi_url="/openapi.json", title="recommender API")


def _limit_torch_threads(settings: Settings) -> None:
    """Workers share the cores: without a limit each one's torch takes them all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, settings.workers))
        torch.set_num_threads(threads)


def app_from_environment() -> FastAPI:
    """Factory for uvicorn workers: the settings `recommender serve` handed over
    as JSON in $RECOMMENDER_SETTINGS_JSON (else from the RECOMMENDER_* variables),
    which also set the HTTP protocol's limits in this process."""
    from pydantic import ValidationError

    from recommender.api.server import GuardedHttpToolsProtocol
    from recommender.config import SETTINGS_JSON_ENV
    from recommender.errors import ConfigError

    handed = os.environ.get(SETTINGS_JSON_ENV)
    if handed:
        try:
            settings = Settings.model_validate_json(handed)
        except ValidationError as exc:
            raise ConfigError(f"${SETTINGS_JSON_ENV} does not hold valid settings: {exc}") from None
    else:
        settings = Settings.load()
    GuardedHttpToolsProtocol.configure(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
    )
    return create_app(settings)


def _error_model():
    from recommender.api.schemas import ErrorResponse

    return ErrorResponse


def error_response(status: int, code: str | None, message: str, field: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, field), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RecommenderError)
    async def domain_error(request: Request, exc: RecommenderError):
        message = str(exc)
        if exc.status_code >= 500:  # may name paths or settings: logged, not shown
            log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, message)
            message = exc.public_message or "internal error; it has been logged"
        return error_response(exc.status_code, exc.code, message, getattr(exc, "field", None))

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
        return error_response(exc.status_code, None, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # A full disk or a refused write below the store's boundary (which
        # names its file itself): 507 or 503 with the one error body, not 500.
        fault = storage_fault(exc, getattr(exc, "filename", None) or request.app.state.settings.data_dir)
        if fault is not None:
            return await domain_error(request, fault)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; it has been logged")


class BodyLimit:
    """Read a request's body before the app does, and answer 413 to one over
    the limit, whether declared (Content-Length) or streamed (chunked). The
    app then reads the body from memory."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        if declared is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)  # no body
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def buffered_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, buffered_receive, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, "body_too_large", f"request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


class WriteKeyGuard:
    """The API key of a write is checked before its body is read: a client
    without it gets 401 (403 with writes disabled) and costs no parsing. The
    routes check the key again (their ``WriteAccess`` dependency)."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _is_write(scope["method"], scope["path"]):
            from fastapi import HTTPException

            from recommender.api.deps import check_api_key

            authorization = dict(scope.get("headers") or ()).get(b"authorization")
            try:
                check_api_key(self.settings, authorization.decode("latin-1") if authorization else None)
            except HTTPException as exc:
                response = error_response(exc.status_code, None, str(exc.detail), headers=exc.headers)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _is_write(method: str, path: str) -> bool:
    """The key-protected routes: every method on /v1/rules, and PUT, POST and
    DELETE on /v1/articles (reads of articles and POST /v1/related are public)."""
    if path == "/v1/rules" or path.startswith("/v1/rules/"):
        return method != "OPTIONS"
    if path == "/v1/articles" or path.startswith("/v1/articles/"):
        return method in ("PUT", "POST", "DELETE")
    return False


EDITOR_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; font-src https://fonts.gstatic.com; "
            "worker-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """``nosniff`` and a referrer policy on every answer; a Content-Security-
    Policy on HTML: the editors' page may only load its own files and may not
    be framed; the widget fragment may load nothing, and be framed only by the
    configured CORS origins. ``Vary`` values are sent once each."""

    def __init__(self, app, settings: Settings):
        self.app = app
        origins = " ".join(settings.allowed_origins) or "'none'"
        self.fragment_csp = f"default-src 'none'; frame-ancestors {origins}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        async def secured_send(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"vary"]
                vary = [v for k, v in message.get("headers", []) if k.lower() == b"vary"]
                if vary:
                    values = dict.fromkeys(t.strip() for v in vary for t in v.split(b",") if t.strip())
                    headers.append((b"vary", b", ".join(values)))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
                kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if kind.startswith(b"text/html"):
                    headers += self._html_headers(path)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured_send)

    def _html_headers(self, path: str) -> list[tuple[bytes, bytes]]:
        if path.startswith("/widget/"):  # a fragment that sites include, and may frame
            return [(b"content-security-policy", self.fragment_csp)]
        csp = DOCS_CSP if path in ("/docs", "/redoc") else EDITOR_CSP
        return [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY")]


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
