"""The systemd side of rxd, without systemd: readiness, journald priorities, folder modes."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

from rxslurm.daemon.api import sd_notify
from rxslurm.daemon.folders import make_folder
from rxslurm.daemon.logs import JsonFormatter


def test_readiness_is_one_datagram_to_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert listener.recv(100) == b"READY=1"


def test_without_systemd_readiness_is_nothing(tmp_path: Path) -> None:
    assert not sd_notify.notify("READY=1", {})
    assert not sd_notify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def record(level: int) -> logging.LogRecord:
    return logging.LogRecord("rxslurm.x", level, __file__, 1, "hello", None, None)


def test_journald_lines_carry_their_priority() -> None:
    journald = JsonFormatter(journald=True)
    assert journald.format(record(logging.ERROR)).startswith('<3>{"ts": ')
    assert journald.format(record(logging.WARNING)).startswith("<4>{")
    assert journald.format(record(logging.INFO)).startswith("<6>{")
    assert journald.format(record(logging.DEBUG)).startswith("<7>{")
    assert JsonFormatter().format(record(logging.ERROR)).startswith('{"ts": ')


def test_folders_rxd_makes_keep_their_mode_under_the_units_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_folder(tmp_path / "srv" / "rxslurm" / "workspaces")
    finally:
        os.umask(old)
    for folder in ("srv", "srv/rxslurm", "srv/rxslurm/workspaces"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o755, folder


def test_a_folder_already_there_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir(mode=0o700)
    make_folder(tmp_path / "mine" / "new", 0o750)
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "mine" / "new").stat().st_mode) == 0o750


def test_only_a_stderr_that_is_the_journal_gets_priorities() -> None:
    import sys

    from rxslurm.daemon.logs import stderr_is_journal

    info = os.fstat(sys.stderr.fileno())
    assert stderr_is_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
    assert not stderr_is_journal({})
