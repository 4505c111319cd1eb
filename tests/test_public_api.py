"""The names re-exported by ``letkd`` resolve, and the CLI lists every command with working --help."""

from __future__ import annotations

import pytest

import letkd
from letkd.cli import COMMANDS, main


@pytest.mark.parametrize("name", [n for n in letkd.__all__ if n != "__version__"])
def test_public_name_resolves(name):
    assert getattr(letkd, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        letkd.nope  # noqa: B018


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"letkd {command}" in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
