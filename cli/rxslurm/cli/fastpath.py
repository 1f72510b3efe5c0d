"""rxctl's entry point: `rxctl exec`, `rxctl status` and `rxctl run` without click, everything
else with it.

Those run most often, and from scripts (`rxctl run` once per task of a batch step), where
rxctl's start-up is paid per call: importing click and the command tree takes longer than rxd
takes to answer. So their plain forms are parsed here with the standard library, and run
through the same functions the click commands use. Anything else - help, --version, an option
this parser does not know, a usage error - goes to click unchanged, so click stays the one
source of usage messages. tests/test_cli_startup.py checks that both parsers read the forms
accepted here the same way.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from rxslurm.cli.project_choice import PROJECT_FLAGS
from rxslurm.protocol import routes


class Plan:
    """What to run: `status` or `exec`, with the options given (click's defaults otherwise)."""

    def __init__(self, command: str, socket: str | None = None) -> None:
        self.command = command
        self.socket = socket
        self.project: str | None = None
        self.json = False
        self.no_wake = False
        self.cwd = "/workspace"
        self.tty = False
        # Waiting for a wake: no limit (`--timeout` is click's to read).
        self.timeout: int | None = None
        self.argv: list[str] = []


# Options with a value, per command; "--socket" is the group's own.
_VALUED = {"status": {"project"}, "exec": {"project", "cwd"}, "run": {"project"}}
_FLAGS: dict[str, dict[str, str]] = {
    "status": {"--json": "json"},
    "exec": {"--no-wake": "no_wake", "-t": "tty", "--tty": "tty"},
    "run": {},
}
# Commands whose first word that is no option (or the words after `--`) is the command to run.
_RUNNERS = ("exec", "run")
_LONG = {PROJECT_FLAGS[1]: "project", "--cwd": "cwd"}


def _option(arg: str, command: str) -> tuple[str, str | None] | None:
    """(field, inline value) for an option with a value; None if `arg` is not one."""
    name, eq, inline = arg.partition("=")
    if arg.startswith("--"):
        key = _LONG.get(name)
        if key and key in _VALUED[command]:
            return key, inline if eq else None
        return None
    short = PROJECT_FLAGS[0]
    if arg == short:
        return "project", None
    if arg.startswith(short) and len(arg) > len(short):
        return "project", arg[len(short) :]
    return None


def parse(args: list[str]) -> Plan | None:
    """The plan for a plain `[--socket P] status|exec ...`; None: let click handle it."""
    rest = list(args)
    socket = None
    while rest and rest[0].startswith("--socket"):
        name, eq, inline = rest.pop(0).partition("=")
        if name != "--socket":
            return None
        if not eq:
            if not rest or rest[0].startswith("-"):
                return None
            inline = rest.pop(0)
        socket = inline
    if not rest or rest[0] not in _VALUED:
        return None
    plan = Plan(command=rest.pop(0), socket=socket)
    while rest:
        arg = rest.pop(0)
        if plan.command in _RUNNERS and arg == "--":
            plan.argv = rest
            break
        if plan.command in _RUNNERS and not arg.startswith("-"):
            plan.argv = [arg, *rest]
            break
        if arg in _FLAGS[plan.command]:
            setattr(plan, _FLAGS[plan.command][arg], True)
            continue
        option = _option(arg, plan.command)
        if option is None:
            return None
        key, value = option
        if value is None:
            # A missing value, or one that looks like an option: click's message, not a guess.
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        setattr(plan, key, value)
    if plan.command in _RUNNERS and not plan.argv:
        return None
    return plan


def run(plan: Plan) -> int:
    """Carry out the plan; the exit status (`run` returns only when it failed). Errors read as
    click's: `Error: ...`, exit 1 (125 for exec and run, their own failures)."""
    from rxslurm.cli import exec_client, session
    from rxslurm.cli.client import Client, ClientError
    from rxslurm.cli.project_choice import choose_project

    client = Client(plan.socket)
    try:
        if plan.command == "exec" and plan.tty and not os.isatty(0):
            raise ClientError("-t needs a terminal on stdin")
        name = choose_project(client, plan.project)
        if plan.command == "status":
            from rxslurm.cli import render

            result = client.get(routes.path(routes.CONTAINER_STATUS, name))
            text = render.json_text(result) if plan.json else "\n".join(render.status_lines(result))
            sys.stdout.write(render.safe_text(text) + "\n")
            sys.stdout.flush()
            return 0
        if plan.command == "run":
            from rxslurm.cli import batch_run  # its plan's parser: not on an exec's way

            batch_run.run(client, name, plan.argv)
        request: dict[str, object] = {
            "argv": plan.argv,
            "wake": not plan.no_wake,
            "cwd": plan.cwd,
            "timeout": plan.timeout,
        }
        if plan.tty:
            request.update(tty=True, term=exec_client.terminal_type())
        return session.run_session(client, name, request)
    except (ClientError, exec_client.ExecError) as exc:
        from rxslurm.cli.render import safe  # not on an exec's way

        sys.stderr.write(f"Error: {safe(str(exc))}\n")
        return session.SESSION_FAILED if plan.command in _RUNNERS else 1


def main() -> None:
    args = sys.argv[1:]
    plan = parse(args)
    if plan is None:
        from rxslurm.cli.main import cli

        try:
            cli.main(args=args, prog_name="rxctl")
        except SystemExit as done:
            # A usage error of exec or shell is rxctl's failure, not the command's (docker's 125).
            if done.code == 2 and _session_command(args):
                from rxslurm.cli.session import SESSION_FAILED

                raise SystemExit(SESSION_FAILED) from None
            raise
        return
    exit_now(run(plan))


def exit_now(code: int) -> NoReturn:
    """End rxctl with `code` once stdout and stderr are flushed, without the interpreter's
    teardown of every module it loaded (a tenth of `rxctl exec`'s instructions): the fast path
    leaves nothing that needs it (no atexit handler, no child, its sockets closed, the
    terminal and signal handlers put back). A flush that fails exits as the interpreter would."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


def _session_command(args: list[str]) -> bool:
    words = [a for a in args if not a.startswith("-")]
    # --socket PATH: its value is not the command's name.
    if "--socket" in args and args.index("--socket") + 1 < len(args):
        value = args[args.index("--socket") + 1]
        if value in words:
            words.remove(value)
    return bool(words) and words[0] in ("exec", "shell", "run")
