"""Reading an output that is kept capped (a service's, a detached command's): its file, the older
part ``<file>.1`` it became when it passed the cap, and ``<file>.dropped``, which says that an
even older part went (the writers: runtime/command_output.py's keeper, holder.sh's service
output). Each file is read as the runtime user by job_output's reader.

Offsets are into the current file, as `rxctl logs -f` follows it. The first piece (no offset)
is the newest output: the end of the current file, and when that is shorter than asked for,
the end of the older part before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rxslurm.daemon.runtime.job_output import MAX_BYTES, JobOutput, read_output
from rxslurm.slurm.runas import RunAs


@dataclass(frozen=True)
class RotatedOutput:
    piece: JobOutput  # of the current file
    earlier: str = ""  # the end of the older part, shown before the piece
    older_unshown: bool = False  # output before what is shown is still kept (not shown)
    dropped: bool = False  # output older than the older part was dropped by the cap

    @property
    def text(self) -> str:
        return self.earlier + self.piece.text

    def fields(self) -> dict[str, object]:
        """The answer's fields (api.md's logs shape)."""
        piece = self.piece
        return {
            "text": self.text,
            "start": piece.start,
            "end": piece.end,
            "size": piece.size,
            "cut": piece.cut or self.older_unshown,
            "missing": piece.missing and not self.earlier,
            "earlier": len(self.earlier.encode()),
            "older_unshown": self.older_unshown,
            "dropped": self.dropped,
        }


def read_rotated(
    state_dir: str,
    name: str,
    who: RunAs | None,
    offset: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> RotatedOutput:
    """The newest output of ``name`` in ``state_dir`` (offset None), or the current file from
    ``offset`` on; a follower past the end of a file that started anew meanwhile reads the new
    one from its beginning. Raises job_output's OutputError."""

    def read(file: str, at: int | None, most: int) -> JobOutput:
        return read_output(state_dir, 0, who, offset=at, max_bytes=most, name=file)

    piece = read(name, offset, max_bytes)
    if offset is not None:
        if piece.start < offset:
            # Shorter than where the follower stopped: it became .1 and a new file started.
            piece = read(name, 0, max_bytes)
        return RotatedOutput(piece)
    dropped = not read(name + ".dropped", None, 0).missing
    if piece.start > 0:
        return RotatedOutput(piece, "", True, dropped)
    older = read(name + ".1", None, max(max_bytes - (piece.end - piece.start), 0))
    return RotatedOutput(piece, older.text, older.start > 0, dropped)
