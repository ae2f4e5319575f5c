"""Schemathesis fuzzes every operation of the app's own OpenAPI schema against a
real `recommender serve`: no request a client can send may get a 500.
Bounded: a few dozen examples per operation, about a minute."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD, KEY, Server, build_index, make_corpus

ST = shutil.which("st") or str(Path(sys.executable).with_name("st"))


@pytest.mark.skipif(not Path(ST).exists(), reason="needs schemathesis (pip install '.[test]')")
def test_no_request_gets_a_server_error(settings):
    build_index(settings, make_corpus(per_topic=3))
    server = Server(settings.data_dir, settings.model, env={"RECOMMENDER_API_KEY": KEY})
    try:
        result = subprocess.run(
            [ST, "run", f"{server.base}/openapi.json", "--checks", "not_a_server_error", "-n", "30",
             "--phases", "examples,coverage,fuzzing", "-H", f"Authorization: Bearer {KEY}", "--seed", "1"],
            capture_output=True, text=True, timeout=HANG_GUARD, check=False, env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        server.stop()
    summary = [line for line in result.stdout.splitlines() if "generated" in line]
    print(*summary, sep="\n")
    assert result.returncode == 0, result.stdout[-4000:]
    assert summary and "failed" not in summary[-1]
