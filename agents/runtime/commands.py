"""A command the console runs in the sandbox for the agent's owner (``POST /exec``).

An argv runs as it is; a shell string runs with ``/bin/sh -c``. Either runs in the workspace
(or a directory in it), with the environment the tools' commands get (no gateway token, nothing
that looks like a secret), no standard input, in a process group of its own: at its time limit
the whole group is killed, and so is whatever it left running once it exits. Its standard output
and error are kept separately, each up to the output limit; the rest is read and counted, not
kept, so a chatty command never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.workspace import EXEC_OUTPUT_CEILING, EXEC_TIMEOUT_CEILING

__all__ = ["CommandRefused", "ExecRequest", "exec_parse", "exec_run"]

_MAX_ARGS = 4096
_MAX_ARGV_BYTES = 256 * 1024
_DEFAULT_TIMEOUT = 60.0
_DEFAULT_OUTPUT = 1024 * 1024
_READ = 65536


class CommandRefused(Exception):
    """A command request refused before it ran (400)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details or {}


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    shell: bool
    cwd: str
    timeout: float
    output_limit: int


def _number(body: Mapping[str, Any], name: str, default: float, ceiling: float) -> float:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandRefused(f"{name} must be a number", {name: ["Must be a number."]})
    if value <= 0 or value > ceiling:
        raise CommandRefused(
            f"{name} must be more than 0 and at most {ceiling:g}", {name: [f"At most {ceiling:g}."]}
        )
    return value


def exec_parse(body: Any) -> ExecRequest:
    """A ``/exec`` body: ``argv`` (a list of strings) or ``command`` (a shell string), and
    optionally ``cwd`` (a workspace directory), ``timeout_seconds`` and ``output_limit_bytes``."""
    if not isinstance(body, dict):
        raise CommandRefused("the body must be a JSON object")
    argv, command = body.get("argv"), body.get("command")
    if (argv is None) == (command is None):
        raise CommandRefused("give either argv (a list of strings) or command (a shell string)")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            raise CommandRefused("command must be a non-empty string")
        words: tuple[str, ...] = ("/bin/sh", "-c", command)
    else:
        if (
            not isinstance(argv, list)
            or not argv
            or len(argv) > _MAX_ARGS
            or not all(isinstance(word, str) for word in argv)
            or not argv[0]
        ):
            raise CommandRefused(
                f"argv must be a list of 1 to {_MAX_ARGS} strings, the first not empty"
            )
        words = tuple(argv)
    if any("\x00" in word for word in words):
        raise CommandRefused("the command must not contain NUL bytes")
    if sum(len(word.encode("utf-8", "replace")) for word in words) > _MAX_ARGV_BYTES:
        raise CommandRefused(f"the command is longer than {_MAX_ARGV_BYTES} bytes")
    cwd = body.get("cwd", "") or ""
    if not isinstance(cwd, str):
        raise CommandRefused("cwd must be a string")
    return ExecRequest(
        argv=words,
        shell=command is not None,
        cwd=cwd,
        timeout=_number(body, "timeout_seconds", _DEFAULT_TIMEOUT, EXEC_TIMEOUT_CEILING),
        output_limit=int(_number(body, "output_limit_bytes", _DEFAULT_OUTPUT, EXEC_OUTPUT_CEILING)),
    )


class _Kept:
    """One stream's first ``limit`` bytes, and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.total = limit, bytearray(), 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ):
            self.total += len(chunk)
            self.kept.extend(chunk[: max(0, self.limit - len(self.kept))])

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def exec_run(request: ExecRequest, *, cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Run the command in ``cwd``; its exit code (None when it timed out), its output, and how
    long it ran. A command that cannot be started (no such program) answers exit code 127,
    with the reason in its standard error, as a shell would."""
    started = time.monotonic()
    stdout, stderr = _Kept(request.output_limit), _Kept(request.output_limit)
    try:
        process = await asyncio.create_subprocess_exec(
            *request.argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
        )
    except OSError as exc:
        return {
            "exit_code": 127,
            "stdout": "",
            "stderr": f"{request.argv[0]}: {exc.strerror or exc}\n",
            "timed_out": False,
            "truncated": False,
            "stdout_bytes": 0,
            "stderr_bytes": 0,
            "duration_ms": round((time.monotonic() - started) * 1000),
        }
    assert process.stdout is not None and process.stderr is not None
    readers = {
        asyncio.create_task(stdout.drain(process.stdout)),
        asyncio.create_task(stderr.drain(process.stderr)),
    }

    async def exited() -> None:
        # Not process.wait(): it also waits for the pipes to close, which a process left in
        # the background keeps open.
        while process.returncode is None:
            await asyncio.sleep(0.02)

    timed_out = False
    try:
        await asyncio.wait_for(exited(), request.timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # Whatever happened (done, timed out, the caller gone), nothing outlives the call.
        _kill_group(process.pid)
        await exited()
        # A process that left the group may hold a pipe still; it does not hold us up.
        await asyncio.wait(readers, timeout=1.0)
        for reader in readers:
            reader.cancel()
    return {
        "exit_code": None if timed_out else process.returncode,
        "stdout": stdout.text(),
        "stderr": stderr.text(),
        "timed_out": timed_out,
        "truncated": stdout.truncated or stderr.truncated,
        "stdout_bytes": stdout.total,
        "stderr_bytes": stderr.total,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }
