"""The bridge between agents and vmdriver: which driver, what a sandbox runs, and its health."""

from __future__ import annotations

import json
import logging
import ssl
import sys
import time
from collections.abc import Generator, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from django.conf import settings
from django.core import signing
from django.core.exceptions import ImproperlyConfigured

import agents.runtime
import wire
from agents.models import Agent, AgentMcpServer
from agents.runtime.architectures import ARCHITECTURES, architecture_problem
from agents.runtime.tools import TOOL_DEFINITIONS, enabled_tools
from vmdriver import Driver, VmDriverError, VmSpec, make_driver
from vmdriver.gpus import GpuUnit, gpus_detect, gpus_from_inventory, gpus_inventory, units_of
from vmdriver.isolation import bwrap_problem
from vmdriver.qemu import QemuDriver
from wire import relaytoken
from wire.logs import HEADER as REQUEST_ID_HEADER
from wire.logs import current_request_id

__all__ = [
    "ARCHITECTURES",
    "BUILTIN_TOOLS",
    "agent_endpoint",
    "agent_token_issue",
    "agent_token_verify",
    "architecture_problem",
    "driver",
    "host_accel",
    "relay_log_tail",
    "relay_target",
    "runtime_client_sync",
    "runtime_session",
    "runtime_spec",
    "wait_healthy",
]

_TOKEN_SALT = "agents.gateway-token"
# The tools every runtime has built in, which a spawn may narrow (``Agent.builtin_tools``).
BUILTIN_TOOLS = tuple(TOOL_DEFINITIONS)
logger = logging.getLogger(__name__)


@cache
def driver() -> Driver:
    """This host's sandbox driver, as the settings choose it."""
    isolation = "bwrap"
    if settings.SANDBOX_ALLOW_UNSANDBOXED and bwrap_problem() is not None:
        isolation = "none"
    return make_driver(
        settings.SANDBOX_BACKEND,
        state_dir=settings.SANDBOX_STATE_DIR,
        isolation=isolation,
        ro_binds=_runtime_files(),
        guest_dir=settings.SANDBOX_GUEST_DIR,
    )


def host_accel() -> str:
    """How this host runs microVMs ("kvm" or "tcg", probed once); "" for the process backend.

    A qemu host that cannot boot guests (no QEMU, no guest image) says why in the log and
    reports "", so that its worker still registers and its boots fail with that reason.
    """
    try:
        sandboxes = driver()
        return sandboxes.accel_in_use() if isinstance(sandboxes, QemuDriver) else ""
    except VmDriverError as exc:
        logger.error("microVMs cannot boot on this host: %s", exc)
        return ""


def host_gpus() -> list[dict[str, Any]]:
    """This host's GPUs as the console records them (SANDBOX_HOST_GPUS: read from nvidia-smi,
    none, or declared). A declaration that does not parse, or an nvidia-smi that fails, stops
    the worker's registration with the reason: a host must not claim GPUs it cannot give, nor
    register as having none because its driver is broken."""
    choice = settings.SANDBOX_HOST_GPUS
    if choice == "none":
        return []
    if choice == "auto":
        return gpus_inventory(gpus_detect())
    try:
        declared = json.loads(choice)
        if not isinstance(declared, list):
            raise ValueError("not a list")
        return gpus_inventory(gpus_from_inventory(declared))
    except ValueError as exc:
        raise ImproperlyConfigured(f"SANDBOX_HOST_GPUS does not declare GPUs: {exc}") from exc


def gpu_units(gpus: Iterable[Mapping[str, Any]]) -> list[GpuUnit]:
    """What a host's recorded GPUs can be given as: each MIG slice, each other GPU whole."""
    return units_of(gpus_from_inventory(gpus))


