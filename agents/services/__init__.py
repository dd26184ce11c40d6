"""Services for agents: the lifecycle, sandbox hosts, and chat turns."""

from agents.services.chat import (
    ChatResult,
    ChatTurn,
    TurnCancelled,
    agent_chat,
    agent_chat_stoppable,
    agent_chat_stream,
    agent_chat_stream_stoppable,
    agent_for_user,
)
from agents.services.hosts import (
    host_heartbeat,
    host_place,
    host_register,
    host_set_online,
    hosts_mark_stale,
    hosts_usage,
)
from agents.services.lifecycle import (
    agent_boot,
    agent_destroy,
    agent_halt,
    agent_record,
    agent_restart,
    agent_spawn,
    agent_start,
    agent_stop,
    agent_teardown,
    agents_reap_idle,
    agents_reconcile,
)
from agents.services.turns import turn_cancel, turn_in_flight
from agents.services.warm import AgentTemplate, warm_claim, warm_pool_refill, warm_pools_refill

__all__ = [
    "AgentTemplate",
    "ChatResult",
    "ChatTurn",
    "TurnCancelled",
    "agent_boot",
    "agent_chat",
    "agent_chat_stoppable",
    "agent_chat_stream",
    "agent_chat_stream_stoppable",
    "agent_destroy",
    "agent_for_user",
    "agent_halt",
    "agent_record",
    "agent_restart",
    "agent_spawn",
    "agent_start",
    "agent_stop",
    "agent_teardown",
    "agents_reap_idle",
    "agents_reconcile",
    "host_heartbeat",
    "host_place",
    "host_register",
    "host_set_online",
    "hosts_mark_stale",
    "hosts_usage",
    "turn_cancel",
    "turn_in_flight",
    "warm_claim",
    "warm_pool_refill",
    "warm_pools_refill",
]
