"""The README stays true: its config examples parse, its quick start has two commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from perfd import config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_toml_examples_are_valid_perfd_config() -> None:
    """Every TOML block in the README is a config perfd accepts."""
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        config.parse(tomllib.loads(block))


def test_quick_start_has_exactly_two_commands() -> None:
    """The quick start gives one install-and-start command and one test command."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)
    assert commands[0].strip().endswith(".venv/bin/perfd")
    assert "pytest" in commands[1]
