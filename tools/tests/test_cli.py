"""The CLI contract: help lists what exists, errors are one line and non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kommune.cli.main import COMMANDS

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def _kommune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KOMMUNE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_every_command() -> None:
    proc = _kommune("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name: str) -> None:
    proc = _kommune(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "example" in proc.stdout.lower()
    assert f"kommune {name}" in proc.stdout


def test_no_command_prints_help_and_fails() -> None:
    proc = _kommune()
    assert proc.returncode == 2
    assert "commands" in proc.stdout


def test_unknown_command_is_one_line_error() -> None:
    proc = _kommune("frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "invalid choice: 'frobnicate'" in proc.stderr


def test_bad_option_is_one_line_error() -> None:
    proc = _kommune("bench", "protocols", "--nope")
    assert proc.returncode == 2
    assert proc.stderr.startswith("kommune: error: unrecognized arguments: --nope")
    assert proc.stderr.count("\n") == 1
