"""`--volume NAME:/path[:ro|rw]` as people write it, into the mount rxd takes. rxd checks the name
and the path (projects/volume_rules.py); this only splits, so a bad value is rxd's one reason."""

from __future__ import annotations

from typing import Any


class BadVolumeSpec(ValueError):
    pass


def split_mount(text: str) -> dict[str, Any]:
    """{"volume", "target", "read_only"}; a trailing :ro or :rw is the mode (default rw)."""
    name, sep, target = text.partition(":")
    if not sep or not name or not target:
        raise BadVolumeSpec(f"--volume {text!r} must be NAME:/path[:ro]")
    read_only = False
    if target.endswith((":ro", ":rw")):
        target, read_only = target[:-3], target.endswith(":ro")
    return {"volume": name, "target": target, "read_only": read_only}
