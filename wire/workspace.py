"""An agent's workspace files and commands as the console and the agent runtime both speak them:
what a workspace path may be, the runtime's routes, and the limits the console sends with an
upload or a command.

A workspace path is relative to the workspace, ``/``-separated, without ``..``, NUL, or an
absolute start; empty components and ``.`` are dropped, so ``a//b/./c`` is ``a/b/c`` and ``""``
is the workspace itself. The console checks a path with ``workspace_path_parts`` before it
forwards a request; the runtime checks it again, then resolves it beneath the workspace one
component at a time (``agents/runtime/files.py``), which is where symlinks are dealt with.
"""

from __future__ import annotations

__all__ = [
    "EXEC_OUTPUT_CEILING",
    "EXEC_TIMEOUT_CEILING",
    "FILE_LIMIT_HEADER",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "ROUTE_EXEC",
    "ROUTE_FILE",
    "ROUTE_FILES",
    "WORKSPACE_LIMIT_HEADER",
    "WorkspacePathError",
    "workspace_path",
    "workspace_path_parts",
]

# The runtime's routes: ``GET ROUTE_FILES?path=<dir>`` lists a directory; ``GET``, ``PUT`` and
# ``DELETE ROUTE_FILE?path=<file>`` read, write and delete one; ``POST ROUTE_EXEC`` runs a command.
ROUTE_FILES = "/files"
ROUTE_FILE = "/file"
ROUTE_EXEC = "/exec"

# An upload's limits, in bytes, sent by the console from the owner's quota: the runtime
# refuses a file (413) as soon as it passes the first, or the workspace the second.
FILE_LIMIT_HEADER = "X-Workspace-File-Limit"
WORKSPACE_LIMIT_HEADER = "X-Workspace-Size-Limit"

# What the runtime allows whatever it is asked (the console's settings stay within these).
EXEC_TIMEOUT_CEILING = 3600.0
EXEC_OUTPUT_CEILING = 16 * 1024 * 1024

# Linux's own limits: a name of 255 bytes, a path of 4096.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


class WorkspacePathError(ValueError):
    """A path that may not name anything in a workspace; the message says why."""


def workspace_path_parts(raw: str) -> tuple[str, ...]:
    """The components of the workspace path ``raw`` (``()``: the workspace itself); raises
    ``WorkspacePathError`` for an absolute path, ``..``, a NUL byte, or one too long."""
    if not isinstance(raw, str):
        raise WorkspacePathError("the path must be a string")
    if "\x00" in raw:
        raise WorkspacePathError("the path must not contain NUL bytes")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise WorkspacePathError("the path must be valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise WorkspacePathError(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if raw.startswith("/"):
        raise WorkspacePathError(
            "absolute paths are refused: a path is relative to the workspace (a/b.txt)"
        )
    parts = tuple(part for part in raw.split("/") if part not in ("", "."))
    if ".." in parts:
        raise WorkspacePathError("'..' is refused: a path must stay inside the workspace")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise WorkspacePathError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return parts


def workspace_path(raw: str) -> str:
    """``raw`` in its one spelling (``a//./b`` is ``a/b``); ``WorkspacePathError`` as above."""
    return "/".join(workspace_path_parts(raw))