def _runtime_files() -> list[tuple[str, str]]:
    """What a sandboxed runtime may read: its interpreter, libraries and its own source only
    (with the wire layer it imports)."""
    runtime = Path(agents.runtime.__file__).parent
    shared = Path(wire.__file__).parent  # the framework-free modules the runtime imports
    paths = {
        sys.base_prefix,
        sys.prefix,
        str(runtime),
        str(runtime.parent / "__init__.py"),
        str(shared),
    }
    # The machine's CA certificates: an https gateway's certificate is checked against them.
    trusted = ssl.get_default_verify_paths().cafile
    if trusted and Path(trusted).is_file():
        paths.add(trusted)
    return [(path, path) for path in sorted(paths)]


def _request_id_header() -> dict[str, str]:
    """The current request id, which the runtime logs and passes on to the gateway."""
    request_id = current_request_id()
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every runtime client: a client builds a new one otherwise, loading
    the CA bundle each time (~30 ms of CPU), and every chat turn opens a client."""
    return httpx.create_ssl_context()


def agent_endpoint(*, agent: Agent, local: str) -> str:
    """Where the console reaches an agent this host booted, its runtime listening at ``local``:
    through this host's relay when it has one, else ``local`` itself (one machine)."""
    relay = settings.SANDBOX_RELAY_URL
    return f"{relay}/{agent.pk}" if relay else local


def relay_target(endpoint: str) -> tuple[str, str] | None:
    """``(relay URL, agent id)`` for an agent relay's endpoint (``http(s)://host:port/<id>``);
    None for a runtime's own (``unix:…``, or a microVM's forwarded ``http://127.0.0.1:port``)."""
    parts = urlsplit(endpoint)
    agent_id = parts.path.strip("/")
    if parts.scheme not in {"http", "https"} or not agent_id or "/" in agent_id:
        return None
    return f"{parts.scheme}://{parts.netloc}", agent_id


def _relay_token(agent_id: str, method: str, path: str) -> str:
    key = settings.SANDBOX_RELAY_KEY
    if not key:  # the relay refuses the request, and says so in its log
        logger.error("SANDBOX_RELAY_KEY is not set: requests to agent relays are refused")
        return ""
    return relaytoken.token_make(
        key, agent_id=agent_id, method=method, path=path, ttl=settings.SANDBOX_RELAY_TOKEN_SECONDS
    )


def _relay_middleware(agent_id: str) -> aiohttp.ClientMiddlewareType:
    """Sends each request of a session to the agent's path on its relay, with its token."""
    prefix = f"/{agent_id}"

    async def through_relay(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        url = request.url
        request.url = url.with_path(prefix + url.raw_path, encoded=True).with_query(url.query)
        path = request.url.raw_path_qs
        request.headers[relaytoken.HEADER] = _relay_token(agent_id, request.method, path)
        return await handler(request)

    return through_relay


class _RelayAuth(httpx.Auth):
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        path = request.url.raw_path.decode("ascii")
        request.headers[relaytoken.HEADER] = _relay_token(self.agent_id, request.method, path)
        yield request


def runtime_session(endpoint: str, *, timeout: float) -> aiohttp.ClientSession:
    """An HTTP session for a runtime's endpoint (``http://…``, ``unix:<socket>``, or its host's
    relay, each request signed), its paths relative to the runtime's root, sending the current
    request id; ``timeout`` bounds the connect and each read. aiohttp's: it reads a streamed
    reply for a fraction of the CPU per chunk of httpx's, and a chat turn's every chunk passes
    through it."""
    middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = ()
    if endpoint.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(endpoint.removeprefix("unix:"))
        base_url = "http://sandbox"
    elif relay := relay_target(endpoint):
        connector, base_url = aiohttp.TCPConnector(ssl=_tls()), relay[0]
        middlewares = (_relay_middleware(relay[1]),)
    else:
        connector, base_url = aiohttp.TCPConnector(ssl=_tls()), endpoint
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=connector,
        headers=_request_id_header(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        middlewares=middlewares,
    )


def runtime_client_sync(endpoint: str, *, timeout: float) -> httpx.Client:
    headers = _request_id_header()
    if endpoint.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=endpoint.removeprefix("unix:"), verify=_tls())
        return httpx.Client(
            transport=transport, base_url="http://sandbox", timeout=timeout, headers=headers
        )
    relay = relay_target(endpoint)
    return httpx.Client(
        base_url=endpoint,
        timeout=timeout,
        headers=headers,
        verify=_tls(),
        auth=_RelayAuth(relay[1]) if relay else None,
    )


