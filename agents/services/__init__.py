"""Services for agents: the lifecycle, sandbox hosts, and chat turns."""

from agents.services.chat import (
    ChatResult,
    ChatTurn,
    agent_chat,
    agent_chat_stream,
    agent_for_user,
)
from agents.services.hosts import host_place, host_register, host_set_online, hosts_usage
from agents.services.lifecycle import (
    agent_boot,
    agent_destroy,
    agent_halt,
    agent_restart,
    agent_spawn,
    agent_start,
    agent_stop,
    agent_teardown,
    agents_reap_idle,
    agents_reconcile,
)

__all__ = [
    "ChatResult",
    "ChatTurn",
    "agent_boot",
    "agent_chat",
    "agent_chat_stream",
    "agent_destroy",
    "agent_for_user",
    "agent_halt",
    "agent_restart",
    "agent_spawn",
    "agent_start",
    "agent_stop",
    "agent_teardown",
    "agents_reap_idle",
    "agents_reconcile",
    "host_place",
    "host_register",
    "host_set_online",
    "hosts_usage",
]
