"""Fixtures shared by the test files."""

import sys

import pytest

from caloforge.cli import main
from caloforge.families import register


@pytest.fixture
def run(monkeypatch, capsys):
    """Run ``caloforge ARGS`` in-process through ``main()``; returns (exit code, stdout, stderr).

    ``main()`` rather than typer's CliRunner, because ``main()`` is where errors become one ``error:`` line
    and exit code 2.
    """

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["caloforge", *map(str, args)])
        with pytest.raises(SystemExit) as leaving:
            main()
        captured = capsys.readouterr()
        code = leaving.value.code
        return (0 if code is None else code), captured.out, captured.err

    return invoke


# The test-only family (tests/toy_family.py) joins the registry, so the conformance suite runs it too.
register("toy-gauss", "toy_family")
