"""Kept for scripts/bench_writes_under_load.py: the server helper lives in tests/helpers.py."""

from tests.helpers import Server, free_port

__all__ = ["Server", "free_port"]
