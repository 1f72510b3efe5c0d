"""A "login node" on the one-machine test cluster: a mount namespace where rxd cannot be reached
except through its network door.

`login_argv` wraps a command so that it runs as a test user in a new mount namespace (unshare -m,
private propagation: nothing leaks back to the host) in which rxd's socket folder and ledger
folder are covered by empty tmpfs mounts. Everything else stays as on the host: shared storage
(workspaces, container state, images), /etc/slurm, and munged's socket, as on a real login node.

Run as a program (by `login_argv`, already inside the new namespace, still root):
    python -m tests.support.login_node HIDE... -- USER ENV... -- ARGV...
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.cluster import user_env
from tests.support.daemon import PRIVATE_ROOT

REPO = Path(__file__).resolve().parents[2]
# rxd's default folders on a service host, and where every test rxd keeps its sockets and ledger:
# hidden too, whether or not they exist here (as tests/cluster/setup.sh hides them from nodes).
DEFAULT_HIDDEN = ("/run/rxslurm", "/var/lib/rxslurm", str(PRIVATE_ROOT))


def login_argv(
    user: str,
    argv: Sequence[str],
    hidden: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """argv that runs `argv` as `user` on the login node, with `env` added to a clean one."""
    pairs = [f"{k}={v}" for k, v in user_env(user, env).items()]
    folders = [str(p) for p in (*hidden, *DEFAULT_HIDDEN)]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "tests.support.login_node",
        *folders,
        "--",
        user,
        *pairs,
        "--",
        *argv,
    ]


def run_on_login_node(
    user: str,
    argv: Sequence[str],
    hidden: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        login_argv(user, argv, hidden, env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=str(REPO),  # `python -m tests.support.login_node` finds the package from here
    )


def _enter(args: list[str]) -> None:
    split = args.index("--")
    folders, rest = args[:split], args[split + 1 :]
    split = rest.index("--")
    (user, *pairs), argv = rest[:split], rest[split + 1 :]
    for folder in folders:
        if os.path.isdir(folder):
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", folder], check=True
            )
    pw = pwd.getpwnam(user)
    env = dict(pair.split("=", 1) for pair in pairs)
    os.chdir(pw.pw_dir if os.path.isdir(pw.pw_dir) else "/")
    os.setgroups(os.getgrouplist(user, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    _enter(sys.argv[1:])
