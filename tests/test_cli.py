"""The command line, run as users run it: in a subprocess, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recommender.cli import build_parser
from tests.conftest import write_jsonl

COMMANDS = ["ingest", "reindex", "rules", "related", "search", "eval", "serve"]


def run(*args, env_extra=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "recommender.cli", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check and result.returncode not in (0,):
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys, recommender, recommender.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for sub in ['ingest', 'reindex', 'rules', 'related', 'search', 'eval', 'serve']:\n"
        "    try:\n        c.main([sub, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'faiss', 'transformers', 'fastapi', 'uvicorn', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_data_dir(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = sub.format_help()
    assert "examples:" in text and f"recommender {command}" in text
    assert "--data-dir" in text


def test_end_to_end(tmp_path, corpus, tiny_model_dir):
    data = tmp_path / "data"
    good = write_jsonl(tmp_path / "a.jsonl", corpus)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "x1", "title": "t", "body": "club goal"}\n{broken\n{"id": "x2", "title": "t"}\n')
    common = ["--data-dir", data, "--model", tiny_model_dir]

    result = run("ingest", good, bad, *common, check=False)
    assert result.returncode == 3  # partial: some lines rejected
    assert "31 added, 0 updated, 0 unchanged, 2 rejected" in result.stdout
    assert "b.jsonl:2: invalid JSON" in result.stderr and "b.jsonl:3: missing field 'body'" in result.stderr
    assert "unchanged" in run("ingest", good, *common).stdout

    summary = json.loads(run("reindex", "--json", "--no-progress", *common).stdout)
    assert summary["embedded"] == 31 and summary["published"]
    assert set(summary) >= {"embedded", "skipped", "deleted", "seconds", "docs_per_second"}
    assert json.loads(run("reindex", "--json", *common).stdout)["embedded"] == 0

    related = json.loads(run("related", "talks-1", "--k", "3", "--json", *common).stdout)
    assert related["article_id"] == "talks-1" and len(related["items"]) == 3
    assert set(related["items"][0]) == {"id", "title", "url", "published", "section", "score", "source", "confidence",
                                        "reasons"}
    hits = json.loads(run("search", "ceasefire envoy", "--json", *common).stdout)["items"]
    assert hits and hits[0]["id"].startswith("talks-")
    assert "1." in run("search", "harbour bridge", *common).stdout

    # The env var works like --data-dir.
    env = {"RECOMMENDER_DATA_DIR": str(data), "RECOMMENDER_MODEL": str(tiny_model_dir)}
    assert json.loads(run("related", "talks-1", "--json", env_extra=env).stdout)["items"]


def test_clear_errors(tmp_path, tiny_model_dir):
    common = ["--data-dir", tmp_path / "d", "--model", tiny_model_dir]
    result = run("related", "x", *common, check=False)
    assert result.returncode == 1 and "`recommender reindex`" in result.stderr
    result = run("related", "x", "--k", "0", *common, check=False)
    assert result.returncode == 2 and "between 1 and 100" in result.stderr
    result = run("reindex", *common, check=False)
    assert result.returncode == 1 and "recommender ingest" in result.stderr
    result = run("ingest", tmp_path / "missing.jsonl", *common, check=False)
    assert result.returncode == 1 and "missing.jsonl" in result.stderr


def test_model_mismatch_is_refused(tmp_path, corpus, tiny_model_dir):
    common = ["--data-dir", tmp_path / "d"]
    run("ingest", write_jsonl(tmp_path / "a.jsonl", corpus[:5]), *common)
    run("reindex", "--no-progress", "--model", tiny_model_dir, *common)
    result = run("related", corpus[0]["id"], *common, check=False)  # default model configured
    assert result.returncode == 1
    assert "built with model" in result.stderr and "all-MiniLM-L6-v2" in result.stderr


def test_reindex_exit_code_3_when_some_articles_fail(tmp_path, corpus, tiny_model_dir, monkeypatch, capsys):
    from recommender import cli
    from recommender.embed import load_embedder
    from tests.conftest import PoisonEmbedder

    rows = corpus[:5] + [{"id": "bad-1", "title": "POISON", "body": "The model chokes on this one."}]
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    assert cli.main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", rows)), *common]) == 0
    monkeypatch.setattr(cli, "_load_embedder", lambda s: PoisonEmbedder(load_embedder(s)))
    capsys.readouterr()
    assert cli.main(["reindex", "--no-progress", "--json", *common]) == 3
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["failed"] == ["bad-1"] and summary["embedded"] == 5 and summary["published"]
    monkeypatch.undo()
    assert cli.main(["reindex", "--no-progress", *common]) == 0
    assert "1 embedded" in capsys.readouterr().out


def test_rules_command(tmp_path, corpus, tiny_model_dir, capsys):
    from recommender import cli

    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    assert cli.main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", corpus)), *common]) == 0
    assert cli.main(["rules", "list", *common]) == 0 and "no rules" in capsys.readouterr().out
    assert cli.main(["rules", "add", "pin", "--article", "talks-1", "--target", "bridge-2", "--position", "2", *common]) == 0
    assert cli.main(["rules", "add", "boost", "--target", "world", "--type", "section", "--weight", "2", *common]) == 0
    capsys.readouterr()
    assert cli.main(["rules", "add", "pin", "--article", "talks-1", "--target", "bridge-2", *common]) == 2
    assert "position" in capsys.readouterr().err
    assert cli.main(["rules", "add", "block", "--target", "nope", *common]) == 1
    assert cli.main(["rules", "list", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)["rules"]
    assert [(r["kind"], r["target"]) for r in listed] == [("pin", "bridge-2"), ("boost", "world")]
    assert cli.main(["rules", "delete", str(listed[0]["id"]), *common]) == 0
    assert cli.main(["rules", "delete", "999", *common]) == 1
    capsys.readouterr()
    assert cli.main(["rules", "list", *common]) == 0
    assert "boost  section world by 2 everywhere" in capsys.readouterr().out


def test_pinned_items_print_without_a_score(capsys):
    import argparse

    from recommender.cli import _print_items

    items = [{"id": "a", "title": "A", "published": None, "score": None, "source": "manual"},
             {"id": "b", "title": "B", "published": "2025-01-02", "score": 1.5, "source": "auto"},
             {"id": "c", "title": "C", "published": None, "score": 2.0, "source": "auto", "confidence": 0.734},
             {"id": "d", "title": "D", "published": None, "score": None, "source": "fallback"}]
    assert _print_items(argparse.Namespace(json=False), {"items": items}) == 0
    out = capsys.readouterr().out.splitlines()
    assert "pinned  a" in out[0] and "1.50  b" in out[1] and "73%  c" in out[2] and "filler  d" in out[3]
    assert _print_items(argparse.Namespace(json=False), {"article_id": "x", "items": []}) == 0
    assert "confidence floor" in capsys.readouterr().out
