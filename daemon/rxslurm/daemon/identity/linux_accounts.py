"""Which Linux accounts may be bound to a platform identity (or run projects), from passwd.

Root, system accounts, nologin accounts and names whose passwd round trip differs never are.
Apart from bindings, so that the configuration's check of the service account can use it too.
"""

from __future__ import annotations

import os
import pwd

from rxslurm.daemon.errors import Forbidden, NotFound

NOLOGIN_SHELLS = frozenset({"nologin", "false"})


class NotBindable(Forbidden):
    code = "not_bindable"


def linux_account(uid: int, min_uid: int) -> pwd.struct_passwd:
    """The passwd entry of a uid that may be bound, or NotBindable saying why not."""
    if uid == 0:
        raise NotBindable("root cannot be bound to a platform identity")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise NotBindable(f"uid {uid} has no passwd entry") from None
    if uid < min_uid:
        raise NotBindable(
            f"{entry.pw_name} (uid {uid}) is a system account (uid below {min_uid}); "
            "it cannot be bound"
        )
    if os.path.basename(entry.pw_shell) in NOLOGIN_SHELLS:
        raise NotBindable(
            f"{entry.pw_name} has no login shell ({entry.pw_shell}); it cannot be bound"
        )
    try:
        back = pwd.getpwnam(entry.pw_name)
    except KeyError:
        back = None
    if back is None or back.pw_uid != uid:
        raise NotBindable(f"user name {entry.pw_name!r} does not map back to uid {uid}")
    return entry


def linux_account_by_name(name: str, min_uid: int) -> pwd.struct_passwd:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        raise NotFound(f"no Linux user named {name!r}") from None
    return linux_account(uid, min_uid)
