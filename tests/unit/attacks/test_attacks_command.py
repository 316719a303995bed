"""`fedgen attack` as the lead will register it: a typer command around run_attack."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from fedgen.attacks.command import attack_command


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("attack")(attack_command)

    @app.command()
    def other() -> None:  # a second command, so "attack" is addressed by name as in fedgen
        """Nothing."""

    return app


def test_attack_command_prints_and_writes_the_figures(tiny_run, tmp_path):
    # Execute
    result = CliRunner().invoke(
        cli(),
        [
            "attack",
            str(tiny_run),
            "--kind",
            "membership",
            "--n",
            "50",
            "--samples-per-class",
            "20",
            "--out",
            str(tmp_path),
        ],
    )
    # Assert
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    written = json.loads((tmp_path / "attack_membership.json").read_text())
    assert printed == written["figures"]
    assert printed["members"] == 50


def test_attack_command_reports_bad_input_as_an_error_line(tmp_path):
    result = CliRunner().invoke(cli(), ["attack", str(tmp_path), "--kind", "inversion"])
    assert result.exit_code == 2
    assert "not a run folder" in result.output


def test_attack_command_rejects_an_unknown_kind(tmp_path):
    result = CliRunner().invoke(cli(), ["attack", str(tmp_path), "--kind", "guess"])
    assert result.exit_code == 2
    assert "membership" in result.output and "inversion" in result.output
