"""One error shape on every route, as datasette checks it: the test walks
``app.routes`` and drives each route into every error it can answer (wrong
method, missing or wrong key, writes disabled, unknown ids, bad parameters,
malformed and oversized bodies, no index yet), then checks each body."""

from __future__ import annotations

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError

from recommender.api import create_app
from recommender.api.schemas import ErrorResponse
from tests.helpers import AUTH, KEY, build_index

PATH_VALUES = {"article_id": "no-such-id", "rule_id": "987654", "name": "no-such-file"}
KNOWN_PATH_VALUES = {"article_id": "talks-1", "rule_id": "1", "name": "widget.js"}
BAD_PATH_VALUES = {"rule_id": "zero"}
METHODS = ("GET", "POST", "PUT", "DELETE")


def _api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI >= 0.16x keeps
    an included router as one entry of ``app.routes``)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def _path(route: APIRoute, values: dict[str, str]) -> str:
    path = route.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _methods(route: APIRoute) -> set[str]:
    """The route's methods (an APIRoute always has some: GET where none are named)."""
    assert route.methods is not None, route.path
    return route.methods


def _is_write(route: APIRoute, method: str) -> bool:
    return route.path.startswith("/v1/rules") or (route.path.startswith("/v1/articles") and method != "GET")


def _takes(route: APIRoute, name: str) -> bool:
    return any(p.name == name for p in route.dependant.query_params) or any(
        name in {q.name for q in d.query_params} for d in route.dependant.dependencies
    )


def _check(response, status: int, seen: list) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    try:
        body = ErrorResponse.model_validate_json(response.content)
    except ValidationError as exc:  # pragma: no cover - the message names the route
        raise AssertionError(f"{response.request.method} {response.request.url}: {response.text}") from exc
    assert body.error.status == status and body.error.code and body.error.message
    assert response.headers["content-type"].startswith("application/json")
    seen.append((response.request.method, response.request.url.path, status))


def test_every_error_of_every_route_has_the_one_shape(settings, corpus):
    settings = settings.replace(api_key=KEY, max_body_bytes=10_000)
    build_index(settings, corpus)
    app = create_app(settings)
    routes = _api_routes(app.routes)
    assert len(routes) >= 15
    seen: list = []
    with TestClient(app) as client:
        for route in routes:
            path = _path(route, PATH_VALUES)
            for method in sorted(set(METHODS) - _methods(route)):
                if not any(r.path == route.path and method in _methods(r) for r in routes):
                    # with the key: the write guard answers 401 before routing
                    _check(client.request(method, _path(route, KNOWN_PATH_VALUES), headers=AUTH), 405, seen)
            for method in _methods(route) & set(METHODS):
                write = _is_write(route, method)
                if write:
                    _check(client.request(method, path), 401, seen)
                    _check(client.request(method, path, headers={"Authorization": "Bearer wrong"}), 401, seen)
                if method in ("POST", "PUT"):
                    big = b"{" + b" " * 20_000 + b"}"
                    _check(client.request(method, path, content=big, headers={**AUTH, "Content-Type": "application/json"}),
                           413, seen)
                    _check(client.request(method, path, content=b"{not json",
                                          headers={**AUTH, "Content-Type": "application/json"}), 422, seen)
                if _takes(route, "k"):
                    _check(client.request(method, _path(route, KNOWN_PATH_VALUES), params={"k": 0}), 422, seen)
                    _check(client.request(method, _path(route, KNOWN_PATH_VALUES), params={"k": "many"}), 422, seen)
                if _takes(route, "since"):
                    _check(client.request(method, _path(route, KNOWN_PATH_VALUES), params={"since": "yesterday"}),
                           422, seen)
                for name, bad in BAD_PATH_VALUES.items():
                    if "{" + name + "}" in route.path:
                        _check(client.request(method, _path(route, {**PATH_VALUES, name: bad}), headers=AUTH), 422,
                               seen)
                if any("{" + name + "}" in route.path for name in PATH_VALUES) and method in ("GET", "DELETE"):
                    _check(client.request(method, path, headers=AUTH if write else {}), 404, seen)
        _check(client.get("/no/such/route"), 404, seen)

    # Writes turned off (no key): 403 on every write, whatever the body.
    with TestClient(create_app(settings.replace(api_key=""))) as client:
        for route in routes:
            for method in _methods(route) & set(METHODS):
                if _is_write(route, method):
                    _check(client.request(method, _path(route, KNOWN_PATH_VALUES), headers=AUTH), 403, seen)

    statuses = {s for _, _, s in seen}
    assert statuses >= {401, 403, 404, 405, 413, 422}
    assert {p for _, p, s in seen if s == 413} >= {"/v1/articles", "/v1/related", "/v1/rules", "/v1/articles/no-such-id"}


def test_reads_before_any_index_answer_503_in_the_one_shape(settings):
    seen: list = []
    app = create_app(settings)
    with TestClient(app) as client:
        for path in ("/v1/articles/x/related", "/v1/search?q=harbour", "/readyz", "/widget/related/x"):
            _check(client.get(path), 503, seen)
        _check(client.post("/v1/related", json={"title": "t", "body": "harbour bridge"}), 503, seen)
        _check(client.get("/v1/search", params={"q": " "}), 422, seen)  # a bad query is refused first
