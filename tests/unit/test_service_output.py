"""The holder's cap on a service's output (holder.sh's split filter), run here as the holder
runs it: whatever the service writes, the file and its one older part hold its newest bytes in
order, neither holds more than the cap, and the marker says when older output went."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

HOLDER = Path(__file__).parents[2] / "slurm" / "rxslurm" / "slurm" / "templates" / "holder.sh"


def holder_line(name: str) -> str:
    """One assignment line of holder.sh, as it stands there."""
    [line] = [ln for ln in HOLDER.read_text().splitlines() if ln.startswith(f"{name}=")]
    return line


def capped(folder: Path, data: bytes, cap: int) -> subprocess.CompletedProcess[bytes]:
    """The service's stream through the holder's writer: its own split line, with the cap."""
    keep_piece = holder_line("keep_piece")
    [split] = [
        ln.strip() for ln in HOLDER.read_text().splitlines() if "exec {service_out}> >(" in ln
    ]
    command = re.fullmatch(r"exec \{service_out\}> >\((.*)\)", split)
    assert command, split
    script = (
        f"{keep_piece}\nservice_log={folder}/job-7.service\noutput_cap={cap}\n{command.group(1)}\n"
    )
    return subprocess.run(["bash", "-c", script], input=data, check=True, timeout=30)


@settings(max_examples=20, deadline=None)
@given(size=st.integers(0, 20_000), cap=st.integers(64, 4096))
def test_the_newest_output_is_kept_in_order_and_never_more_than_twice_the_cap(
    size: int, cap: int
) -> None:
    data = bytes(i % 251 for i in range(size))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        capped(folder, data, cap)
        log = folder / "job-7.service"
        current = log.read_bytes() if log.exists() else b""
        older_path = folder / "job-7.service.1"
        older = older_path.read_bytes() if older_path.exists() else b""
        dropped = (folder / "job-7.service.dropped").exists()
        names = sorted(p.name for p in folder.iterdir())

    assert len(current) <= cap and len(older) <= cap
    assert data.endswith(older + current)
    pieces = -(-size // cap)  # split's pieces of `cap` bytes, the last one shorter
    assert len(current) == (size - (pieces - 1) * cap if pieces else 0)
    assert len(older) == (cap if pieces >= 2 else 0)
    assert dropped == (size > 2 * cap)
    # split itself makes no files (the filter does): nothing else appears.
    assert set(names) <= {"job-7.service", "job-7.service.1", "job-7.service.dropped"}


def test_output_that_cannot_be_written_is_read_on_and_lost(tmp_path: Path) -> None:
    # No such folder: every piece fails to open; the writer still reads all of it (the service
    # never blocks on a full pipe, nor dies of a closed one) and ends well.
    gone = tmp_path / "no-such-folder"
    done = capped(gone, b"x" * 20_000, 4096)
    assert done.returncode == 0
    assert not gone.exists()


def test_a_fifo_at_the_dropped_marker_never_blocks_the_writer(tmp_path: Path) -> None:
    # The filter wrote the marker with `: >"$f.dropped"` each time older output went: a FIFO at
    # that name (nobody reading) held it there, split stopped reading, and the service blocked.
    # Now a marker already there (or a link at its name) is left alone.
    os.mkfifo(tmp_path / "job-7.service.dropped")
    done = capped(tmp_path, b"y" * 20_000, 4096)
    assert done.returncode == 0
    assert (tmp_path / "job-7.service").read_bytes() == b"y" * (20_000 - 4 * 4096)
