"""The MCP servers an agent may use: which URLs may be named, how they are kept, and which one
a call through the gateway may reach.

An agent's MCP traffic leaves its sandbox only through the gateway, so the URLs an agent names
are what the console's own network could be asked to reach. A URL must be ``http`` or
``https``; with ``AGENT_MCP_ALLOWED_HOSTS`` empty it may name any host whose addresses are all
public (checked at spawn for an address in the URL, and at every connection for each address
its name resolves to), else only a host the setting lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from agents.models import Agent, AgentMcpServer
from agents.sandbox import agent_token_verify
from console.models import User
from console.services import user_check_active
from plumbing.crypto import decrypt, encrypt
from plumbing.errors import BadRequest, Forbidden, NotAuthenticated, NotFound

__all__ = [
    "CONSOLE_MCP",
    "MCP_NAME_SHAPE",
    "McpRoute",
    "McpServerSpec",
    "address_allowed",
    "agent_mcp_route",
    "agent_mcp_servers_record",
    "host_allowed",
    "mcp_url_check",
]

CONSOLE_MCP = AgentMcpServer.CONSOLE
# A server's name prefixes its tools' (``<name>__<tool>``), which Claude bounds to
# ``[a-zA-Z0-9_-]{1,64}``: no underscore in it, so the first ``__`` splits the two.
MCP_NAME_SHAPE = r"\A[a-z][a-z0-9-]{0,29}\Z"
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    """An MCP server as a spawn names it."""

    name: str
    url: str
    secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class McpRoute:
    """Where one agent's call to one of its MCP servers goes: ``url`` with ``secret``, or the
    console's own server (``console``) acting as ``owner``."""

    agent_id: str
    owner: User
    name: str
    url: str = ""
    secret: str = field(default="", repr=False)

    @property
    def console(self) -> bool:
        return self.name == CONSOLE_MCP and not self.url


def _allowed_hosts() -> list[str]:
    return [host.lower().rstrip(".") for host in settings.AGENT_MCP_ALLOWED_HOSTS]


def host_allowed(host: str) -> bool:
    """Whether ``host`` (a name or an address) is one the operator lists; with no list, None
    of them is listed and only public addresses may be reached."""
    host = host.lower().rstrip(".").strip("[]")
    for allowed in _allowed_hosts():
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


def address_allowed(host: str, address: str) -> bool:
    """Whether a connection to ``host`` may go to ``address``: a host the operator lists, at
    any address; with no list, any host at a public address (not loopback, private,
    link-local such as cloud metadata, multicast, reserved or unspecified)."""
    if _allowed_hosts():
        return host_allowed(host)
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def mcp_url_check(url: str) -> str:
    """``url`` if an agent may name it as an MCP server; else ``BadRequest`` saying why."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise BadRequest("an MCP server's URL must be http or https", details={"url": [url]})
    host = (parts.hostname or "").rstrip(".")
    if not host or parts.username is not None or parts.password is not None:
        raise BadRequest(
            "an MCP server's URL must name a host and no credentials (send those as its secret)",
            details={"url": [url]},
        )
    try:
        parts.port  # noqa: B018 - a malformed port raises
    except ValueError:
        raise BadRequest(
            "an MCP server's URL has a malformed port", details={"url": [url]}
        ) from None
    if _allowed_hosts():
        if not host_allowed(host):
            raise BadRequest(
                f"{host} is not one of the hosts agents' MCP servers may be on "
                "(AGENT_MCP_ALLOWED_HOSTS)",
                details={"url": [url]},
            )
        return url.strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host.lower() in _LOCAL_NAMES or host.lower().endswith((".localhost", ".internal")):
            raise BadRequest(
                f"{host} is this machine's or an internal name; agents' MCP servers must be "
                "on public hosts",
                details={"url": [url]},
            ) from None
        return url.strip()  # a name: its addresses are checked at each connection
    if not address_allowed(host, host):
        raise BadRequest(
            f"{host} is a loopback, private or reserved address; agents' MCP servers must be "
            "on public hosts",
            details={"url": [url]},
        )
    return url.strip()


def agent_mcp_servers_record(*, agent: Agent, servers: Iterable[McpServerSpec]) -> None:
    """Keep the MCP servers ``agent`` was spawned with, their secrets encrypted."""
    AgentMcpServer.objects.bulk_create(
        AgentMcpServer(
            agent=agent,
            name=server.name,
            url=mcp_url_check(server.url),
            secret_encrypted=encrypt(server.secret) if server.secret else "",
        )
        for server in servers
    )


def agent_mcp_route(*, token: str, name: str) -> McpRoute:
    """Where an agent's call to its MCP server ``name`` goes, the agent named by its gateway
    ``token``: ``NotAuthenticated`` without a valid token of an agent that runs, ``NotFound``
    for a server it was not given (another agent's too)."""
    agent_id = agent_token_verify(token=token) if token else None
    if agent_id is None:
        raise NotAuthenticated("send the agent's gateway token in Authorization")
    agent = (
        Agent.objects.select_related("owner__quota")
        .filter(pk=agent_id, deleted_at__isnull=True, status__in=Agent.ACTIVE_STATUSES)
        .first()
    )
    if agent is None:
        raise NotAuthenticated("this agent token belongs to an agent that no longer runs")
    user_check_active(user=agent.owner)
    if name == CONSOLE_MCP and agent.console_mcp:
        return McpRoute(agent_id=str(agent.pk), owner=agent.owner, name=name)
    server = AgentMcpServer.objects.filter(agent=agent, name=name).first()
    if server is None:
        raise NotFound(f"this agent has no MCP server {name!r}", details={"server": name})
    if _allowed_hosts() and not host_allowed(urlsplit(server.url).hostname or ""):
        # The operator has since narrowed the list: a server kept from before is refused.
        raise Forbidden(
            f"{server.name}'s host is no longer one agents' MCP servers may be on",
            details={"server": name},
        )
    secret = decrypt(server.secret_encrypted) if server.secret_encrypted else ""
    return McpRoute(
        agent_id=str(agent.pk), owner=agent.owner, name=name, url=server.url, secret=secret
    )
