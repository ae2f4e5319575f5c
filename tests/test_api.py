"""The API against the real app: real store, real FAISS index, a real (tiny) model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from recommender.api import create_app
from tests.helpers import AUTH, KEY, assert_error, build_index


@pytest.fixture
def api_settings(settings):
    return settings.replace(api_key=KEY, cors_origins="https://news.example", max_body_bytes=200_000,
                            index_poll_seconds=0.1)


@pytest.fixture
def client(api_settings, corpus):
    rows = list(corpus) + [{
        "id": "xss", "title": "<script>alert(1)</script> harbour <img src=x onerror=alert(1)>",
        "body": "bridge harbour <b>construction</b> cost <script>alert(2)</script> council", "section": "local",
    }]
    build_index(api_settings, rows, legacy_urls={"xss": "javascript:alert(1)"})
    with TestClient(create_app(api_settings)) as client:
        yield client


def test_related_shape_and_caching(client):
    r = client.get("/v1/articles/talks-1/related", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["article_id"] == "talks-1" and len(body["items"]) == 4
    assert set(body["items"][0]) == {"id", "title", "url", "published", "section", "score", "source", "confidence",
                                     "reasons"}
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    again = client.get("/v1/articles/talks-1/related", params={"k": 4}, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == r.headers["etag"]


def test_search_has_highlighted_escaped_snippets(client):
    items = client.get("/v1/search", params={"q": "harbour bridge", "k": 10}).json()["items"]
    assert items and all("snippet" in i for i in items)
    assert any("<mark>" in i["snippet"] for i in items)
    xss = [i for i in items if i["id"] == "xss"]
    assert xss and "<script>" not in xss[0]["snippet"] and "&lt;script&gt;" in xss[0]["snippet"]
    assert "<b>" not in xss[0]["snippet"]


def test_filters_fill_k_when_enough_articles_match(client):
    # 6 'world' articles (the talks topic); ask a football article for 5 of them.
    items = client.get("/v1/articles/football-0/related", params={"k": 5, "section": "world"}).json()["items"]
    assert len(items) == 5 and all(i["section"] == "world" for i in items)
    hits = client.get("/v1/search", params={"q": "striker goal", "k": 6, "section": "world"}).json()["items"]
    assert len(hits) == 6 and all(h["section"] == "world" for h in hits)
    dated = client.get("/v1/articles/talks-0/related", params={"k": 100, "since": "2025-03-01", "until": "2025-04-30"})
    assert dated.status_code == 200
    assert all("2025-03-01" <= i["published"] <= "2025-04-30" for i in dated.json()["items"])
    assert len(dated.json()["items"]) > 0


@pytest.mark.parametrize(
    "path, params, field",
    [
        ("/v1/articles/talks-1/related", {"k": 0}, "k"),
        ("/v1/articles/talks-1/related", {"k": 101}, "k"),
        ("/v1/articles/talks-1/related", {"k": "ten"}, "k"),
        ("/v1/articles/talks-1/related", {"since": "31/12/2024"}, "since"),
        ("/v1/search", {"q": ""}, "q"),
        ("/v1/search", {"q": "x" * 1001}, "q"),
        ("/v1/search", {}, "q"),
        ("/v1/search", {"q": "bridge", "until": "2024-02-30"}, "until"),
    ],
)
def test_bad_parameters_get_422_naming_the_field(client, path, params, field):
    assert_error(client.get(path, params=params), 422, field)


def test_unknown_ids_and_routes_get_404(client):
    assert_error(client.get("/v1/articles/nope/related"), 404)
    assert_error(client.get("/v1/articles/nope"), 404)
    assert_error(client.get("/widget/related/nope"), 404)
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.get("/static/../../etc/passwd"), 404)


def test_article_and_draft(client):
    article = client.get("/v1/articles/bank-2").json()
    assert article["id"] == "bank-2" and article["body"]
    r = client.post("/v1/related", json={"title": "rates", "body": "inflation mortgage lending currency", "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert all(i["id"].startswith("bank-") for i in r.json()["items"])
    assert_error(client.post("/v1/related", json={"title": "x"}), 422, "body")


def test_writes_need_the_key_and_change_nothing_without_it(client):
    doc = {"title": "striker", "body": "club goal striker stadium fans"}
    assert_error(client.put("/v1/articles/new-1", json=doc), 401)
    assert_error(client.put("/v1/articles/new-1", json=doc, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.delete("/v1/articles/talks-1", headers={"Authorization": "Basic x"}), 401)
    assert_error(client.get("/v1/articles/new-1"), 404)
    assert client.get("/v1/articles/talks-1").status_code == 200


def test_no_key_configured_means_writes_are_closed(settings, corpus):
    build_index(settings, corpus[:6])
    with TestClient(create_app(settings)) as client:
        assert_error(client.put("/v1/articles/a", json={"title": "t", "body": "b"}, headers=AUTH), 403)


def test_put_and_delete_show_up_in_lists_within_seconds(client):
    doc = {"title": "Irena Kalvos ceasefire", "body": "irena kalvos envoy ceasefire talks mediators treaty border",
           "section": "world", "published": "2026-01-01"}
    r = client.put("/v1/articles/fresh-talks", json=doc, headers=AUTH)
    assert r.status_code == 200 and r.json()["added"] == 1

    def in_search():
        return "fresh-talks" in [i["id"] for i in client.get("/v1/search", params={"q": "Irena Kalvos"}).json()["items"]]

    def in_related_of_older():
        items = client.get("/v1/articles/talks-2/related", params={"k": 10}).json()["items"]
        return "fresh-talks" in [i["id"] for i in items]

    engine = client.app.state.engine
    assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)  # the background job published the write
    assert in_search() and in_related_of_older()
    assert client.delete("/v1/articles/fresh-talks", headers=AUTH).status_code == 200
    assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)
    assert not in_search() and not in_related_of_older()
    assert_error(client.delete("/v1/articles/fresh-talks", headers=AUTH), 404)


def test_batch_keeps_good_records(client):
    batch = [{"id": "b1", "title": "t", "body": "club goal"}, {"id": "b2", "title": "t"}, "nonsense",
             {"id": "b3", "title": "t", "body": "drought rain", "published": "not a date"}]
    r = client.post("/v1/articles", json=batch, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["added"] == 1 and [x["index"] for x in body["rejected"]] == [1, 2, 3]
    assert client.get("/v1/articles/b1").status_code == 200


def test_body_limit(client):
    r = client.put("/v1/articles/big", json={"title": "t", "body": "x" * 300_000}, headers=AUTH)
    assert_error(r, 413)


def test_widget_fragment_escapes_everything(client):
    r = client.get("/widget/related/bridge-0", params={"k": 31})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;" in r.text and "<script>" not in r.text and "<img" not in r.text
    assert "javascript:" not in r.text and r.headers["etag"]
    js = client.get("/widget.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "textContent" in js.text
    assert client.get("/").status_code == 200 and "search-form" in client.get("/").text


def test_cors_only_for_configured_origins(client):
    ok = client.get("/v1/articles/talks-1/related", headers={"Origin": "https://news.example"})
    assert ok.headers.get("access-control-allow-origin") == "https://news.example"
    other = client.get("/v1/articles/talks-1/related", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["articles"] == 31
    client.get("/v1/articles/talks-1/related")
    text = client.get("/metrics").text
    assert 'recommender_requests_total{method="GET",route="/v1/articles/{article_id}/related",status="200"}' in text
    assert "recommender_request_seconds_bucket" in text and "recommender_index_articles 31" in text
    assert "recommender_index_age_seconds" in text


def test_503_before_any_index(settings):
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503)
        assert_error(client.get("/v1/search", params={"q": "x"}), 503)
        assert_error(client.get("/v1/articles/x/related"), 503)


def test_metadata_change_is_reflected_in_filtered_lists_within_seconds(client):
    def world():
        items = client.get("/v1/articles/football-0/related", params={"k": 6, "section": "world"}).json()["items"]
        return [i["id"] for i in items]

    assert "talks-2" in world()
    article = client.get("/v1/articles/talks-2").json()
    r = client.put("/v1/articles/talks-2", json={"title": article["title"], "body": article["body"],
                                                 "section": "local", "published": article["published"]}, headers=AUTH)
    assert r.json()["updated"] == 1
    # A change of metadata alone is a write like any other: the background
    # reindexer publishes it as a segment, and the filters read its columns.
    engine = client.app.state.engine
    assert engine.live.wait_for(engine.stores.get().seq(), timeout=600)
    assert "talks-2" not in world()
    assert client.get("/v1/articles/talks-2/related", params={"k": 3, "section": "local"}).status_code == 200
