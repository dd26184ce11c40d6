"""The operator agents' approvals as MCP tools: the calls waiting for a person, and a person's
decision on one, as ``/api/v1/operator/actions`` lists and decides them."""

from __future__ import annotations

from typing import Any

from mcpserver.services import Caller
from operator_agent import selectors, services
from operator_agent.serializers import OperatorActionSerializer

__all__ = ["operator_approvals", "operator_decide"]

Json = dict[str, Any]


def operator_approvals(caller: Caller, args: Json) -> Json:
    """The calls of operator agents waiting for approval, oldest first."""
    pending = list(selectors.operator_approvals_pending()[: args["limit"]])
    rows = OperatorActionSerializer(pending, many=True).data
    return {"actions": rows, "count": len(rows)}


def operator_decide(caller: Caller, args: Json) -> Json:
    """Approve or deny one waiting call."""
    action = services.operator_action_decide(
        action_id=args["action_id"], approve=args["decision"] == "approve", actor=caller.user
    )
    return dict(OperatorActionSerializer(action).data)
