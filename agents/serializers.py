"""Request and response shapes of the agent routes: Hypercore's and ``/api/v1/``'s."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Agent, AgentMcpServer, Message, OnIdle, Session
from agents.sandbox import BUILTIN_TOOLS
from agents.services.mcp import MCP_NAME_SHAPE, mcp_url_check
from plumbing.errors import BadRequest
from wire import turns

__all__ = [
    "AgentFilterSerializer",
    "AgentSerializer",
    "ChatRequestSerializer",
    "ExecuteRequestSerializer",
    "ExecuteResponseSerializer",
    "ListQuerySerializer",
    "LogsSerializer",
    "McpServerSerializer",
    "MessageSerializer",
    "SendMessageSerializer",
    "SessionCreateSerializer",
    "SessionDetailSerializer",
    "SessionFilterSerializer",
    "SessionSerializer",
    "SpawnRequestSerializer",
    "agent_row_data",
    "validated",
]


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """``data`` as ``serializer_class`` validates it, for views and consumers outside DRF's
    request handling; else ``BadRequest`` naming the first problem, with all of them."""
    found = serializer_class(data=data)
    if not found.is_valid():
        field, problems = next(iter(found.errors.items()))
        while isinstance(problems, dict):  # a nested serializer's: name the inner field
            inner, problems = next(iter(problems.items()))
            field = f"{field}.{inner}"
        details = {k: v if isinstance(v, dict) else list(v) for k, v in found.errors.items()}
        raise BadRequest(f"{field}: {problems[0]}", details=details)
    return dict(found.validated_data)


def _max_tokens() -> serializers.IntegerField:
    """A turn's ``max_tokens``, as ``wire.turns`` bounds it."""
    return serializers.IntegerField(
        required=False,
        default=turns.MAX_TOKENS_DEFAULT,
        min_value=turns.MAX_TOKENS_MIN,
        max_value=turns.MAX_TOKENS_MAX,
    )


# Anthropic's keys are "sk-ant-<kind><nn>-" and about 95 URL-safe characters; checked at spawn,
# so that a copied placeholder is refused there and not at the first chat.
ANTHROPIC_KEY_SHAPE = r"\Ask-ant-[A-Za-z0-9_-]{32,}\Z"


# The most MCP servers one agent may name.
MAX_MCP_SERVERS = 16


class McpServerSerializer(serializers.Serializer):
    """An MCP server an agent is given: its tools are offered to Claude as ``<name>__<tool>``."""

    name = serializers.RegexField(
        MCP_NAME_SHAPE,
        max_length=30,
        help_text="Lowercase letters, digits and -, starting with a letter; prefixes its tools.",
    )
    url = serializers.URLField(max_length=2000, help_text="Its Streamable HTTP endpoint.")
    secret = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        write_only=True,
        max_length=4096,
        help_text="Its bearer token; stored encrypted, sent to it by the gateway only, never "
        "into the sandbox and never returned.",
    )

    def validate_name(self, value: str) -> str:
        if value == AgentMcpServer.CONSOLE:
            raise serializers.ValidationError(
                "console names the console's own MCP server: ask for it with console_mcp"
            )
        return value

    def validate_url(self, value: str) -> str:
        try:
            return mcp_url_check(value)
        except BadRequest as exc:
            raise serializers.ValidationError(exc.message) from None


