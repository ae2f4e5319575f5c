"""The one error body every answer of the API carries, from a route, a
middleware or the HTTP protocol itself:

    {"error": {"status": 404, "code": "article_not_found", "message": "...", "field": "k"}}

(``field`` only where one input is at fault)."""

from __future__ import annotations

from typing import Any

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large",
              422: "invalid_input", 431: "headers_too_large"}


def error_body(status: int, code: str | None, message: str, field: str | None = None) -> dict[str, Any]:
    """The error body; ``code`` defaults to the status's name."""
    error: dict[str, Any] = {"status": status, "code": code or HTTP_CODES.get(status, "http_error"),
                             "message": message}
    if field:
        error["field"] = field
    return {"error": error}
