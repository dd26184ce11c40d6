"""The credentials of the security tables, and the world they run in: every object belongs to
alice; the other users are the outsiders, staff and operators who must or must not reach them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from agents.models import Agent, Message, Session
from agents.sandbox import agent_token_issue
from console.models import Budget, User
from console.services import api_key_create, jwt_login, quota_get
from operator_agent.models import OperatorAction, OperatorRun
from operator_agent.services import operator_agent_create
from scaling.models import ScalingDecision, ScalingRule

# --- Credentials ------------------------------------------------------------------------------

ANON = "anonymous"
READ = "read key"
WRITE = "write key"
ADMIN_NONSTAFF = "admin key of a non-staff user"
STAFF_NOADMIN = "staff key without admin"
STAFF_ADMIN = "staff key with admin"
JWT = "JWT"
AGENT = "agent token"
EXPIRED = "expired JWT"
REVOKED = "revoked key"
SUSPENDED = "suspended user's key"
DELETED = "deleted user's key"
OUTSIDER = "outsider's key"
SESSION_USER = "browser session"
SESSION_STAFF = "staff browser session"
SESSION_SUPER = "superuser browser session"

KINDS = [
    ANON,
    READ,
    WRITE,
    ADMIN_NONSTAFF,
    STAFF_NOADMIN,
    STAFF_ADMIN,
    JWT,
    AGENT,
    EXPIRED,
    REVOKED,
    SUSPENDED,
    DELETED,
    OUTSIDER,
    SESSION_USER,
    SESSION_STAFF,
    SESSION_SUPER,
]
REFUSED = {ANON, AGENT, EXPIRED, REVOKED, DELETED}  # no valid credential of the REST API
SESSIONS = {SESSION_USER, SESSION_STAFF, SESSION_SUPER}


@dataclass(frozen=True, slots=True)
class Caller:
    """What a credential kind is, once authenticated: whose, with which scopes, operator or not."""

    owner: bool  # alice, who owns every object of the rows
    scopes: frozenset[str]
    operator: bool


_RW = frozenset({"read", "write"})
_ALL = frozenset({"read", "write", "admin"})
CALLERS = {
    READ: Caller(True, frozenset({"read"}), False),
    WRITE: Caller(True, _RW, False),
    JWT: Caller(True, _RW, False),
    SESSION_USER: Caller(True, _RW, False),
    ADMIN_NONSTAFF: Caller(False, _RW, False),  # a key's admin scope is bounded by the role
    STAFF_NOADMIN: Caller(False, _RW, False),
    OUTSIDER: Caller(False, _RW, False),
    STAFF_ADMIN: Caller(False, _ALL, True),
    SESSION_STAFF: Caller(False, _ALL, True),
    SESSION_SUPER: Caller(False, _ALL, True),
}


# --- The world the rows run in ----------------------------------------------------------------


@dataclass
class World:
    ids: dict[str, Any]
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, User] = field(default_factory=dict)


def _key(user: User, *scopes: str) -> str:
    return api_key_create(user=user, scopes=list(scopes))[1]


def build_world() -> World:
    make = User.objects.create_user
    alice = make("alice", password="pw")
    bob = make("bob", password="pw", is_staff=True)
    olivia = make("olivia", password="pw", is_staff=True)
    root = make("root", password="pw", is_staff=True, is_superuser=True)
    mallory = make("mallory", password="pw")
    sam = make("sam", password="pw")
    dave = make("dave", password="pw")

    tokens = {
        READ: _key(alice, "read"),
        WRITE: _key(alice, "read", "write"),
        ADMIN_NONSTAFF: _key(bob, "read", "write", "admin"),
        STAFF_NOADMIN: _key(olivia, "read", "write"),
        STAFF_ADMIN: _key(olivia, "read", "write", "admin"),
        SUSPENDED: _key(sam, "read", "write"),
        DELETED: _key(dave, "read", "write"),
        OUTSIDER: _key(mallory, "read", "write"),
    }
    bob.is_staff = False  # bob's admin key outlived his staff role
    bob.save()
    dave.delete()
    revoked, raw = api_key_create(user=alice)
    revoked.revoked_at = timezone.now()
    revoked.save()
    tokens[REVOKED] = raw
    quota = quota_get(user=sam)
    quota.is_suspended = True
    quota.save()
    tokens[JWT] = jwt_login(user=alice)["access"]
    expired = AccessToken(jwt_login(user=alice)["access"])
    expired.set_exp(lifetime=-timedelta(seconds=1))
    tokens[EXPIRED] = str(expired)
    refresh = jwt_login(user=alice)["refresh"]

    agent = Agent.objects.create(
        owner=alice,
        name="alices-agent",
        sandbox_id=str(uuid.uuid4()),
        status=Agent.Status.RUNNING,
        endpoint="http://127.0.0.1:9",  # nothing listens: a runtime that cannot be reached
    )
    tokens[AGENT] = agent_token_issue(agent=agent)
    session = Session.objects.create(agent=agent, user=alice, title="alice's secrets")
    Message.objects.create(session=session, role="user", content="my secret plan")
    spare_key = api_key_create(user=alice, name="spare")[0]
    budget = Budget.objects.create(
        user=alice, metric=Budget.Metric.USD, window=Budget.Window.DAY, limit=Decimal("5")
    )
    rule = ScalingRule.objects.create(
        name="pool-1", model="claude-sonnet-4-5", system_prompt="You are a pool agent."
    )
    decision = ScalingDecision.objects.create(
        rule=rule,
        current_agents=1,
        desired_agents=1,
        observed_sessions=1,
        utilization=Decimal("0.5"),
        action=ScalingDecision.Action.HOLD,
        reason="steady",
        inputs={},
    )
    watcher = operator_agent_create(
        values={
            "name": "watcher",
            "instructions": "Watch the fleet.",
            "model": "claude-sonnet-4-5",
            "daily_usd_cap": Decimal("1"),
            "allowed_tools": ["agent_stop"],
        },
        admin=False,
        actor=olivia,
    )
    idle = operator_agent_create(
        values={
            "name": "idle",
            "instructions": "Wait.",
            "model": "claude-sonnet-4-5",
            "daily_usd_cap": Decimal("1"),
        },
        admin=False,
        actor=olivia,
    )
    run = OperatorRun.objects.create(agent=watcher, trigger="test", status="waiting_approval")
    pending = OperatorAction.objects.create(
        run=run,
        tool_use_id="toolu_1",
        tool="agent_stop",
        arguments={"agent_id": str(agent.pk)},
        status=OperatorAction.Status.PENDING,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    ids = {
        "operator_agent": idle.pk,
        "operator_action": pending.pk,
        "agent": agent.pk,
        "session": session.pk,
        "key": spare_key.pk,
        "budget": budget.pk,
        "alice": alice.pk,
        "rule": rule.pk,
        "decision": decision.pk,
        "refresh": refresh,
    }
    return World(ids, tokens, {SESSION_USER: alice, SESSION_STAFF: olivia, SESSION_SUPER: root})
