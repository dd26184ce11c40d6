"""Spawn-to-ready latency per sandbox backend, cold and from the warm pool; resume-to-ready of a
paused agent (and for microVMs, of one saved to disk); and host memory per idle agent.

Runs the console's own spawn path (quota check, placement, sandbox start, health wait) in this
process against a fresh SQLite database, in the environment ``make run`` gives its processes
(``harness.console_environment``), with boots run inline as a worker runs them. Claims from the
warm pool are timed as the web process sees them: the refill is only queued, on ``make run``'s
private broker, which runs for the bench. A resume is timed from the request to a runtime that
answers /health again (the thaw run inline, as a worker runs it), on the agents booted cold,
each paused first.

    python bench/spawn.py [--quick] [--count N] [--backends process,qemu]

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, console_environment, migrate, percentile, report, start_broker


def _setup(var_dir: Path) -> None:
    console_environment(
        var_dir,
        None,
        CELERY_TASK_ALWAYS_EAGER="true",
        AGENT_IDLE_TIMEOUT_SECONDS="0",
        # This process boots agents itself, as a worker would, but runs no heartbeat.
        SANDBOX_HOST_STALE_SECONDS="86400",
    )
    # The microVM guest image is the checkout's own (built once, cached by its recipe).
    os.environ.setdefault("SANDBOX_GUEST_DIR", str(ROOT / "var" / "guest"))
    migrate()


def _tree_pss_kib(pid: int) -> int:
    """Proportional set size of a process and all its descendants, in KiB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def bench_backend(backend: str, count: int, owner) -> list[str]:  # type: ignore[no-untyped-def]
    from django.conf import settings

    from agents import sandbox
    from agents.services import host_register
    from console.models import Quota
    from vmdriver import VmDriverError
    from vmdriver.guest.build import BuildError, build_guest

    settings.SANDBOX_BACKEND = backend
    sandbox.driver.cache_clear()
    try:
        if backend == "qemu":
            build_guest(settings.SANDBOX_GUEST_DIR)
        drv = sandbox.driver()
    except (VmDriverError, BuildError) as exc:  # an unavailable backend is reported, not fatal
        print(f"{backend}: unavailable here: {exc}")
        return []
    accel = sandbox.host_accel()
    host_register(
        name=f"bench-{backend}",
        backend=backend,
        capacity_vcpus=10_000,
        capacity_memory_mib=10_000_000,
        accel=accel,
    )
    Quota.objects.filter(user=owner).update(
        max_agents=10_000, max_total_vcpus=10_000, max_total_memory_mib=10_000_000
    )
    try:
        return _measure(backend, count, owner, drv, accel)
    finally:  # however the run ends, no sandbox outlives it
        for status in drv.list():
            drv.destroy(status.id)


