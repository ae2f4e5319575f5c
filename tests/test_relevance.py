"""Ranking, the confidence floor and the fallback, on real SQLite, FAISS and
a real (tiny) model; the packaged MiniLM for the no-coverage cases."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from recommender.config import Settings
from recommender.rank import related as related_module
from recommender.rank.related import related_to_row
from recommender.rank.signals import SIGNALS
from recommender.ranker import DEFAULT_MODEL, Ranker
from recommender.service import Engine
from tests.helpers import FILLER, HANG_GUARD, PEACE_TALKS, TOPICS, Server, build_index, write_jsonl


def event_corpus(seed: int = 11) -> list[dict]:
    """300 articles, 5 topics x 60. Each event is three articles of three
    different topics that share three names: what binds them is lexical
    (names), not the topic vectors."""
    rng = np.random.default_rng(seed)
    rows = []
    topics = list(TOPICS.items())
    for e in range(100):
        names = [w.capitalize() for w in rng.choice(FILLER, 3, replace=False)]
        for j in range(3):
            topic, words = topics[(e + j) % 5]
            vocab = words.split()
            sentences = []
            for _ in range(5):
                picked = list(rng.choice(vocab, 5)) + list(rng.choice(FILLER, 5))
                rng.shuffle(picked)
                sentences.append("the " + " ".join(picked) + " with " + " and ".join(names) + ".")
            rows.append({"id": f"e{e}-{j}", "title": f"{vocab[e % len(vocab)]} report", "body": " ".join(sentences),
                         "published": f"2025-03-{1 + e % 28:02d}", "section": topic, "group": f"event-{e}"})
    return rows


def top_ids(version, settings, k=10):
    return [[h.doc_id for h in related_to_row(version, row, k, settings)] for row in range(len(version))]


def test_pooled_ranking_matches_exhaustive_and_a_dense_only_pool_does_not(settings, monkeypatch):
    settings = settings.replace(min_confidence=0.0)
    build_index(settings, event_corpus())
    with Engine.open(settings) as engine:
        version = engine.live.current
        assert len(version) == 300
        exhaustive = top_ids(version, settings.replace(candidates=10**6))
        pooled = top_ids(version, settings.replace(candidates=8))  # a pool of 4 x k = 40 of 300

        def overlap(lists) -> float:
            return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(lists, exhaustive)]))

        assert overlap(pooled) >= 0.9

        def dense_only(version, query, pool):
            _, ids = version.docs.search(query.vector.reshape(1, -1), pool + 1)
            return np.sort(version.rows_of(ids[0][ids[0] >= 0]))

        monkeypatch.setattr(related_module, "candidate_rows", dense_only)
        assert overlap(top_ids(version, settings.replace(candidates=8))) < 0.9  # the test can fail


def test_fallback_fills_a_short_list_and_is_marked(settings, corpus):
    from fastapi.testclient import TestClient

    from recommender.api import create_app

    build_index(settings, corpus)
    with TestClient(create_app(settings)) as client:
        plain = client.get("/v1/articles/football-0/related", params={"k": 5, "min_confidence": 0}).json()["items"]
        assert len(plain) == 5 and all(i["source"] == "auto" and 0 <= i["confidence"] <= 1 for i in plain)
        assert all("shared" in i["reasons"] for i in plain)
        nothing = client.get("/v1/articles/football-0/related", params={"k": 5, "min_confidence": 1}).json()
        assert nothing["items"] == []  # nothing rather than filler
        filled = client.get("/v1/articles/football-0/related",
                            params={"k": 5, "min_confidence": 1, "fallback": "section"}).json()["items"]
        assert len(filled) == 5 and {i["source"] for i in filled} == {"fallback"}
        assert {i["section"] for i in filled} == {"local"} and "football-0" not in {i["id"] for i in filled}
        assert [i["published"] for i in filled] == sorted((i["published"] for i in filled), reverse=True)
        latest = client.get("/v1/articles/talks-0/related",
                            params={"k": 3, "min_confidence": 1, "fallback": "latest"}).json()["items"]
        assert len(latest) == 3 and {i["source"] for i in latest} == {"fallback"}
        html = client.get("/widget/related/football-0", params={"min_confidence": 1, "fallback": "section"}).text
        assert "More from local" in html and 'data-source="fallback"' in html
        assert client.get("/v1/articles/football-0/related", params={"fallback": "sideways"}).status_code == 422


def test_packaged_ranker_is_calibrated_and_explains_itself():
    ranker = Ranker.load(DEFAULT_MODEL, SIGNALS)
    assert ranker.calibration_names and np.all(ranker.calibration_weights >= 0)
    rng = np.random.default_rng(1)
    values = np.abs(rng.standard_normal((400, len(ranker.names)))) * 0.3
    base = ranker.confidence(ranker.score(values), values)
    assert base.min() >= 0 and base.max() <= 1
    # More alike, by any measure, is never less confident.
    for name in ranker.calibration_names:
        more = values.copy()
        more[:, ranker.names.index(name)] += 0.1
        assert np.all(ranker.confidence(ranker.score(more), more) >= base - 1e-12)
    assert ranker.info.get("floor") is not None and Settings().min_confidence == ranker.info["floor"]
    assert set(ranker.info["leave one set out story map"]) >= {"gva_dev", "newswcl50", "wikiref220", "bbc_news"}


def test_calibration_recovers_known_probabilities():
    """Fit on synthetic lists whose chance of being related is known: the
    confidence of the shown items matches what happens."""
    from recommender.rank.signals import SIGNALS
    from recommender.training import SetData, fit, ranked

    rng = np.random.default_rng(0)
    names = list(SIGNALS)
    sets = []
    for s in range(2):
        n_queries, per = 400, 40
        x = rng.standard_normal((n_queries * per, len(names))).astype(np.float32)
        p = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 1.0 * x[:, 6] - 2.0)))  # semantic up, days_apart down
        y = rng.random(len(p)) < p
        query = np.repeat(np.arange(n_queries), per)
        sets.append(SetData(f"s{s}", x, y, query, np.arange(len(y)), np.arange(len(y)), [set()] * n_queries))
    model = fit(sets, names)
    assert model.weights[0] > 0 and model.weights[6] < 0
    shown_conf, shown_y = [], []
    for data in sets:
        for q in range(400):
            rows, _, confidence = ranked(model, data, q, 10)
            shown_conf.append(confidence)
            shown_y.append(data.y[rows])
    conf, y = np.concatenate(shown_conf), np.concatenate(shown_y)
    bands = [(conf >= low) & (conf < high) for low, high in ((0.0, 0.3), (0.3, 0.6), (0.6, 1.01))]
    checked = [band for band in bands if band.sum() > 200]  # 73, 5534 and 2393 of 8000 items here
    assert len(checked) >= 2
    for band in checked:
        assert abs(conf[band].mean() - y[band].mean()) < 0.05
    assert abs(conf.mean() - y.mean()) < 0.02


def test_eval_lists_are_the_http_lists(tmp_path, settings, corpus):
    """`recommender eval` scores the lists a widget gets: the same items, in
    the same order, as GET /v1/articles/{id}/related?k=100 on a real server."""
    dataset = write_jsonl(tmp_path / "set.jsonl", corpus)
    lists = tmp_path / "lists.jsonl"
    data_dir = tmp_path / "eval-data"
    run = subprocess.run(
        [sys.executable, "-m", "recommender.cli", "eval", "related", "--dataset", str(dataset), "--json",
         "--data-dir", str(data_dir), "--model", str(settings.model), "--lists", str(lists)],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=HANG_GUARD,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["systems"]["recommender"]["story map"] > 0
    evaluated = [json.loads(line) for line in lists.read_text().splitlines()]
    assert len(evaluated) == report["queries"] > 0
    server = Server(data_dir, settings.model, env={"RECOMMENDER_MIN_CONFIDENCE": str(Settings().min_confidence)})
    try:
        for row in evaluated:
            status, body = server.request("GET", f"/v1/articles/{row['id']}/related?k=100")
            assert status == 200
            assert [i["id"] for i in body["items"]] == row["items"]
    finally:
        server.stop()


SEED = {
    "id": "karabakh-1",
    "title": "Minsk Group co-chairs urge Armenia and Azerbaijan to return to talks on Nagorno-Karabakh",
    "body": (
        "The co-chairs of the OSCE Minsk Group, the mediators from France, Russia and the United States, called on "
        "Armenia and Azerbaijan on Thursday to resume negotiations over Nagorno-Karabakh after a week of shelling "
        "along the line of contact.\n\n"
        "Speaking after separate meetings with the foreign ministers in Yerevan and Baku, the envoys said a "
        "settlement had to rest on the Madrid Principles: the return of districts around Nagorno-Karabakh, an "
        "interim status for the region, a corridor to Armenia and the right of displaced people to return.\n\n"
        "Azerbaijan's foreign minister said Baku would not accept a frozen conflict, while Armenia's said any "
        "agreement had to guarantee the security of the Karabakh Armenians. The co-chairs proposed a monitoring "
        "mechanism for the ceasefire and a meeting of the two presidents in Vienna before the end of the year."
    ),
    "published": "2024-03-14", "section": "World",
}


@pytest.mark.slow
def test_an_article_nothing_else_covers_gets_no_filler(tmp_path):
    """The seed case: a Karabakh mediation article in an archive with no
    Caucasus coverage (the sample corpus without its own peace talks) gets an
    empty list, or fallback items only, marked as such; an ordinary article
    keeps its list."""
    settings = Settings.load({"backend": "torch", "data_dir": tmp_path / "data"}, environ={})
    text = (resources.files("recommender") / "data" / "sample_articles.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if r["id"] not in PEACE_TALKS] + [SEED]
    build_index(settings, rows)
    with Engine.open(settings) as engine:
        assert engine.related("karabakh-1", 5) == []
        from recommender.rank.lists import ListOptions

        filled = engine.related("karabakh-1", 5, options=ListOptions.from_settings(settings, fallback="latest"))
        assert len(filled) == 5 and {i.hit.source for i in filled} == {"fallback"}
        assert engine.related("hl-0003", 5)  # the harbour bridge has its own coverage
