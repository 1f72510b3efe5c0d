"""/v1/health forks root processes: its answer is shared by callers within a second or two."""

from __future__ import annotations

import asyncio

from rxslurm.daemon.api.routes_system import HealthCache


def test_callers_at_once_share_one_check_and_a_fresh_answer_is_reused() -> None:
    runs: list[int] = []

    async def check() -> dict:
        runs.append(1)
        await asyncio.sleep(0.05)  # the checks' subprocesses, meanwhile others ask
        return {"ok": True, "run": len(runs)}

    async def scenario() -> list[dict]:
        cache = HealthCache(ttl=3600)
        together = await asyncio.gather(*(cache.get(check) for _ in range(50)))
        return [*together, await cache.get(check)]

    answers = asyncio.run(scenario())
    assert runs == [1]
    assert all(a == {"ok": True, "run": 1} for a in answers)


def test_a_stale_answer_is_checked_again_and_a_failed_check_is_not_kept() -> None:
    outcomes = iter([RuntimeError("boom"), {"ok": False}, {"ok": True}])

    async def check() -> dict:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def scenario() -> list[object]:
        cache = HealthCache(ttl=0)
        seen: list[object] = []
        for _ in range(3):
            try:
                seen.append(await cache.get(check))
            except RuntimeError as exc:
                seen.append(str(exc))
        return seen

    assert asyncio.run(scenario()) == ["boom", {"ok": False}, {"ok": True}]