def _measure(backend: str, count: int, owner, drv, accel: str) -> list[str]:  # type: ignore[no-untyped-def]
    from django.conf import settings

    from agents.models import Agent, WarmPool
    from agents.services import agent_destroy, agent_spawn, warm_pool_refill
    from config.celery import app

    memory = 256 if backend == "qemu" else 128
    lines, cold = [], []
    agents = []
    for _ in range(count):
        started = time.perf_counter()
        agent = agent_spawn(owner=owner, vcpus=1, memory_mib=memory)
        agent.refresh_from_db()
        cold.append((time.perf_counter() - started) * 1000)
        if agent.status != "running":
            print(f"{backend}: a boot failed: {agent.last_error[:500]}")
            return []
        agents.append(agent)
    print(
        f"{backend} cold spawn-to-ready over {count}: p50 {statistics.median(cold):.0f} ms, "
        f"p95 {percentile(cold, 95):.0f} ms, max {max(cold):.0f} ms"
        + (f" (accel {accel})" if accel else "")
    )

    pids = [drv.status(a.sandbox_id).pid for a in agents]
    per_agent = sum(_tree_pss_kib(pid) for pid in pids if pid) / len(pids) / 1024
    print(f"{backend}: host memory (PSS) per idle agent: {per_agent:.1f} MiB")
    if backend == "process":
        lines.append(report("process_cold_spawn_p95", percentile(cold, 95), "ms", "<=", 500))
        lines.append(report("process_idle_agent_memory", per_agent, "MiB", "<=", 60))
    else:
        target = 1500 if accel == "kvm" else 8000
        lines.append(
            report(f"microvm_{accel or 'tcg'}_spawn_p95", percentile(cold, 95), "ms", "<=", target)
        )
    lines += _resumes(backend, agents, accel)
    for agent in agents:
        agent_destroy(agent=agent)

    pool = WarmPool.objects.create(
        name=f"bench-{backend}", model=settings.DEFAULT_AGENT_MODEL, memory_mib=memory, size=count
    )
    warm_pool_refill(pool_id=pool.pk)
    ready = Agent.objects.filter(warm_pool=pool, status="running").count()
    claims = []
    app.conf.task_always_eager = False  # as in the web process: the refill is only queued
    try:
        for _ in range(ready):
            started = time.perf_counter()
            agent = agent_spawn(owner=owner, vcpus=1, memory_mib=memory)
            claims.append((time.perf_counter() - started) * 1000)
            assert agent.status == "running", "a claim should hand over a running agent"
    finally:
        app.conf.task_always_eager = True
    print(
        f"{backend} warm-pool claim over {len(claims)}: p50 {statistics.median(claims):.1f} ms,"
        f" p95 {percentile(claims, 95):.1f} ms"
    )
    lines.append(report(f"{backend}_warm_claim_p95", percentile(claims, 95), "ms", "<=", 50))
    for agent in Agent.objects.filter(status__in=Agent.ACTIVE_STATUSES):
        agent_destroy(agent=agent)
    pool.delete()
    return lines


def _resume_times(agents, *, to_disk: bool) -> list[float]:  # type: ignore[no-untyped-def]
    from agents.models import Agent
    from agents.services import agent_freeze, agent_pause, agent_resume

    for agent in Agent.objects.filter(pk__in=[a.pk for a in agents]).select_related("host"):
        agent_pause(agent=agent)
        if to_disk:
            agent_freeze(agent_id=str(agent.pk), to_disk=True)
    times = []
    for agent in Agent.objects.filter(pk__in=[a.pk for a in agents]).select_related("host"):
        assert agent.status == "paused", f"{agent.status}: {agent.last_error[:300]}"
        assert (agent.pause_method == "snapshot") == to_disk, agent.pause_method
        started = time.perf_counter()
        agent_resume(agent=agent)
        agent.refresh_from_db()
        times.append((time.perf_counter() - started) * 1000)
        assert agent.status == "running", f"a resume failed: {agent.last_error[:500]}"
    return times


def _resumes(backend: str, agents, accel: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Pause each agent, then time its resume; microVMs again from a snapshot on disk."""
    kinds = [("", False)] + ([(" from disk", True)] if backend == "qemu" else [])
    lines = []
    for label, to_disk in kinds:
        times = _resume_times(agents, to_disk=to_disk)
        print(
            f"{backend} resume{label}-to-ready over {len(times)}: p50 "
            f"{statistics.median(times):.1f} ms, p95 {percentile(times, 95):.1f} ms"
        )
        p95 = percentile(times, 95)
        if backend == "process":
            lines.append(report("process_resume_p95", p95, "ms", "<=", 100))
        elif to_disk:
            target = 1500 if accel == "kvm" else 8000  # no slower than a cold boot
            lines.append(
                report(f"microvm_{accel or 'tcg'}_resume_disk_p95", p95, "ms", "<=", target)
            )
        else:
            lines.append(report(f"microvm_{accel or 'tcg'}_resume_p95", p95, "ms", "<=", 250))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--count", type=int, help="spawns per backend (default 50; quick 10)")
    parser.add_argument("--backends", default="process,qemu")
    args = parser.parse_args()
    count = args.count or (10 if args.quick else 50)
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as var_dir:
        _setup(Path(var_dir))
        queue = start_broker(Path(var_dir))
        try:
            from console.models import User

            owner = User.objects.create_user(username="bench")
            lines = []
            for backend in args.backends.split(","):
                n = min(count, 3) if backend == "qemu" and args.quick else count
                lines += bench_backend(backend.strip(), n, owner)
        finally:
            if queue is not None:
                queue.stop()
    for line in lines:
        print(line)
    if not lines:
        sys.exit("no backend could be measured")


if __name__ == "__main__":
    main()
