"""The tools Claude may use inside the sandbox: run a command, read and write workspace files.

Each tool takes the ``input`` of a ``tool_use`` block and answers with a ``ToolResult`` (text and
an ``is_error`` flag) that becomes a ``tool_result`` block; a tool never raises for a bad input
or a failing command, Claude is told what went wrong instead. Everything is bounded: commands by
time and by the output kept, files by size and by the workspace directory they must stay in.

Configured by the environment, read once at start-up (a malformed value fails loudly):

* ``AGENT_TOOLS``: ``all`` (the default), ``none``, or a comma list of tool names.
* ``AGENT_WORKSPACE``: the directory the tools act in; the runtime's cwd by default.
* ``AGENT_TOOL_TIMEOUT``: the most seconds a command may run (60); it asks for 30 by default.
* ``AGENT_TOOL_OUTPUT_LIMIT``: bytes of a command's combined stdout and stderr kept (16384).
* ``AGENT_TOOL_FILE_LIMIT``: the most bytes read_file returns or write_file writes (131072).
* ``AGENT_MAX_TOOL_ROUNDS``: tool rounds (tools run, gateway called again) in one turn (10).
* ``AGENT_CONTEXT_TOKENS``: the model's context window in tokens (200000), and
  ``AGENT_COMPACT_PERCENT`` the share of it (80) past which a session's oldest turns are
  replaced by a summary (``loop``).

The file tools keep Claude from wandering out of the workspace by mistake; they are not a
security boundary, since run_command runs as the same user with the whole sandbox in reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agents.runtime.config import ConfigError, env_int

__all__ = [
    "TOOL_DEFINITIONS",
    "TOOL_SETTINGS",
    "McpToolSource",
    "ToolConfig",
    "ToolResult",
    "Toolbox",
    "command_environment",
    "enabled_tools",
]

DEFAULT_COMMAND_TIMEOUT = 30.0
TRUNCATED = "\n[output truncated: {total} bytes in all, only the first {kept} are shown]"
# Names of environment variables a command must not inherit: the gateway token above all, and
# anything else that looks like a credential.
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|AUTH|COOKIE|(?:^|_)(?:API_?)?KEYS?(?:_|$)", re.I
)

TOOL_DEFINITIONS: dict[str, dict[str, Any]] = {
    "run_command": {
        "name": "run_command",
        "description": (
            "Run a shell command with /bin/sh -c in the workspace directory and return its exit "
            "code and combined stdout and stderr. The command is killed, with every process it "
            "started, when it runs past its time limit; long output is truncated. Processes "
            "left running in the background are killed when the command ends."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell command to run."},
                "timeout_seconds": {
                    "type": "number",
                    "description": "Seconds the command may run (default 30; capped).",
                },
            },
            "required": ["command"],
        },
    },
    "read_file": {
        "name": "read_file",
        "description": (
            "Read a text file in the workspace. The path is relative to the workspace; paths "
            "that lead outside it are refused. Large files are truncated."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "File path to read."}},
            "required": ["path"],
        },
    },
    "write_file": {
        "name": "write_file",
        "description": (
            "Write a text file in the workspace, creating missing parent directories and "
            "replacing the file if it exists. The path is relative to the workspace; paths that "
            "lead outside it are refused."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path to write."},
                "content": {"type": "string", "description": "The file's full new content."},
            },
            "required": ["path", "content"],
        },
    },
}


# What an operator may set for every agent: the console passes these on to each sandbox.
TOOL_SETTINGS = (
    "AGENT_TOOLS",
    "AGENT_TOOL_TIMEOUT",
    "AGENT_TOOL_OUTPUT_LIMIT",
    "AGENT_TOOL_FILE_LIMIT",
    "AGENT_MAX_TOOL_ROUNDS",
    "AGENT_CONTEXT_TOKENS",
    "AGENT_COMPACT_PERCENT",
)


def enabled_tools(raw: str) -> tuple[str, ...]:
    """The built-in tools an ``AGENT_TOOLS`` value enables, in order."""
    raw = raw.strip().lower()
    if raw in ("", "all"):
        return tuple(TOOL_DEFINITIONS)
    if raw == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in TOOL_DEFINITIONS]
    if unknown or not names:
        raise ConfigError(
            f"AGENT_TOOLS must be all, none or a comma list of {', '.join(TOOL_DEFINITIONS)}; "
            f"not {raw!r}"
        )
    return names


@dataclass(frozen=True, slots=True)
class ToolConfig:
    enabled: tuple[str, ...]
    workspace: Path
    max_timeout: float
    output_limit: int
    file_limit: int
    max_rounds: int
    # The model's context window, and the share of it past which old turns are compacted.
    context_tokens: int = 200_000
    compact_percent: int = 80

    @classmethod
    def from_env(cls) -> ToolConfig:
        workspace = Path(os.environ.get("AGENT_WORKSPACE") or os.getcwd()).resolve()
        if not workspace.is_dir():
            raise ConfigError(f"AGENT_WORKSPACE is not a directory: {str(workspace)!r}")
        return cls(
            enabled=enabled_tools(os.environ.get("AGENT_TOOLS", "")),
            workspace=workspace,
            max_timeout=float(env_int("AGENT_TOOL_TIMEOUT", 60, minimum=1)),
            output_limit=env_int("AGENT_TOOL_OUTPUT_LIMIT", 16384, minimum=1),
            file_limit=env_int("AGENT_TOOL_FILE_LIMIT", 131072, minimum=1),
            max_rounds=env_int("AGENT_MAX_TOOL_ROUNDS", 10, minimum=0),
            context_tokens=env_int("AGENT_CONTEXT_TOKENS", 200_000, minimum=1000),
            compact_percent=min(95, env_int("AGENT_COMPACT_PERCENT", 80, minimum=10)),
        )


@dataclass(frozen=True, slots=True)
class ToolResult:
    output: str
    is_error: bool = False


class ToolInputError(ValueError):
    """The model called a tool with an input it does not accept."""


def command_environment(environ: Mapping[str, str], gateway_token: str = "") -> dict[str, str]:
    """``environ`` without the gateway token and anything else that looks like a secret."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith("AGENT_GATEWAY_")
        and not _SECRET_NAME.search(name)
        and not (gateway_token and gateway_token in value)
    }


