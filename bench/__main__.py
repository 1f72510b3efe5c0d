"""`python -m bench`: run the benchmarks on the local test cluster (as root, cluster up).

python -m bench                     # all of them, full size (several minutes)
python -m bench --only exec,wake    # some of them
python -m bench --quick --out DIR   # tiny sizes: the smoke test
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench import (
    agent_exec,
    api_throughput,
    batch_step,
    door_latency,
    exec_latency,
    footprint,
    reconcile_scale,
    startup,
    wake_latency,
)
from bench.fleet import held_fleet
from bench.harness import RESULTS, Result, machine_info, now_iso, print_rows, write_json
from bench.report import ORDER, write_latest
from bench.suite import Context

QUICK_RESULTS = RESULTS / "quick"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--only", default=",".join(ORDER), help=f"comma-separated, from: {', '.join(ORDER)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results folder (default {RESULTS}, or {QUICK_RESULTS} with --quick)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(ORDER)}")
    return args


def cluster_up() -> bool:
    try:
        out = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return " is UP" in out.stdout


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind through every finally: held jobs are cancelled and bench daemons stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("python -m bench runs as root (it acts as the test users)", file=sys.stderr)
        return 2
    if not cluster_up():
        print("the test cluster is not up: run `make cluster` first", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    out_dir: Path = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    ctx = Context(quick=args.quick, out_dir=out_dir, machine=machine_info())
    failed: list[str] = []

    def finish(name: str, started: float, run: object) -> None:
        print(f"\n== {name}", flush=True)
        try:
            result = run()  # type: ignore[operator]
        except Exception:
            traceback.print_exc()
            failed.append(name)
            return
        assert isinstance(result, Result)
        result.finished_at = now_iso()
        result.seconds = round(time.perf_counter() - started, 1)
        path = out_dir / f"{result.name}.json"
        write_json(path, result.to_json(ctx.machine))
        print_rows(result.rows)
        for note in result.notes:
            print(f"  note: {note}")
        print(f"  -> {path} ({result.seconds:.0f} s)", flush=True)

    with ExitStack() as stack:
        stack.callback(ctx.close)
        for name, module in (
            ("exec", exec_latency),
            ("agent", agent_exec),
            ("door", door_latency),
            ("startup", startup),
            ("wake", wake_latency),
            ("batch", batch_step),
            ("api", api_throughput),
        ):
            if name in args.only:
                finish(name, time.perf_counter(), lambda m=module: m.run(ctx))
        scale = [name for name in ("reconcile", "footprint") if name in args.only]
        if scale:
            print(f"\n== submitting {ctx.sizes.scale_jobs:,} held jobs", flush=True)
            started = time.perf_counter()
            try:
                fleet = stack.enter_context(
                    held_fleet(ctx.sizes.scale_jobs, ctx.sizes.submit_workers)
                )
            except Exception:
                traceback.print_exc()
                failed += scale
            else:
                print(f"  {fleet.size:,} jobs in {fleet.submit_s:.1f} s", flush=True)
                if "reconcile" in scale:
                    finish("reconcile", started, lambda: reconcile_scale.run(ctx, fleet))
                if "footprint" in scale:
                    finish("footprint", time.perf_counter(), lambda: footprint.run(ctx, fleet))
            print("\n== cancelling the held jobs", flush=True)
    latest = write_latest(out_dir)
    print(f"\n{latest.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
