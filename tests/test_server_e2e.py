"""`recommender serve` as a real process: writes show up in search and in older
articles' related lists within seconds, with one worker and with two."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from tests.helpers import AUTH, KEY, Server, build_index


def consistently(check, *, times: int = 8, timeout: float = 30.0) -> bool:
    """True once `check` holds `times` requests in a row (so every worker agrees)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        streak = streak + 1 if check() else 0
        if streak >= times:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_put_and_delete_reach_search_and_related_lists(settings, corpus, workers):
    build_index(settings, corpus)
    server = Server(settings.data_dir, settings.model, workers=workers, env={"RECOMMENDER_API_KEY": KEY})
    try:
        status, _ = server.request("PUT", "/v1/articles/new-talks", {"title": "nope", "body": "x"})
        assert status == 401
        # A 100,000-character query: refused with a 4xx (the limit or the HTTP
        # layer), never a 500 or a traceback, and the server keeps serving.
        status, body = server.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": "x" * 100_000}))
        assert 400 <= status < 500 and "Traceback" not in str(body)
        assert server.request("GET", "/healthz")[0] == 200
        doc = {"title": "Irena Kalvos envoy", "body": "irena kalvos ceasefire envoy mediators treaty border talks",
               "section": "world", "published": "2026-02-01"}
        status, body = server.request("PUT", "/v1/articles/new-talks", doc, AUTH)
        assert status == 200 and body["added"] == 1
        started = time.monotonic()

        def ids(path: str) -> list[str]:
            status, body = server.request("GET", path)
            assert status == 200, body
            return [i["id"] for i in body["items"]]

        search = "/v1/search?" + urllib.parse.urlencode({"q": "Irena Kalvos", "k": 5})
        related = "/v1/articles/talks-3/related?k=10"
        assert consistently(lambda: "new-talks" in ids(search)), server.output()
        assert consistently(lambda: "new-talks" in ids(related)), server.output()
        seen_after = time.monotonic() - started

        status, _ = server.request("DELETE", "/v1/articles/new-talks", headers=AUTH)
        assert status == 200
        assert consistently(lambda: "new-talks" not in ids(search))
        assert consistently(lambda: "new-talks" not in ids(related))
        assert server.request("GET", "/v1/articles/new-talks")[0] == 404
        print(f"{workers} worker(s): new article in search and related after {seen_after:.1f}s")
    finally:
        server.stop()
