"""rxd on a host that installed the client side alone says what to install, in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Hide the daemon's dependencies the way a client-only venv lacks them.
HIDE = "import sys; [sys.modules.__setitem__(m, None) for m in ('aiohttp', 'sqlite_utils')]; "


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_rxd_without_the_daemon_extra_names_what_to_install(command: str) -> None:
    code = HIDE + f"from rxslurm.daemon.main import cli; cli([{command!r}])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "rx-slurm[daemon]" in lines[0]
    assert "is not installed" in lines[0]
