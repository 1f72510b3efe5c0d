"""Threads for slow blocking work (image pulls, waiting for a job to stop), apart from the API's.

The API's handlers run their quick ledger calls on the event loop's default executor. A pull or a
120 s wait there would hold one of its threads each: a few users enabling or disabling at once
would stall every request. Slow work gets this bounded pool instead; when it is busy, slow work
queues here and the rest of the API is not held up.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

SLOW_WORKERS = 8
# The API's own pool: asyncio's default (min(32, cpus + 4)) is 6 threads on a 2-core login node.
API_WORKERS = 32

_slow = ThreadPoolExecutor(max_workers=SLOW_WORKERS, thread_name_prefix="rxd-slow")


async def run_slow(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_slow, functools.partial(fn, *args))


def api_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=API_WORKERS, thread_name_prefix="rxd-api")
