"""Serve's autoscaler as Gantry configures it, on the real CPU engine: how fast it reacts to a burst,
and how much a stabilization window calms an oscillating load.

In one run, on a private Ray head (tests/ray_cluster.py), with the tiny model built here, through
Gantry's own Ray client (the apply path the reconciler uses) and the gantry-router:

1. Baseline: one autoscaled model (min 1, max 3, target 1 ongoing request per replica) deployed
   from nothing to RUNNING with its first replica: what one replica's start costs on this machine.
2. Reaction: a burst of --clients concurrent chat completions (each client keeps one in flight).
   Times from the burst's start to Serve's first decision for more replicas (its target count
   moves) and to a second replica RUNNING; then, after the burst, back to one replica. Printed as
   ratios against the baseline (a second replica can never come faster than a replica starts).
3. Oscillation: --cycles square waves of --high-s seconds with the clients on and --low-s seconds
   off, twice: window off (upscale and downscale delay 0) and window on (--upscale-delay-s,
   --downscale-delay-s). Between the two, only the autoscaling config changes, in place (no replica
   restarts; checked). Serve's target and running replica counts are read every 0.5 s; the trace
   prints each change with its time, and the counts of decisions (target changes) and of replica
   count changes, with the ratio on/off.

    .venv/bin/python bench/autoscaling.py                        # ~15 min on 2 cores
    .venv/bin/python bench/autoscaling.py --cycles 2 --high-s 40 --low-s 40

Every request's failure is counted. It starts and stops only its own head and scratch folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import ChatLoad, RayHead, replicas  # noqa: E402 — after the path; imports no Django

MODEL = "bench-202612010000-autoscaled"
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def setup_django(scratch: Path, head: RayHead) -> Path:
    os.environ.update(
        {
            "GANTRY_VAR_DIR": str(scratch / "var"),
            "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
            "GANTRY_ENV": "dev",
            "GANTRY_ENGINE": "cpu",
            "GANTRY_SERVE_CLIENT": "serving.cluster.RayServeClient",
            "RAY_ADDRESS": head.address,
            "RAY_DASHBOARD_URL": head.dashboard_url,
            "GANTRY_SERVE_PORT": str(head.serve_port),
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    folder = scratch / "hf" / "tiny-llama"
    call_command("make_tiny_model", str(folder), verbosity=0)
    return folder


def config(model_folder: Path, **bounds) -> dict:
    from serving.llm_config import build_llm_config

    autoscaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 10, **bounds}
    spec = {"model_id": MODEL, "model_source": str(model_folder), "num_replicas": 1, "gpus_per_replica": 0, "autoscaling": autoscaling}
    return build_llm_config(spec, engine="cpu", hf_home=str(model_folder.parent))


class Watch:
    """Serve's running and target replica counts of the model, read on demand, changes kept."""

    def __init__(self, client) -> None:
        self.client = client
        self.trace: list[tuple[float, int, int | None]] = []
        self.t0 = time.monotonic()

    def read(self) -> tuple[int, int | None]:
        app = self.client.status(targets=True).get(MODEL)
        now = (app.running_replicas, app.target_replicas) if app else (0, None)
        if not self.trace or self.trace[-1][1:] != now:
            self.trace.append((round(time.monotonic() - self.t0, 1), *now))
        return now

    def until(self, what: str, check, timeout_s: float, every_s: float = 0.5) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check(*self.read()):
                return time.monotonic()
            time.sleep(every_s)
        raise SystemExit(f"{what} did not happen within {timeout_s:g} s; trace (s, running, target): {self.trace}")

    def hold(self, seconds: float, every_s: float = 0.5) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.read()
            time.sleep(every_s)

    def counts(self) -> tuple[int, int]:
        targets = [t for _, _, t in self.trace if t is not None]
        running = [r for _, r, _ in self.trace]
        return _changes(targets), _changes(running)


def _changes(values: list) -> int:
    return sum(1 for a, b in zip(values, values[1:]) if a != b)


