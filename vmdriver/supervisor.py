"""``python -m vmdriver.supervisor SANDBOX_DIR``: runs one sandboxed process and its channel.

The supervisor lives outside the sandbox, in the host's network. It applies the cgroup limits,
starts the program under bubblewrap (which dies with the supervisor), and relays the sandbox's
gateway socket to the gateway's TCP address: the sandbox's only way out. SIGTERM stops it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from vmdriver.gpus import GpuUnit, gpu_dev_binds
from vmdriver.isolation import FREEZER_FILE, INSIDE_RUN_DIR, CgroupLimits, bwrap_argv
from vmdriver.qemu import gateway_route
from vmdriver.state import proc_start_time

_RELAY_CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


async def _relay_to(host: str, port: int, inner_r, inner_w) -> None:  # type: ignore[no-untyped-def]
    try:
        outer_r, outer_w = await asyncio.open_connection(host, port)
    except OSError:
        inner_w.close()
        return
    await asyncio.gather(_pipe(inner_r, outer_w), _pipe(outer_r, inner_w))


def _write_secrets(sandbox_dir: Path, folder: Path) -> None:
    """One file per secret, for the program to read once and delete."""
    try:
        secrets: dict[str, str] = json.loads((sandbox_dir / "secrets.json").read_text())
    except (OSError, ValueError):
        secrets = {}
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, value in secrets.items():
        target = folder / name
        target.unlink(missing_ok=True)
        target.touch(mode=0o600)
        target.write_text(value)


def _record_self(sandbox_dir: Path, run_dir: Path) -> None:
    """Where this sandbox answers and which process it is, written by the supervisor itself
    before anything else: a starter killed between starting it and writing them (a worker
    killed mid-boot) leaves a sandbox that can still be found, stopped and destroyed."""
    started = proc_start_time(os.getpid())
    for name, text in (
        ("endpoint", f"unix:{run_dir / 'agent.sock'}"),
        ("pid", f"{os.getpid()} {started}"),
    ):
        tmp = sandbox_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(sandbox_dir / name)


async def supervise(sandbox_dir: Path) -> int:
    spec = json.loads((sandbox_dir / "spec.json").read_text())
    options = json.loads((sandbox_dir / "isolation.json").read_text())
    run_dir = Path(options["run_dir"])
    _record_self(sandbox_dir, run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(options["base_env"]) | spec["env"]
    env["SANDBOX_LISTEN"] = f"unix:{INSIDE_RUN_DIR}/agent.sock"
    _write_secrets(sandbox_dir, run_dir / "secrets")
    env["SANDBOX_SECRETS"] = f"{INSIDE_RUN_DIR}/secrets"

    relay = None
    if route := gateway_route(spec.get("gateway") or ""):  # https without a port: 443
        host, port = route.host, route.port
        gateway_socket = run_dir / "gateway.sock"
        gateway_socket.unlink(missing_ok=True)
        relay = await asyncio.start_unix_server(
            lambda r, w: _relay_to(host, port, r, w), path=str(gateway_socket)
        )
        env["SANDBOX_GATEWAY"] = f"unix:{INSIDE_RUN_DIR}/gateway.sock"

    gpus = [GpuUnit(**unit) for unit in spec.get("gpus", ())]
    if gpus:  # CUDA inside sees these units alone
        env["CUDA_VISIBLE_DEVICES"] = ",".join(unit.uuid for unit in gpus)

    limits = CgroupLimits(spec["name"], spec["memory_mib"], spec["vcpus"])
    limits.apply()
    if limits.problems:
        print(f"sandbox: limits not applied: {'; '.join(limits.problems)}", flush=True)
    freezer = sandbox_dir / FREEZER_FILE
    if limits.freezer is not None:  # the driver pauses the sandbox with it
        freezer.write_text(str(limits.freezer))
    else:
        freezer.unlink(missing_ok=True)
    argv = bwrap_argv(
        workspace=sandbox_dir / "workspace",
        run_dir=run_dir,
        ro_binds=[tuple(pair) for pair in options["ro_binds"]],
        hostname="sandbox",
        devices=gpu_dev_binds(gpus),
    ) + list(spec["image"])
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, preexec_fn=limits.join
    )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.terminate)
    try:
        return await proc.wait()
    finally:
        if relay is not None:
            relay.close()
        limits.remove()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vmdriver.supervisor SANDBOX_DIR")
    sys.exit(asyncio.run(supervise(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
