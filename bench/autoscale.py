"""One autoscaler pass over 1,000 rules and 10,000 agents: observe every pool, decide, and
record every decision, as beat's tasks do (``scaling.services.scaling_evaluate``).

Builds, with bulk inserts, 1,000 enabled rules spread over 100 owners, each over a pool of its
own template with 10 agents (mostly running; some booting, some draining), about 50,000 open
sessions spread unevenly so that pools grow, shrink and hold, and five minutes of earlier
decisions per rule. Then times successive passes, each an evaluation interval after the last
(so each finds every rule due and reads the decisions of the ones before), and counts each
pass's queries: a pass reads every pool at once, whatever the number of rules. Applying the
decisions (spawning, draining) is per pool and is not part of the pass.

    python bench/autoscale.py [--quick] [--passes N]
                              [--database-url postgres://postgres@127.0.0.1:5432/agent_console_bench]

By default the database is SQLite in a temporary folder; with ``--database-url`` it is that
PostgreSQL database, created (dropped first if it exists) and dropped at the end. ``--quick``
times two passes instead of five.

Ends with ``TARGET autoscale_pass_1000_rules <seconds> s <= 1 PASS|FAIL``, the slowest pass.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import (
    close_database,
    console_environment,
    database_url,
    migrate,
    report,
    scratch_database,
)

RULES = 1000
OWNERS = 100
AGENTS_PER_POOL = 10
MODELS = ("claude-sonnet-4-5", "claude-opus-5-5", "claude-haiku-5-5")
INTERVAL = 30
TARGET_SECONDS = 1.0


def build(rng: random.Random, now: datetime) -> None:
    """The rules, their pools' agents and sessions, and each rule's recent decisions."""
    from agents.models import Agent, Session
    from console.models import User
    from scaling.models import ScalingDecision, ScalingRule

    began = time.perf_counter()
    owners = User.objects.bulk_create(User(username=f"tenant-{n}") for n in range(OWNERS))
    rules = ScalingRule.objects.bulk_create(
        ScalingRule(
            name=f"pool-{n}",
            owner=owners[n % OWNERS],
            model=MODELS[n % len(MODELS)],
            system_prompt=f"You are the agent of pool {n}.",
            min_agents=rng.choice([0, 2, 5]),
            max_agents=200,
            target_sessions_per_agent=rng.choice([2, 5, 10]),
            evaluation_interval_seconds=INTERVAL,
            predictive=n % 4 == 0,
        )
        for n in range(RULES)
    )
    agents = []
    for rule in rules:
        for i in range(AGENTS_PER_POOL):
            status = Agent.Status.STARTING if i == 0 else Agent.Status.RUNNING
            agents.append(
                Agent(
                    owner_id=rule.owner_id,
                    model=rule.model,
                    system_prompt=rule.system_prompt,
                    status=status,
                    draining_since=now - timedelta(minutes=1) if i == 1 else None,
                    sandbox_id=f"bench-{rule.pk}-{i}",
                )
            )
    Agent.objects.bulk_create(agents, batch_size=2000)
    sessions = []
    for index, agent in enumerate(agents):
        load = (index // AGENTS_PER_POOL) % 7  # pools from idle to overloaded
        for _ in range(rng.randint(0, 2 * load)):
            sessions.append(Session(agent=agent, user_id=agent.owner_id))
    Session.objects.bulk_create(sessions, batch_size=5000)
    decisions = [
        ScalingDecision(
            rule=rule,
            created_at=now - timedelta(seconds=INTERVAL * k),
            current_agents=AGENTS_PER_POOL - 1,
            desired_agents=AGENTS_PER_POOL - 1,
            recommended_agents=AGENTS_PER_POOL - 1,
            observed_sessions=rng.randint(0, 100),
            action="hold",
            reason="earlier",
        )
        for rule in rules
        for k in range(1, 11)
    ]
    ScalingDecision.objects.bulk_create(decisions, batch_size=2000)
    print(
        f"built {len(rules):,} rules, {len(agents):,} agents, {len(sessions):,} open sessions, "
        f"{len(decisions):,} earlier decisions in {time.perf_counter() - began:.1f} s",
        flush=True,
    )


def measure(now: datetime, passes: int) -> list[float]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from scaling.services import scaling_evaluate

    timings = []
    for n in range(passes):
        at = now + timedelta(seconds=INTERVAL * n)
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            decisions = scaling_evaluate(now=at)
            elapsed = time.perf_counter() - began
        actions: dict[str, int] = {}
        for decision in decisions:
            actions[decision.action] = actions.get(decision.action, 0) + 1
        if len(decisions) != RULES:
            sys.exit(f"pass {n + 1} evaluated {len(decisions)} rules, not {RULES}")
        print(
            f"pass {n + 1}: {elapsed:.3f} s, {len(queries)} queries, {len(decisions):,} "
            f"decisions ({', '.join(f'{k} {v}' for k, v in sorted(actions.items()))})",
            flush=True,
        )
        timings.append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--passes", type=int, help="timed passes (default 5; quick 2)")
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    passes = args.passes or (2 if args.quick else 5)
    began = time.perf_counter()
    with (
        scratch_database(args.database_url),
        tempfile.TemporaryDirectory(prefix="bench-autoscale-") as var_dir,
    ):
        console_environment(
            Path(var_dir),
            args.database_url,
            unset=("PROMETHEUS_URL",),
            CELERY_TASK_ALWAYS_EAGER="true",
        )
        migrate()
        from django.db import connection

        print(f"database: {connection.vendor}", flush=True)
        now = datetime.now(UTC)
        build(random.Random(args.seed), now)
        timings = measure(now + timedelta(seconds=1), passes)
        close_database()
    print(f"total: {time.perf_counter() - began:.1f} s")
    print(f"slowest pass: {max(timings):.3f} s; fastest {min(timings):.3f} s")
    print(report("autoscale_pass_1000_rules", max(timings), "s", "<=", TARGET_SECONDS))


if __name__ == "__main__":
    main()
