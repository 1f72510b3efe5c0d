"""Named points where a test can make rxd die on purpose, to prove a crash there loses nothing.

`RXD_FAILPOINTS=after-submit` in rxd's environment makes it exit at once (as SIGKILL would leave
it: no cleanup) when it reaches that point. Unset in production; reading it costs one dict lookup.
"""

from __future__ import annotations

import os

ENV = "RXD_FAILPOINTS"


def hit(name: str) -> None:
    if name in os.environ.get(ENV, "").split(","):
        os._exit(137)
