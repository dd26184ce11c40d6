"""``make run`` under 10 minutes of mixed load while its Celery worker is killed.

Runs what ``make run`` runs (``python -m config.launch``: its embedded broker, web, gateway,
worker and beat, real bubblewrap sandboxes, SQLite) against the fake Anthropic, and drives it
from this process: a gateway call every 0.2 s, spawns, chats, stops and deletions of up to
``--agents`` agents, and a connection to web's and gateway's ``/health`` every 50 ms each. The
worker is killed (SIGKILL) ``--kills`` times, evenly spread, each just after a boot began.
At the end every agent must be in a true state (its status matches its sandbox and its
runtime's ``/health``) and every upstream call must be billed once. The scenario is
``tests/security/test_run_stays_up.py``'s.

    python bench/soak.py [--quick] [--seconds S] [--kills N] [--agents N] [--port P]

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, interrupt_on_signals, print_summary, report

from tests.security.test_run_stays_up import soak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="45 s instead of 10 minutes")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--kills", type=int, default=2, help="worker kills (SIGKILL)")
    parser.add_argument("--agents", type=int, default=4, help="live agents at most")
    parser.add_argument("--port", type=int, default=0, help="web's port; the gateway's is next")
    args = parser.parse_args()
    seconds = 45.0 if args.quick else args.seconds
    interrupt_on_signals()
    began = time.perf_counter()
    ports = (args.port, args.port + 1) if args.port else None
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-", dir=ROOT / "var") as tmp:
        try:
            result = soak(
                Path(tmp),
                seconds=seconds,
                kills=args.kills,
                max_agents=args.agents,
                ports=ports,
                say=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True),
            )
        except KeyboardInterrupt:
            sys.exit("interrupted; the console is stopped")
    print(
        f"INFO {result.seconds:.0f} s of load: {result.probes} health probes, "
        f"{result.gateway_calls} gateway calls, {result.spawns} spawns, {result.chats} chats, "
        f"{result.stops} stops, {result.deletes} deletions, {result.agents} agents, "
        f"{len(result.errors)} refused or failed requests (none a refused connection)"
        if not result.refused
        else f"INFO refused connections: {result.refused[:5]}"
    )
    for error in result.errors[:10]:
        print(f"INFO error: {error}")
    for line in result.false_states:
        print(f"INFO false state: {line}")
    print(f"INFO calls made upstream {result.calls_made}, ledger rows {result.calls_billed}")
    print_summary(
        began,
        [
            report("connections_refused", len(result.refused), "count", "<=", 0),
            report("agents_in_a_false_state", len(result.false_states), "count", "<=", 0),
            report("worker_restarts", result.restarts, "count", ">=", args.kills),
            report(
                "calls_billed_minus_made",
                abs(result.calls_billed - result.calls_made),
                "count",
                "<=",
                0,
            ),
            report("stopped_cleanly_by_sigint", int(result.stopped_cleanly), "bool", ">=", 1),
        ],
    )


if __name__ == "__main__":
    main()