class SpawnRequestSerializer(serializers.Serializer):
    user_id = serializers.CharField(
        required=False,
        max_length=150,
        help_text="Owner's username; operators may name another user.",
    )
    anthropic_api_key = serializers.CharField(
        required=False,
        write_only=True,
        max_length=512,
        trim_whitespace=True,
        validators=[
            RegexValidator(
                ANTHROPIC_KEY_SHAPE,
                "This is not an Anthropic API key: one starts with sk-ant- and goes on in "
                "letters, digits, - and _ (a placeholder such as sk-ant-api03-... is not one).",
            )
        ],
        help_text="Your own Anthropic key (sk-ant-…); stored encrypted, never returned.",
    )
    cores = serializers.IntegerField(required=False, default=1, min_value=1, max_value=64)
    memory = serializers.IntegerField(
        required=False, default=512, min_value=64, max_value=256 * 1024, help_text="MiB"
    )
    max_concurrent = serializers.IntegerField(
        required=False, default=100, min_value=1, max_value=10_000
    )
    system_prompt = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=100_000, trim_whitespace=False
    )
    model = serializers.CharField(required=False, max_length=100)
    name = serializers.CharField(required=False, default="", allow_blank=True, max_length=100)
    gpus = serializers.IntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=16,
        help_text="GPUs (whole, or MIG slices with gpu_profile) on one host; your quota's "
        "max_gpus bounds those your running agents hold.",
    )
    gpu_model = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=100,
        help_text="Only GPUs whose model name holds this (A100, L4); any when empty.",
    )
    gpu_profile = serializers.RegexField(
        r"\A(?:[0-9]+g\.[0-9]+gb)?\Z",
        required=False,
        default="",
        allow_blank=True,
        max_length=32,
        help_text="MIG slices of this profile (1g.10gb) instead of whole GPUs.",
    )

    tools = serializers.ListField(
        child=serializers.ChoiceField(choices=BUILTIN_TOOLS),
        required=False,
        allow_empty=True,
        max_length=len(BUILTIN_TOOLS),
        help_text="The built-in tools it has (within the operator's AGENT_TOOLS); default: all.",
    )
    mcp_servers = McpServerSerializer(
        many=True, required=False, max_length=MAX_MCP_SERVERS, help_text="MCP servers it may use."
    )
    console_mcp = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Give it the console's own MCP tools, acting as its owner (never as an "
        "operator).",
    )
    on_idle = serializers.ChoiceField(
        choices=OnIdle.choices,
        required=False,
        help_text="Idle past AGENT_IDLE_TIMEOUT_SECONDS, it is stopped (stop) or paused (pause: "
        "its memory kept, resumed by its next turn); default stop, or its warm pool's choice.",
    )

    architecture = serializers.ChoiceField(
        choices=Agent.Architecture.choices,
        required=False,
        default=Agent.Architecture.BUILTIN,
        help_text="How it runs a chat turn: builtin (the runtime's own tool-use loop) or "
        "claude_agent_sdk (the Claude Agent SDK, on process hosts where it is installed).",
    )

    def validate_mcp_servers(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [server["name"] for server in value]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("each MCP server needs a name of its own")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("gpus") and (attrs.get("gpu_model") or attrs.get("gpu_profile")):
            raise serializers.ValidationError(
                {"gpus": "gpu_model and gpu_profile need gpus: how many to give the agent"}
            )
        return attrs


class GpuSerializer(serializers.Serializer):
    """A GPU, or a MIG slice of one, given to an agent."""

    uuid = serializers.CharField()
    model = serializers.CharField()
    profile = serializers.CharField(help_text="Its MIG profile; empty: the whole GPU.")
    memory_mib = serializers.IntegerField()


def gpus_data(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {key: unit[key] for key in ("uuid", "model", "profile", "memory_mib")} for unit in units
    ]


class ListQuerySerializer(serializers.Serializer):
    user_id = serializers.CharField(required=False, max_length=150)


class AgentSerializer(serializers.ModelSerializer):
    agent_id = serializers.UUIDField(source="id", read_only=True)
    url = serializers.SerializerMethodField()
    metrics_url = serializers.SerializerMethodField()
    user_id = serializers.CharField(source="owner.username", read_only=True)
    cores = serializers.IntegerField(source="vcpus", read_only=True)
    memory = serializers.IntegerField(source="memory_mib", read_only=True)
    max_concurrent = serializers.IntegerField(source="max_concurrent_sessions", read_only=True)
    gpus = serializers.SerializerMethodField()

    class Meta:
        model = Agent
        fields = [
            "agent_id",
            "url",
            "metrics_url",
            "status",
            "created_at",
            "user_id",
            "cores",
            "memory",
            "max_concurrent",
            "name",
            "model",
            "backend",
            "accel",
            "architecture",
            "last_error",
            "gpus",
            "on_idle",
            "paused_at",
            "pause_method",
        ]
        read_only_fields = fields

    @extend_schema_field(GpuSerializer(many=True))
    def get_gpus(self, agent: Agent) -> list[dict[str, Any]]:
        return gpus_data(agent.gpus)

    def get_url(self, agent: Agent) -> str:
        return f"{settings.CONSOLE_BASE_URL}/agents/{agent.pk}"

    def get_metrics_url(self, agent: Agent) -> str:
        return f"{settings.CONSOLE_BASE_URL}/agents/{agent.pk}/metrics"


def _timestamp(value: datetime) -> str:
    # As DRF's DateTimeField writes it (UTC, "Z").
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def agent_row_data(row: Mapping[str, Any]) -> dict[str, Any]:
    """``AgentSerializer``'s representation of an agent read as a row (``selectors.agent_rows``):
    the same JSON, for a fraction of the work, so a page of agents costs a query and a loop."""
    agent_id = str(row["id"])
    url = f"{settings.CONSOLE_BASE_URL}/agents/{agent_id}"
    return {
        "agent_id": agent_id,
        "url": url,
        "metrics_url": f"{url}/metrics",
        "status": row["status"],
        "created_at": _timestamp(row["created_at"]),
        "user_id": row["owner__username"],
        "cores": row["vcpus"],
        "memory": row["memory_mib"],
        "max_concurrent": row["max_concurrent_sessions"],
        "name": row["name"],
        "model": row["model"],
        "backend": row["backend"],
        "accel": row["accel"],
        "architecture": row["architecture"],
        "last_error": row["last_error"],
        "gpus": gpus_data(row["gpus"]),
        "on_idle": row["on_idle"],
        "paused_at": _timestamp(row["paused_at"]) if row["paused_at"] else None,
        "pause_method": row["pause_method"],
    }


class ChatRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=200_000, trim_whitespace=False)
    user_id = serializers.CharField(required=False, max_length=150)
    session_id = serializers.UUIDField(required=False, allow_null=True)
    max_tokens = _max_tokens()
    stream = serializers.BooleanField(required=False, default=False)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The prompt may not be blank.")
        return value


