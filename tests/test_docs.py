"""docs/guide.md documents every setting and every command (as sqlite-utils checks its docs)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from recommender.cli import cli
from recommender.config import Settings

GUIDE = (Path(__file__).resolve().parent.parent / "docs" / "guide.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "recommender") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


COMMANDS = _commands(cli)


def test_the_walk_finds_the_subcommands():
    assert {"recommender rules add", "recommender eval search", "recommender serve"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name):
    assert f"`{name}`" in GUIDE, f"setting {name} is missing from docs/guide.md"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented(command):
    assert f"`{command}" in GUIDE, f"{command} is missing from docs/guide.md"


def test_engine_is_a_thin_facade():
    """Engine delegates: lists to rank.lists, responses to api.present, the
    store and the embedder to their holders. At most 15 methods, inherited
    ones included (object's excepted)."""
    from recommender.service import Engine

    methods = {name for cls in Engine.__mro__ if cls is not object for name, value in vars(cls).items()
               if callable(value) or isinstance(value, (property, classmethod, staticmethod))}
    assert len(methods) <= 15, sorted(methods)
