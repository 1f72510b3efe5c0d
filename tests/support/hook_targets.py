"""Slurm's controller hooks poke a test's rxd too: its target in /etc/rxslurm/hook-sockets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rxslurm.protocol.paths import DEFAULT_SOCKET, HOOK_TARGETS

HOOK_SOCKETS = Path(HOOK_TARGETS)


@contextmanager
def hooks_poke(target: str | Path) -> Iterator[None]:
    """PrologSlurmctld/EpilogSlurmctld poke `target` (a socket path, or "host:port": rxd's
    network door) as they poke a deployment's rxd: it is added to the hook's list, and only it is
    removed afterwards (others' tests and benches edit the list meanwhile). A missing list means
    the default socket, which is kept listed while the file exists."""
    listing = HOOK_SOCKETS
    created = not listing.exists()
    listing.parent.mkdir(parents=True, exist_ok=True)
    with listing.open("a") as out:
        if created:
            out.write(f"# rx-slurm hook sockets\n{DEFAULT_SOCKET}\n")
        out.write(f"{target}\n")
    try:
        yield
    finally:
        try:
            lines = listing.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines if line.strip() != str(target)]
        targets = [line.strip() for line in kept if line.strip() and not line.startswith("#")]
        if created and targets in ([], [DEFAULT_SOCKET]):
            listing.unlink(missing_ok=True)
        elif kept != lines:
            listing.write_text("".join(f"{line}\n" for line in kept))
