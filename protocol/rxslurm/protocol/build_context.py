"""What both ends know of a build context uploaded through the API (the SDK's
`Image.add_local_file`/`add_local_dir`; rxd's images/context_files.py): where it lands in the
project's workspace and how big one upload request may be."""

from __future__ import annotations

# Uploaded contexts live in this folder of the workspace, one sub-folder each; a draft names
# `FOLDER/<context>` as its context.
FOLDER = ".rx-build-contexts"
# The raw bytes of one upload request: base64 (4/3) in a JSON body stays under rxd's 1 MiB cap.
CHUNK_BYTES = 512 * 1024


def draft_context(context: str) -> str:
    """The draft's context (relative to the workspace) of an uploaded context."""
    return f"{FOLDER}/{context}"