def oscillate(head: RayHead, watch: Watch, args, label: str) -> tuple[int, int, int]:
    watch.trace.clear()
    watch.t0 = time.monotonic()
    failed = 0
    for cycle in range(args.cycles):
        with ChatLoad(head, MODEL, args.clients) as load:
            watch.hold(args.high_s)
        failed += len(load.failed)
        watch.hold(args.low_s)
    decisions, moves = watch.counts()
    say(f"{label}: {decisions} scale decisions, {moves} replica count changes, {failed} failed requests")
    say(f"{label} trace (s, running, target), changes only: {watch.trace}")
    return decisions, moves, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--high-s", type=float, default=45)
    parser.add_argument("--low-s", type=float, default=45)
    parser.add_argument("--upscale-delay-s", type=float, default=60)
    parser.add_argument("--downscale-delay-s", type=float, default=120)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="gantry-bench-autoscaling-"))
    head = RayHead()
    try:
        head.wait_until_up()
        model_folder = setup_django(scratch, head)
        from serving.cluster import RayServeClient

        client = RayServeClient()
        client.ensure_started(http_port=head.serve_port)
        watch = Watch(client)

        first = config(model_folder)
        started = time.monotonic()
        client.apply_model(MODEL, first)
        baseline = watch.until("the first replica RUNNING", lambda running, target: running == 1, 600) - started
        say(f"baseline: one replica from nothing to RUNNING in {baseline:.1f} s")

        watch.trace.clear()
        watch.t0 = burst_start = time.monotonic()
        with ChatLoad(head, MODEL, args.clients) as burst:
            decided = watch.until("a decision for more replicas", lambda running, target: (target or 0) > 1, 300) - burst_start
            second = watch.until("a second replica RUNNING", lambda running, target: running > 1, 600) - burst_start
        burst_end = time.monotonic()
        back = watch.until("back to one replica", lambda running, target: running == 1 and target == 1, 600) - burst_end
        say(
            f"reaction: decision after {decided:.1f} s, second replica RUNNING after {second:.1f} s "
            f"({second / baseline:.2f}x the baseline), back to 1 replica {back:.1f} s after the burst "
            f"(downscale delay 10 s); {burst.ok} answered, {len(burst.failed)} failed"
        )
        say(f"burst trace (s, running, target): {watch.trace}")

        off = config(model_folder, upscale_delay_s=0, downscale_delay_s=0)
        client.apply_model(MODEL, off, previous=first)
        kept = replicas(head, MODEL)
        time.sleep(5)
        off_counts = oscillate(head, watch, args, "window off (delays 0 s / 0 s)")

        watch.until("one replica again", lambda running, target: running == 1 and target == 1, 600)
        before = replicas(head, MODEL)
        on = config(model_folder, upscale_delay_s=args.upscale_delay_s, downscale_delay_s=args.downscale_delay_s)
        client.apply_model(MODEL, on, previous=off)
        time.sleep(5)
        restarted = before != replicas(head, MODEL)
        on_counts = oscillate(head, watch, args, f"window on (delays {args.upscale_delay_s:g} s / {args.downscale_delay_s:g} s)")

        ratio = on_counts[0] / off_counts[0] if off_counts[0] else float("nan")
        print()
        print(f"reaction (second replica RUNNING / one replica's start): {second / baseline:.2f}x  ({second:.1f} s / {baseline:.1f} s)")
        print(f"decision after:                                           {decided:.1f} s")
        print(f"scale decisions, window on / off:                        {on_counts[0]} / {off_counts[0]} = {ratio:.2f}x")
        print(f"replica count changes, window on / off:                  {on_counts[1]} / {off_counts[1]}")
        print(f"failed requests (burst, off, on):                         {len(burst.failed)}, {off_counts[2]}, {on_counts[2]}")
        print(f"replicas restarted by changing the window:               {'yes' if restarted else 'none'} (kept {len(kept)} after the first change)")
        client.delete_model(MODEL)
        watch.until("the model gone", lambda running, target: running == 0 and target is None, 120)
    finally:
        head.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
