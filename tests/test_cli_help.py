"""Every rxctl command explains itself: a summary, an example, working -h, and docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rxslurm.cli import docs
from rxslurm.cli.main import cli

ROOT = Path(__file__).parent.parent
COMMANDS = {ctx.command_path: command for ctx, command in docs.walk(cli)}
LEAVES = [path for path, command in COMMANDS.items() if not isinstance(command, click.Group)]


def test_the_tree_holds_the_identity_project_and_admin_commands() -> None:
    expected = {
        "rxctl bind",
        "rxctl unbind",
        "rxctl project create",
        "rxctl project list",
        "rxctl project show",
        "rxctl project delete",
        "rxctl project set",
        "rxctl project run-as",
        "rxctl project member add",
        "rxctl project member rm",
        "rxctl project member set-role",
        "rxctl admin code",
        "rxctl admin bind",
        "rxctl admin unbind",
        "rxctl admin bindings",
        "rxctl admin audit",
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_command_has_a_summary_and_an_example(path: str) -> None:
    help_text = COMMANDS[path].help or ""
    lines = [line.strip() for line in help_text.strip().splitlines()]
    assert lines and lines[0], f"{path}: no docstring"
    assert lines[0].endswith("."), f"{path}: the summary line should be a sentence"
    assert any(line.startswith("Example: rxctl") for line in lines), (
        f"{path}: the docstring needs an 'Example: rxctl ...' line"
    )


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_dash_h_shows_usage_and_the_example(path: str) -> None:
    args = path.split()[1:]
    result = CliRunner().invoke(cli, [*args, "-h"], prog_name="rxctl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {path} ")
    assert "Example: rxctl" in result.output


# These hand the terminal to a program in the container (run-once streams its job's output):
# their output is the program's own.
STREAMING = {"rxctl exec", "rxctl shell", "rxctl run", "rxctl run-once", "rxctl port-forward"}


@pytest.mark.parametrize("path", sorted(set(LEAVES) - STREAMING))
def test_commands_that_show_data_take_json(path: str) -> None:
    command = COMMANDS[path]
    assert "json_" in {p.name for p in command.params}, f"{path} has no --json"


def test_docs_cli_md_is_up_to_date() -> None:
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == docs.render(), (
        f"docs/cli.md is out of date; regenerate it with: {docs.REGENERATE}"
    )


def test_project_delete_refuses_without_yes_before_asking_rxd(tmp_path: Path) -> None:
    # The socket does not exist: reaching rxd would fail differently.
    result = CliRunner().invoke(
        cli, ["--socket", str(tmp_path / "none.sock"), "project", "delete", "--project", "alpha"]
    )
    assert result.exit_code == 1
    assert result.output == ("Error: deleting project alpha cannot be undone; add --yes to do it\n")


def test_project_set_without_options_says_what_to_give(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--socket", str(tmp_path / "none.sock"), "project", "set", "--project", "a"]
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: nothing to change; give at least one setting (see: rxctl project set -h)\n"
    )


def test_admin_unbind_needs_exactly_one_name(tmp_path: Path) -> None:
    sock = ["--socket", str(tmp_path / "none.sock")]
    for args in ([], ["alice", "--linux-user", "rxalice"]):
        result = CliRunner().invoke(cli, [*sock, "admin", "unbind", *args])
        assert result.exit_code == 1
        assert result.output == "Error: give either PLATFORM_USER or --linux-user U (exactly one)\n"
