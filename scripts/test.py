"""``make test``: the suite in two shards at once, each with its own databases and state folder.

Much of the suite waits on processes it starts (servers, workers, sandboxes, browsers), so two
shards on two cores finish well before one. Each shard gets its own PostgreSQL database and Redis
database number (from DATABASE_URL and REDIS_URL when set) and its own CONSOLE_VAR_DIR; their
lines are printed as they come, prefixed with the shard, and each ends with pytest's summary
line. Arguments are passed to pytest, which then runs once, unsharded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
# Balanced by their measured times (pytest --durations); everything else runs in the second.
FIRST = (
    "tests/agents",
    "tests/browser",
    "tests/vmdriver",
    "tests/scaling",
    "tests/dashboard",
    "tests/usage",
    "tests/operator_agent",
    "tests/multihost",
    "tests/deploy",
    "tests/test_schemathesis.py",
)


def _shard_env(index: int) -> dict[str, str]:
    env = dict(os.environ)
    env["CONSOLE_VAR_DIR"] = f"var/test-{index}"
    if url := env.get("DATABASE_URL"):
        parts = urlsplit(url)
        env["DATABASE_URL"] = urlunsplit(parts._replace(path=f"{parts.path}_{index}"))
    if url := env.get("REDIS_URL"):
        parts = urlsplit(url)
        number = int(parts.path.lstrip("/") or 0)
        env["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{number + 2 + index}"))
    return env


def _relay(prefix: str, stream: object, kept: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        kept.append(line)
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    if argv:
        return subprocess.call([*pytest, *argv], cwd=ROOT)
    shards = [
        [*pytest, *FIRST],
        [*pytest, "tests", *(f"--ignore={path}" for path in FIRST)],
    ]
    running, outputs, relays = [], [], []
    for index, command in enumerate(shards, 1):
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_shard_env(index),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        kept: list[str] = []
        relay = threading.Thread(target=_relay, args=(f"[{index}]", proc.stdout, kept))
        relay.start()
        running.append(proc)
        outputs.append(kept)
        relays.append(relay)
    codes = [proc.wait() for proc in running]
    for relay in relays:
        relay.join()
    print("\n=== the shards' summaries ===")
    for index, kept in enumerate(outputs, 1):
        summary = next((line for line in reversed(kept) if line.startswith("=")), "(no summary)")
        print(f"[{index}] {summary.rstrip()}")
    return next((code if code > 0 else 1 for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
