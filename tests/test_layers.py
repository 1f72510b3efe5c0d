"""Dependencies point one way: cli -> (API) -> daemon -> slurm, and all three -> protocol.

The CLI never opens the ledger or runs Slurm itself. The protocol (what both ends of a
conversation agree on) is the standard library only, so rxctl, rxd and Slurm's hooks can all
import it cheaply.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FORBIDDEN = {
    "cli": ("rxslurm.daemon", "rxslurm.slurm", "sqlite_utils", "sqlite3", "spython", "aiohttp"),
    "slurm": ("rxslurm.daemon", "rxslurm.cli"),
    "daemon": ("rxslurm.cli", "rxslurm.agent"),
    "agent": ("rxslurm.daemon", "rxslurm.cli", "rxslurm.slurm"),
}
# The MUNGE binding and the request binding are the stdlib-only contract of the network door,
# shared by rxctl, Slurm's hooks and rxd; step_signal is how a step is interrupted, which rxctl
# does itself when it runs the runtime user's step over the door (imported only then).
ALLOWED = {
    # The exec agent runs on a container's Python: of Slurm's side, the two stdlib-only bindings.
    "agent": ("rxslurm.slurm.munge", "rxslurm.slurm.request_binding"),
    "cli": (
        "rxslurm.slurm.munge",
        "rxslurm.slurm.request_binding",
        "rxslurm.slurm.step_signal",
    ),
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(folder: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in sorted(imports_of(path))
        if name.startswith(FORBIDDEN[folder]) and name not in ALLOWED.get(folder, ())
    ]
    assert offenders == []


def test_the_protocol_imports_only_the_standard_library_and_itself() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "protocol").rglob("*.py"))
        for name in sorted(imports_of(path))
        if not name.startswith("rxslurm.protocol")
        and name.partition(".")[0] not in sys.stdlib_module_names
    ]
    assert offenders == []
    # Relative imports would hide a dependency from the check above.
    relative = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "protocol").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert relative == []


def test_the_protocol_is_what_the_cli_the_daemon_and_the_hooks_import() -> None:
    importers = {
        folder: any(
            name.startswith("rxslurm.protocol")
            for path in (ROOT / folder).rglob("*.py")
            for name in imports_of(path)
        )
        for folder in ("cli", "daemon", "slurm/rxslurm/slurm/hooks")
    }
    assert importers == {"cli": True, "daemon": True, "slurm/rxslurm/slurm/hooks": True}