def _text(tool_input: Mapping[str, Any], key: str) -> str:
    value = tool_input.get(key)
    if not isinstance(value, str):
        raise ToolInputError(f"{key} must be a string")
    return value


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(process.pid, signal.SIGKILL)


class McpToolSource(Protocol):
    """Tools of MCP servers (``agents.runtime.mcptools.McpTools``)."""

    @property
    def definitions(self) -> list[dict[str, Any]]: ...

    def knows(self, name: str) -> bool: ...

    async def prepare(self) -> None: ...

    async def run(self, name: str, tool_input: dict[str, Any]) -> ToolResult: ...


class Toolbox:
    """The enabled tools (built-in, and the MCP servers' in ``mcp``), their definitions for
    the gateway, and how to run them."""

    def __init__(
        self, config: ToolConfig, gateway_token: str = "", mcp: McpToolSource | None = None
    ) -> None:
        self.config = config
        self.mcp = mcp
        self._environment = command_environment(os.environ, gateway_token)
        self._tools: dict[str, Callable[[Mapping[str, Any]], Awaitable[ToolResult]]] = {
            "run_command": self.run_command,
            "read_file": self.read_file,
            "write_file": self.write_file,
        }

    @property
    def environment(self) -> dict[str, str]:
        """What commands run with: this process's environment, less anything secret."""
        return dict(self._environment)

    @property
    def definitions(self) -> list[dict[str, Any]]:
        builtin = [TOOL_DEFINITIONS[name] for name in self.config.enabled]
        return builtin + (self.mcp.definitions if self.mcp is not None else [])

    def knows(self, name: str) -> bool:
        return name in self.config.enabled or (self.mcp is not None and self.mcp.knows(name))

    async def prepare(self) -> None:
        """Have every tool listed that can be: the MCP servers' are asked for theirs."""
        if self.mcp is not None:
            await self.mcp.prepare()

    async def run(self, name: str, tool_input: Any) -> ToolResult:
        if not self.knows(name):
            return ToolResult(f"there is no tool named {name!r}", is_error=True)
        if not isinstance(tool_input, dict):
            return ToolResult(f"{name} takes a JSON object as its input", is_error=True)
        if name not in self.config.enabled:
            assert self.mcp is not None
            return await self.mcp.run(name, tool_input)
        try:
            return await self._tools[name](tool_input)
        except ToolInputError as exc:
            return ToolResult(f"{name}: {exc}", is_error=True)

    async def run_command(self, tool_input: Mapping[str, Any]) -> ToolResult:
        command = _text(tool_input, "command")
        if not command.strip():
            raise ToolInputError("command must not be empty")
        timeout = tool_input.get("timeout_seconds", DEFAULT_COMMAND_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ToolInputError("timeout_seconds must be a number")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ToolInputError("timeout_seconds must be a positive number")
        timeout = min(float(timeout), self.config.max_timeout)
        try:
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                command,
                cwd=self.config.workspace,
                env=self._environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as exc:
            return ToolResult(f"the command could not be started: {exc}", is_error=True)
        kept, total = bytearray(), 0

        async def collect() -> None:
            nonlocal total
            assert process.stdout is not None
            # Keep reading past the limit, so that a chatty command is not blocked on a full pipe.
            while chunk := await process.stdout.read(65536):
                total += len(chunk)
                kept.extend(chunk[: max(0, self.config.output_limit - len(kept))])

        async def exited() -> None:
            # Not process.wait(): it also waits for the pipe to close, which a process left
            # in the background keeps open.
            while process.returncode is None:
                await asyncio.sleep(0.02)

        reader = asyncio.create_task(collect())
        timed_out = False
        try:
            await asyncio.wait_for(exited(), timeout)
        except TimeoutError:
            timed_out = True
        finally:
            # Whatever happened (done, timed out, the turn cancelled), nothing outlives the call.
            _kill_group(process)
            await exited()
            # A process that left the group may hold the pipe still; it does not hold us up.
            await asyncio.wait({reader}, timeout=1.0)
            reader.cancel()
        output = kept.decode(errors="replace")
        if total > len(kept):
            output += TRUNCATED.format(total=total, kept=len(kept))
        if timed_out:
            return ToolResult(
                f"the command timed out after {timeout:g} s and was killed\n{output}",
                is_error=True,
            )
        return ToolResult(f"exit code: {process.returncode}\n{output}", process.returncode != 0)

    def _resolve(self, raw: str) -> Path:
        """``raw`` as a path inside the workspace, symlinks followed; refused when it leads out."""
        if not raw.strip():
            raise ToolInputError("path must not be empty")
        if "\x00" in raw:
            raise ToolInputError("path must not contain NUL characters")
        workspace = self.config.workspace
        path = (workspace / raw).resolve()
        if not path.is_relative_to(workspace):
            raise ToolInputError(
                f"{raw!r} is outside the workspace {str(workspace)!r} (after resolving "
                "'..' and symlinks); only paths inside it may be used"
            )
        return path

    def _shown(self, path: Path) -> str:
        return str(path.relative_to(self.config.workspace)) or "."

    async def read_file(self, tool_input: Mapping[str, Any]) -> ToolResult:
        path = self._resolve(_text(tool_input, "path"))
        limit = self.config.file_limit

        def read() -> tuple[bytes, int]:
            with path.open("rb") as file:
                return file.read(limit), os.fstat(file.fileno()).st_size

        try:
            data, size = await asyncio.to_thread(read)
        except IsADirectoryError:
            return ToolResult(f"{self._shown(path)} is a directory, not a file", is_error=True)
        except FileNotFoundError:
            return ToolResult(f"{self._shown(path)} does not exist", is_error=True)
        except OSError as exc:
            return ToolResult(f"{self._shown(path)} cannot be read: {exc.strerror}", True)
        text = data.decode(errors="replace")
        if size > len(data):
            text += TRUNCATED.format(total=size, kept=len(data))
        return ToolResult(text)

    async def write_file(self, tool_input: Mapping[str, Any]) -> ToolResult:
        path = self._resolve(_text(tool_input, "path"))
        data = _text(tool_input, "content").encode()
        if len(data) > self.config.file_limit:
            raise ToolInputError(
                f"content is {len(data)} bytes, more than the {self.config.file_limit} allowed"
            )
        if path == self.config.workspace:
            raise ToolInputError("path must name a file inside the workspace, not the workspace")

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        try:
            await asyncio.to_thread(write)
        except IsADirectoryError:
            return ToolResult(f"{self._shown(path)} is a directory, not a file", is_error=True)
        except OSError as exc:
            return ToolResult(f"{self._shown(path)} cannot be written: {exc.strerror}", True)
        return ToolResult(f"wrote {len(data)} bytes to {self._shown(path)}")