def agent_token_issue(*, agent: Agent) -> str:
    """A signed, expiring token that lets one agent's runtime call the gateway, and nothing else."""
    return "agt_" + signing.TimestampSigner(salt=_TOKEN_SALT).sign(str(agent.id))


def agent_token_verify(*, token: str) -> str | None:
    """The agent id a token was issued to, or None when it is forged or expired."""
    if not token.startswith("agt_"):
        return None
    try:
        return signing.TimestampSigner(salt=_TOKEN_SALT).unsign(
            token.removeprefix("agt_"), max_age=settings.AGENT_TOKEN_TTL_SECONDS
        )
    except signing.BadSignature:
        return None


def _tools_env(agent: Agent) -> dict[str, str]:
    """``AGENT_TOOLS`` and ``AGENT_MCP_SERVERS`` for the agent's runtime: the built-in tools it
    was given, within those the operator's ``AGENT_TOOLS`` enables, and its MCP servers' names
    (each reached at the gateway's ``/mcp/<name>``)."""
    env: dict[str, str] = {}
    if agent.builtin_tools is not None:
        allowed = enabled_tools(settings.AGENT_RUNTIME_ENV.get("AGENT_TOOLS", ""))
        chosen = [name for name in agent.builtin_tools if name in allowed]
        env["AGENT_TOOLS"] = ",".join(chosen) or "none"
    names = [server.name for server in agent.mcp_servers.all()]
    if agent.console_mcp:
        names.append(AgentMcpServer.CONSOLE)
    if names:
        env["AGENT_MCP_SERVERS"] = ",".join(names)
    return env


def runtime_spec(*, agent: Agent) -> VmSpec:
    env = {
        **settings.AGENT_RUNTIME_ENV,
        "AGENT_ID": str(agent.id),
        "AGENT_GATEWAY_URL": settings.GATEWAY_URL,
        "AGENT_MODEL": agent.model,
        "AGENT_SYSTEM_PROMPT": agent.system_prompt,
        "AGENT_MAX_CONCURRENT_SESSIONS": str(agent.max_concurrent_sessions),
        "AGENT_ARCHITECTURE": agent.architecture,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(settings.BASE_DIR),
        **_tools_env(agent),
    }
    return VmSpec(
        name=agent.sandbox_id,
        vcpus=agent.vcpus,
        memory_mib=agent.memory_mib,
        image=(sys.executable, "-m", "agents.runtime"),
        env=env,
        ports=(8080,),
        gateway=settings.GATEWAY_URL,
        secrets={"AGENT_GATEWAY_TOKEN": agent_token_issue(agent=agent)},
        gpus=tuple(GpuUnit(**unit) for unit in agent.gpus),
    )


def relay_log_tail(*, endpoint: str, lines: int) -> str:
    """The last ``lines`` lines of an agent's runtime log, asked of its host's relay; "" (and
    a line in this log) when the relay does not answer them."""
    try:
        with runtime_client_sync(endpoint, timeout=5.0) as client:
            response = client.get("/logs", params={"lines": lines})
    except httpx.HTTPError as exc:
        logger.warning("the agent relay at %s could not be reached: %s", endpoint, exc)
        return ""
    if response.status_code != 200:
        logger.warning("the agent relay at %s answered %s", endpoint, response.status_code)
        return ""
    return response.text


def wait_healthy(*, endpoint: str, sandbox_id: str, timeout: float) -> bool:
    """Poll the runtime's /health until it answers 200, the sandbox dies, or time runs out."""
    deadline = time.monotonic() + timeout
    with runtime_client_sync(endpoint, timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if driver().status(sandbox_id).state != "running":
                return False
            time.sleep(0.05)
    return False
