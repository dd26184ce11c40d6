"""Servers the tests start as processes of their own: started, waited for until they answer,
and stopped with their whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.polling import eventually

__all__ = ["Server", "answers", "free_port", "listens", "server_start", "server_stop", "serving"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server process, its output in ``log``, the leader of a process group of its own."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def answers(
    url: str,
    accept: Callable[[httpx.Response], bool] = lambda response: response.status_code == 200,
) -> bool:
    """Whether ``url`` answers as ``accept`` wants (a 200 by default) within a second."""
    try:
        return accept(httpx.get(url, timeout=1))
    except httpx.HTTPError:
        return False


def listens(port: int) -> bool:
    """Whether a server on this machine's loopback takes connections on ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def server_start(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    url: str = "",
    health: str | None = None,
    port: int | None = None,
    accept: Callable[[httpx.Response], bool] = lambda response: response.status_code == 200,
    timeout: float = 30,
    also: Sequence[Server] = (),
) -> Server:
    """Start ``command`` and wait until ``url + health`` answers as ``accept`` wants (a 200 by
    default) or, without ``health``, until ``port`` takes connections (with neither, do not
    wait). Fails the test with the server's output if it exits first or does not answer in
    time, and with that of each of ``also`` (processes started with it) if one of them exits."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, log, url)
    if health is None and port is None:
        return server

    def up() -> bool:
        for one in (server, *also):
            assert one.process.poll() is None, f"{one.process.args!r} exited:\n{one.output()}"
        if health is not None:
            return answers(f"{url}{health}", accept)
        return listens(port)  # type: ignore[arg-type]

    try:
        eventually(up, timeout, every=0.1, failing=lambda: f"did not answer:\n{server.output()}")
    except BaseException:
        server_stop(server)
        raise
    return server


def server_stop(server: Server, *, grace: float = 10) -> None:
    """SIGTERM the server's process group, and SIGKILL it ``grace`` seconds later or once the
    server has exited (whatever it left behind goes too); ``grace=0`` kills it at once, as a
    crash would."""
    if grace > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


@contextlib.contextmanager
def serving(command: Sequence[str], *, grace: float = 10, **options: object) -> Iterator[Server]:
    """``server_start`` for the block, ``server_stop`` after it."""
    server = server_start(command, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server_stop(server, grace=grace)
