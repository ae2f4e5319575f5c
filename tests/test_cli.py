"""The command line, run as users run it: in a subprocess, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recommender import cli
from recommender.embedders import load_embedder, resolve
from tests.helpers import PoisonEmbedder, write_jsonl

COMMANDS = ["ingest", "reindex", "rules list", "rules add", "rules delete", "related", "search", "eval related",
            "eval search", "serve"]


def run(*args, env_extra=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "recommender.cli", *map(str, args)], capture_output=True, text=True, env=env, check=False
    )
    if check and result.returncode not in (0,):
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


HEAVY = ("torch", "sentence_transformers", "faiss", "transformers", "fastapi", "uvicorn", "ray", "tqdm")


def test_import_and_help_do_not_import_torch():
    """`--help` of every command, in a fresh interpreter: none of the heavy libraries is imported."""
    code = (
        "import sys, io, contextlib, recommender, recommender.cli as c\n"
        f"for argv in [['--help'], ['rules', '--help'], ['eval', '--help'], *[n.split() + ['--help'] for n in {COMMANDS!r}]]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert c.main(argv) == 0, argv\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_help_imports_no_heavy_module_per_importtime():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "recommender.cli", "--help"],
                            capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & set(HEAVY)
    assert "Commands:" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_data_dir(command, capsys):
    assert cli.main([*command.split(), "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"recommender {command}" in text
    assert "--data-dir" in text and "--model" in text and "--config" in text


def test_main_help_lists_every_command_and_no_command_is_usage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "typical session:" in out and "exit codes:" in out
    for name in ("ingest", "reindex", "rules", "related", "search", "eval", "serve"):
        assert f"  {name} " in out
    assert cli.main([]) == 2
    assert "Commands:" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("recommender ")
    assert cli.main(["nope"]) == 2 and "No such command" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
    common = ["--data-dir", str(tmp_path / "d")]
    assert cli.main(["related", "x", "--k", "101", *common]) == 2
    assert "1<=x<=100" in capsys.readouterr().err
    assert cli.main(["search", "q", "--k", "many", *common]) == 2
    assert cli.main(["eval", "search", "--dataset", "d.jsonl", *common]) == 2
    assert "--queries" in capsys.readouterr().err
    assert cli.main(["reindex", "--engine", "spark", *common]) == 2
    assert cli.main(["reindex", "--ray-workers", "0", *common]) == 2
    assert cli.main(["serve", "--workers", "0", *common]) == 2
    assert cli.main(["serve", "--port", "70000", *common]) == 2
    assert cli.main(["rules", "delete", "twelve", *common]) == 2
    assert cli.main(["rules", "add", "promote", "x", *common]) == 2
    assert not (tmp_path / "d").exists()  # nothing ran


def test_bad_settings_exit_1_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECOMMENDER_MMR_LAMBDA", "1.5")
    assert cli.main(["rules", "list", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: setting 'mmr_lambda'") and "$RECOMMENDER_MMR_LAMBDA" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("RECOMMENDER_MMR_LAMBDA")
    config = tmp_path / "c.toml"
    config.write_text("[recommender]\nworkerz = 2\n")
    assert cli.main(["rules", "list", "--data-dir", str(tmp_path / "d"), "--config", str(config)]) == 1
    assert "unknown setting 'workerz'" in capsys.readouterr().err


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
    assert result.returncode == 2 and "'--k': 0 is not in the range 1<=x<=100" in result.stderr
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


def test_reindex_exit_code_3_when_some_articles_fail(tmp_path, corpus, tiny_model_dir, capsys):
    rows = corpus[:5] + [{"id": "bad-1", "title": "POISON", "body": "The model chokes on this one."}]
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    assert cli.main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", rows)), *common]) == 0
    def poisoned(settings):
        return PoisonEmbedder(load_embedder(resolve(settings)))

    capsys.readouterr()
    assert cli.main(["reindex", "--no-progress", "--json", *common], load_embedder=poisoned) == 3
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["failed"] == ["bad-1"] and summary["embedded"] == 5 and summary["published"]
    assert cli.main(["reindex", "--no-progress", *common]) == 0
    assert "1 embedded" in capsys.readouterr().out


def test_reindex_progress_bar_on_stderr(tmp_path, corpus, tiny_model_dir, capsys):
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    assert cli.main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", corpus[:4])), *common]) == 0
    capsys.readouterr()
    assert cli.main(["reindex", "--json", *common]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["embedded"] == 4
    assert "embedding" in out.err and "4/4" in out.err


def test_progress_bar_helper_restarts_per_stage(capsys):
    with cli.progress_bar("eval", "step") as update:
        assert update is not None  # enabled: a callback
        for total in (3, 2):
            for done in range(total + 1):
                update(done, total)
    err = capsys.readouterr().err
    assert "3/3" in err and "2/2" in err
    with cli.progress_bar("x", enabled=False) as update:
        assert update is None


def test_rules_command(tmp_path, corpus, tiny_model_dir, capsys):
    common = ["--data-dir", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    assert cli.main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", corpus)), *common]) == 0
    assert cli.main(["rules", "list", *common]) == 0 and "no rules" in capsys.readouterr().out
    assert cli.main(["rules", "add", "pin", "--article", "talks-1", "--target", "bridge-2", "--position", "2", *common]) == 0
    assert cli.main(["rules", "add", "boost", "world", "--type", "section", "--weight", "2", *common]) == 0
    assert cli.main(["rules", "add", "bury", "w001", "--target-type", "tag", "--article", "talks-1",
                     "--note", "filler", "--json", *common]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("{")
    assert cli.main(["rules", "add", "pin", "--article", "talks-1", "--target", "bridge-2", *common]) == 2
    assert "position" in capsys.readouterr().err
    assert cli.main(["rules", "add", "block", "a", "--target", "b", *common]) == 2
    assert cli.main(["rules", "add", "block", "nope", *common]) == 1
    assert "no article with id 'nope'" in capsys.readouterr().err
    assert cli.main(["rules", "list", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)["rules"]
    assert [(r["kind"], r["target"]) for r in listed] == [("pin", "bridge-2"), ("boost", "world"), ("bury", "w001")]
    assert cli.main(["rules", "list", "--article", "talks-1", "--json", *common]) == 0
    assert [r["kind"] for r in json.loads(capsys.readouterr().out)["rules"]] == ["pin", "bury"]
    assert cli.main(["rules", "delete", str(listed[0]["id"]), *common]) == 0
    assert cli.main(["rules", "delete", "999", *common]) == 1
    assert "no rule" in capsys.readouterr().err
    assert cli.main(["rules", "--data-dir", str(tmp_path / "d"), "delete", str(listed[2]["id"])]) == 0  # before, too
    capsys.readouterr()
    assert cli.main(["rules", "list", *common]) == 0
    assert "boost  section world by 2 everywhere" in capsys.readouterr().out


def test_pinned_items_print_without_a_score(capsys):
    items = [{"id": "a", "title": "A", "published": None, "score": None, "source": "manual"},
             {"id": "b", "title": "B", "published": "2025-01-02", "score": 1.5, "source": "auto"},
             {"id": "c", "title": "C", "published": None, "score": 2.0, "source": "auto", "confidence": 0.734},
             {"id": "d", "title": "D", "published": None, "score": None, "source": "fallback"}]
    assert cli._print_items({"items": items}, as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert "pinned  a" in out[0] and "1.50  b" in out[1] and "73%  c" in out[2] and "filler  d" in out[3]
    assert cli._print_items({"article_id": "x", "items": []}, as_json=False) == 0
    assert "confidence floor" in capsys.readouterr().out


def test_serve_hands_the_workers_its_settings_as_json(tmp_path, monkeypatch):
    """`serve` puts its settings in $RECOMMENDER_SETTINGS_JSON; a worker's app factory reads them back."""
    import uvicorn

    from recommender.api import app as app_module
    from recommender.api import metrics
    from recommender.config import SETTINGS_JSON_ENV, Settings

    calls: list[tuple[tuple, dict]] = []
    prepared: list[tuple[Path, Path | None]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    # The real one sets PROMETHEUS_MULTIPROC_DIR in this process (for the
    # workers): tests/test_metrics.py checks it in a child process.
    monkeypatch.setattr(metrics, "prepare_multiprocess_dir", lambda root, legacy=None: prepared.append((root, legacy)))
    monkeypatch.delenv(SETTINGS_JSON_ENV, raising=False)
    monkeypatch.setenv("RECOMMENDER_MAX_HEADER_BYTES", "9000")
    assert cli.main(["serve", "--port", "8123", "--workers", "2", "--data-dir", str(tmp_path / "d")]) == 0
    (target,), kw = calls[0]
    # The workers' metrics directory, before uvicorn starts them: off the data folder (where older releases kept it).
    assert prepared == [(metrics.metrics_root(), tmp_path / "d" / "metrics")]
    assert target == "recommender.api.app:app_from_environment" and kw["factory"]
    assert kw["port"] == 8123 and kw["workers"] == 2 and kw["loop"] == "uvloop"
    assert kw["http"] == "recommender.api.server:GuardedHttpToolsProtocol"
    assert kw["limit_concurrency"] == 1000 and kw["timeout_keep_alive"] == 5.0
    handed = Settings.model_validate_json(os.environ[SETTINGS_JSON_ENV])
    assert handed.port == 8123 and handed.data_dir == tmp_path / "d" and handed.max_header_bytes == 9000

    created: list[Settings] = []

    def create_app(settings: Settings) -> str:
        created.append(settings)
        return "app"

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setenv("RECOMMENDER_PORT", "9999")  # the JSON wins over the variables
    assert app_module.app_from_environment() == "app" and created[-1] == handed
    monkeypatch.delenv(SETTINGS_JSON_ENV)
    assert app_module.app_from_environment() == "app" and created[-1].port == 9999
