"""Black-box behaviour on the demo corpus, against responses recorded before a
restructuring: the API's answers (lists, search, drafts, rules, errors, the
widget fragment), the CLI's output and the evaluation's JSON must stay the same.

Record anew (only when a change of behaviour is intended, and say so in the
commit):

    RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py -m slow
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recommender.config import Settings
from tests.helpers import HANG_GUARD, make_corpus, write_jsonl

GOLDEN = Path(__file__).parent / "golden" / "demo.json"
SAMPLE = Path(__file__).parents[1] / "recommender" / "data" / "sample_articles.jsonl"
KEY = "golden-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOLERANCE = 2e-3
"""Scores and confidences may move this much (float32 sums on another CPU); the order may then swap tied items."""

pytestmark = pytest.mark.slow

QUERIES = ["Irena Kalvos", "who pays for the new crossing over the harbour", "interest rates and inflation",
           "drought farmers water", "football title", "ceasefire talks in the highlands", "museum exhibition",
           "vaccine trial results"]


def _cli(data_dir: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RECOMMENDER_PRECISION": "float32", "RECOMMENDER_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, "-m", "recommender.cli", *args], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _record(tmp_path: Path) -> dict:
    data_dir = tmp_path / "demo"
    out: dict = {"cli": {}, "http": {}, "eval": {}}
    _cli(data_dir, "ingest", str(SAMPLE))
    report = json.loads(_cli(data_dir, "reindex", "--json"))
    out["cli"]["reindex_keys"] = sorted(report)
    out["cli"]["reindex_counts"] = {k: report[k] for k in ("articles", "embedded") if k in report}
    out["cli"]["related"] = _cli(data_dir, "related", "hl-0020", "--k", "5")
    out["cli"]["search"] = _cli(data_dir, "search", "Irena Kalvos", "--k", "5")

    settings = Settings.load({"backend": "torch", "data_dir": data_dir, "precision": "float32", "api_key": KEY}, environ={})
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    from recommender.api import create_app

    http = out["http"]
    with TestClient(create_app(settings)) as client:
        def get(name: str, path: str, **params) -> None:
            r = client.get(path, params=params)
            http[name] = {"status": r.status_code, "body": r.json() if "json" in r.headers.get("content-type", "")
                          else r.text}

        for article_id in ids:
            get(f"related {article_id}", f"/v1/articles/{article_id}/related")
        for article_id in ids[:: 6]:
            get(f"related {article_id} floor 0", f"/v1/articles/{article_id}/related", min_confidence=0, k=20)
            get(f"related {article_id} section", f"/v1/articles/{article_id}/related", fallback="section")
            get(f"related {article_id} latest", f"/v1/articles/{article_id}/related", fallback="latest", k=15)
            get(f"related {article_id} mmr", f"/v1/articles/{article_id}/related", mmr=0.7, min_confidence=0)
            get(f"related {article_id} business", f"/v1/articles/{article_id}/related", section="business",
                min_confidence=0)
            get(f"widget {article_id}", f"/widget/related/{article_id}")
        for query in QUERIES:
            get(f"search {query}", "/v1/search", q=query)
        get("search since", "/v1/search", q="the harbour bridge", since="2025-01-01", k=5)
        get("article public", f"/v1/articles/{ids[0]}")
        r = client.get(f"/v1/articles/{ids[0]}", headers=AUTH)
        http["article full"] = {"status": r.status_code, "body": r.json()}
        draft = {"title": "Harbour crossing costs rise again",
                 "body": "The council said the new bridge over the harbour will cost more than planned. " * 5, "k": 5}
        r = client.post("/v1/related", json=draft)
        http["draft"] = {"status": r.status_code, "body": r.json()}

        # Editors' rules, then the list they steer.
        source, pinned = ids[1], ids[30]
        before = client.get(f"/v1/articles/{source}/related", params={"min_confidence": 0}).json()["items"]
        blocked = before[0]["id"]
        for rule in ({"kind": "pin", "article": source, "target": pinned, "position": 2},
                     {"kind": "block", "article": source, "target": blocked},
                     {"kind": "boost", "target_type": "section", "target": "sport", "weight": 1.0}):
            r = client.post("/v1/rules", json=rule, headers=AUTH)
            body = r.json()
            body.pop("id", None)
            body.pop("created_at", None)
            http[f"rule {rule['kind']}"] = {"status": r.status_code, "body": body}
        get("related steered", f"/v1/articles/{source}/related", min_confidence=0)
        r = client.get("/v1/rules", headers=AUTH)
        http["rules"] = {"status": r.status_code,
                         "body": [{k: v for k, v in x.items() if k not in ("id", "created_at")}
                                  for x in r.json()["rules"]]}

        # Errors: one body shape everywhere.
        get("404 article", "/v1/articles/no-such-id/related")
        get("422 k", f"/v1/articles/{ids[0]}/related", k=0)
        get("422 fallback", f"/v1/articles/{ids[0]}/related", fallback="random")
        get("422 search", "/v1/search", q="")
        error_requests: dict[str, tuple[str, str, dict[str, Any]]] = {
            "401 put": ("PUT", f"/v1/articles/{ids[0]}", {"json": {"title": "x", "body": "y"}}),
            "413 post": ("POST", "/v1/articles", {"content": b"[" + b" " * 9_000_000 + b"]", "headers": AUTH}),
            "404 rule": ("DELETE", "/v1/rules/987654", {"headers": AUTH}),
            "405": ("PATCH", "/v1/search", {}),
        }
        for name, (method, path, kwargs) in error_requests.items():
            r = client.request(method, path, **kwargs)
            http[name] = {"status": r.status_code, "body": r.json()}
        r = client.get("/readyz")
        http["readyz keys"] = {"status": r.status_code, "body": sorted(r.json())}

    corpus = write_jsonl(tmp_path / "corpus.jsonl", make_corpus())
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"query": "bridge harbour cost", "relevant_ids": [f"bridge-{i}" for i in range(6)]},
        {"query": "drought farmers", "relevant_ids": [f"drought-{i}" for i in range(6)]},
        {"query": "interest rate inflation", "relevant_ids": [f"bank-{i}" for i in range(6)]},
    ])
    out["eval"]["related"] = json.loads(_cli(tmp_path / "unused", "eval", "related", "--dataset", str(corpus),
                                             "--data-dir", str(tmp_path / "eval-related"), "--json"))
    out["eval"]["search"] = json.loads(_cli(tmp_path / "unused", "eval", "search", "--dataset", str(corpus),
                                            "--queries", str(queries), "--data-dir", str(tmp_path / "eval-search"),
                                            "--json"))
    for report in out["eval"].values():
        _drop_volatile(report)
    return out


def _drop_volatile(value):
    """Timings, paths and dates differ from run to run."""
    if isinstance(value, dict):
        for key in [k for k in value if any(w in k for w in ("seconds", "time", "path", "dir", "built", "elapsed"))]:
            del value[key]
        for item in value.values():
            _drop_volatile(item)
    elif isinstance(value, list):
        for item in value:
            _drop_volatile(item)


def _same(expected, actual, where: str, problems: list[str]) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            problems.append(f"{where}: keys {sorted(set(expected) ^ set(actual))} differ")
        for key in set(expected) & set(actual):
            _same(expected[key], actual[key], f"{where}.{key}", problems)
    elif isinstance(expected, list) and isinstance(actual, list):
        if _is_items(expected) and _is_items(actual):
            _same_items(expected, actual, where, problems)
            return
        if len(expected) != len(actual):
            problems.append(f"{where}: {len(expected)} entries recorded, {len(actual)} now")
        for i, (e, a) in enumerate(zip(expected, actual)):
            _same(e, a, f"{where}[{i}]", problems)
    elif isinstance(expected, float) or isinstance(actual, float):
        if not (isinstance(actual, (int, float)) and isinstance(expected, (int, float))
                and abs(expected - actual) <= TOLERANCE):
            problems.append(f"{where}: {expected!r} recorded, {actual!r} now")
    elif expected != actual:
        problems.append(f"{where}: {str(expected)[:200]!r} recorded, {str(actual)[:200]!r} now")


def _is_items(value: list) -> bool:
    return bool(value) and all(isinstance(v, dict) and "id" in v and "score" in v for v in value)


def _same_items(expected: list, actual: list, where: str, problems: list[str]) -> None:
    """A ranked list: the same items; where the order differs, only between items whose scores tie."""
    if [e["id"] for e in expected] != [a["id"] for a in actual]:
        if sorted(e["id"] for e in expected) != sorted(a["id"] for a in actual):
            problems.append(f"{where}: items {[e['id'] for e in expected]} recorded, {[a['id'] for a in actual]} now")
            return
        for e, a in zip(expected, actual):
            if e["id"] != a["id"] and (e["score"] is None or a["score"] is None
                                       or abs(e["score"] - a["score"]) > TOLERANCE):
                problems.append(f"{where}: {e['id']} recorded before {a['id']}, their scores do not tie")
    by_id = {a["id"]: a for a in actual}
    for e in expected:
        _same(e, by_id[e["id"]], f"{where}[{e['id']}]", problems)


def test_demo_behaviour_is_unchanged(tmp_path):
    now = _record(tmp_path)
    if os.environ.get("RECORD_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"recorded {GOLDEN}")
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8"))
    problems: list[str] = []
    _same(recorded, json.loads(json.dumps(now)), "demo", problems)
    assert not problems, "\n".join(problems[:40])
