"""A small client of QMP, QEMU's machine protocol, over the Unix socket ``-qmp`` opens."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, BinaryIO

from vmdriver.errors import VmPauseError

__all__ = ["qmp_call"]


def _reply(reader: BinaryIO) -> dict[str, Any]:
    """The next answer on the socket, past the events QEMU sends whenever it likes."""
    while True:
        line = reader.readline()
        if not line:
            raise VmPauseError("QEMU closed its QMP socket")
        message = json.loads(line)
        if isinstance(message, dict) and "event" not in message:
            return message


def qmp_call(
    path: Path, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> Any:
    """Run one QMP ``command`` on the QEMU whose socket is at ``path`` and return its result;
    ``VmPauseError`` when QEMU cannot be reached or refuses it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            reader = sock.makefile("rb")
            _reply(reader)  # the greeting
            for execute, args in (("qmp_capabilities", None), (command, arguments)):
                request: dict[str, Any] = {"execute": execute}
                if args:
                    request["arguments"] = args
                sock.sendall(json.dumps(request).encode() + b"\n")
                answer = _reply(reader)
                if "error" in answer:
                    detail = answer["error"].get("desc", answer["error"])
                    raise VmPauseError(f"QEMU refused {execute}: {detail}")
            return answer.get("return")
    except (OSError, ValueError) as exc:
        raise VmPauseError(f"QEMU's QMP socket could not be used for {command}: {exc}") from exc