# --- /api/v1/ ------------------------------------------------------------------------------------


class AgentFilterSerializer(serializers.Serializer):
    user_id = serializers.CharField(
        required=False, max_length=150, help_text="Owner's username (operators)."
    )
    status = serializers.ChoiceField(choices=Agent.Status.choices, required=False)
    model = serializers.CharField(required=False, max_length=100)
    q = serializers.CharField(required=False, max_length=100, help_text="In the agent's name.")


class LogsSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Agent.Status.choices)
    log = serializers.CharField(help_text="The runtime's last log lines; empty when none.")


class ToolCallSerializer(serializers.Serializer):
    """A tool a turn called: a built-in one, or an MCP server's (``<server>__<tool>``)."""

    name = serializers.CharField()
    input = serializers.JSONField()
    is_error = serializers.BooleanField()
    output = serializers.CharField(help_text="What it answered, cut short.")


class MessageSerializer(serializers.ModelSerializer):
    tool_calls = ToolCallSerializer(many=True, read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "role",
            "content",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "tool_calls",
            "created_at",
        ]
        read_only_fields = fields


class SessionSerializer(serializers.ModelSerializer):
    session_id = serializers.UUIDField(source="id", read_only=True)
    agent_id = serializers.UUIDField(read_only=True)
    user_id = serializers.IntegerField(read_only=True)
    message_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Session
        fields = [
            "session_id",
            "agent_id",
            "user_id",
            "title",
            "message_count",
            "created_at",
            "updated_at",
            "closed_at",
        ]
        read_only_fields = fields


class SessionDetailSerializer(SessionSerializer):
    messages = MessageSerializer(many=True, read_only=True)

    class Meta(SessionSerializer.Meta):
        fields = [*SessionSerializer.Meta.fields, "messages"]
        read_only_fields = fields


class SessionTurnsSerializer(serializers.Serializer):
    session_id = serializers.UUIDField()
    turns = serializers.ListField(
        child=serializers.ListField(child=serializers.DictField()),
        help_text="Each turn's messages in the Messages API's shape: the prompt, then Claude's "
        "replies with their tool_use blocks and the tool_result blocks that answered them; "
        "each block at most 16,000 characters.",
    )


class SessionFilterSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField(required=False)
    open = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="Open (true) or closed (false)."
    )
    q = serializers.CharField(required=False, max_length=200, help_text="In the title.")


class SessionCreateSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    title = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)


class SendMessageSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=200_000, trim_whitespace=False)
    max_tokens = _max_tokens()
    stream = serializers.BooleanField(required=False, default=False)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The message may not be blank.")
        return value


class ExecuteRequestSerializer(serializers.Serializer):
    task_description = serializers.CharField(max_length=5000, trim_whitespace=False)
    context = serializers.JSONField(required=False, help_text="Any JSON, given to the agent.")
    agent_id = serializers.UUIDField(
        required=False, help_text="Default: your running agent with the fewest open sessions."
    )
    max_tokens = _max_tokens()

    def validate_task_description(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The task may not be blank.")
        return value


class ExecuteMetadataSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    session_id = serializers.UUIDField()
    model = serializers.CharField()
    tokens_used = serializers.IntegerField()
    cost_usd = serializers.CharField(help_text="US dollars, a decimal string.")
    timestamp = serializers.DateTimeField()


class ExecuteResponseSerializer(serializers.Serializer):
    result = serializers.CharField()
    metadata = ExecuteMetadataSerializer()
    processing_time_ms = serializers.FloatField(help_text="milliseconds, to two places")
