"""Only the adapters speak to Slurm and Apptainer: no other module builds their argv.

Slurm's commands are run by slurm/ (SlurmCli builds even the exec step's `srun`); Apptainer's
by the runtime adapter, rxslurm/daemon/runtime/apptainer.py, and, for `rxctl run`, by the batch
plan's builder in the protocol (see APPTAINER_BUILDERS). Anywhere else, a command name in an
argv list, in a `which` lookup or as the program of a process call is a leak of their vocabulary
into the daemon or the CLI (the review of 2026-11-30 found the exec server building `srun`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SLURM = frozenset({"srun", "sbatch", "squeue", "scancel", "sacct", "scontrol", "sacctmgr", "sinfo"})
APPTAINER = frozenset({"apptainer", "singularity"})
# Calls whose first argument is a program (or an argv starting with one).
PROGRAM_CALLS = frozenset(
    {"which", "_which", "_binary", "run", "Popen", "call", "check_call", "check_output",
     "spawn", "_call", "_run", "execvp", "execv", "create_subprocess_exec"}
)  # fmt: skip
# rxctl starts the exec step rxd's Slurm adapter built (its argv arrives over the wire, with
# the bare name `srun`): it only finds that program on its own host's PATH.
ALLOWED = {("cli/rxslurm/cli/exec_remote.py", "srun")}
# rxd's runtime adapter builds the argv of the container's own processes (holder, exec steps).
# A batch step (`rxctl run`, the SPANK plugin) runs as the member on a compute node, where rxctl
# builds its `apptainer exec` from rxd's batch plan; rxctl cannot import the daemon, so that
# builder lives in the protocol, beside the plan it reads.
APPTAINER_BUILDERS = (
    "daemon/rxslurm/daemon/runtime/apptainer.py",
    "protocol/rxslurm/protocol/batch_plan.py",
)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _command(node: ast.AST, names: frozenset[str]) -> str | None:
    # A default program: `[configured or "apptainer", ...]`, `[a if b else "srun", ...]`.
    if isinstance(node, ast.BoolOp | ast.IfExp):
        parts = node.values if isinstance(node, ast.BoolOp) else [node.body, node.orelse]
        found = [word for part in parts if (word := _command(part, names))]
        return found[0] if found else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        word = node.value.rsplit("/", 1)[-1]
        return word if word in names else None
    return None


def argv_words(source: str, names: frozenset[str]) -> list[tuple[int, str]]:
    """(line, command) for each of `names` used as a program: an argv list or tuple item, a
    `which` lookup, or the first argument of a process call."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        candidates: list[ast.AST] = []
        if isinstance(node, ast.List | ast.Tuple):
            candidates = list(node.elts)
        elif isinstance(node, ast.Call) and _name(node.func) in PROGRAM_CALLS and node.args:
            first = node.args[0]
            candidates = [first, *(first.elts if isinstance(first, ast.List | ast.Tuple) else [])]
        for item in candidates:
            word = _command(item, names)
            if word is not None:
                found.append((item.lineno, word))
    return sorted(set(found))


def offenders(names: frozenset[str], outside: tuple[str, ...]) -> list[str]:
    result = []
    for folder in ("daemon", "cli", "protocol", "slurm"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(outside):
                continue
            for line, word in argv_words(path.read_text(), names):
                if (relative, word) not in ALLOWED:
                    result.append(f"{relative}:{line} runs {word}")
    return result


def test_only_the_slurm_adapter_builds_slurm_argv() -> None:
    assert offenders(SLURM, ("slurm/",)) == []


def test_only_the_runtime_adapter_builds_apptainer_argv() -> None:
    assert offenders(APPTAINER, APPTAINER_BUILDERS) == []


@pytest.mark.parametrize(
    "source",
    [
        'argv = ["srun", "--jobid=1"]',
        'argv = ("/usr/bin/sbatch", "--parsable")',
        'found = shutil.which("squeue", path=p)',
        'subprocess.run(["scancel", "7"])',
        'argv = [program, "--x"] + ["sacct"]',
        'argv = [configured or "sinfo", "-h"]',
    ],
)
def test_the_check_finds_a_slurm_argv(source: str) -> None:
    assert argv_words(source, SLURM) != []


def test_the_check_leaves_words_that_are_no_program_alone() -> None:
    source = 'log("squeue did not answer"); checks = {"apptainer": ok}; x = "srun: error"'
    assert argv_words(source, SLURM | APPTAINER) == []
