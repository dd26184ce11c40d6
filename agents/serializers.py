"""Request and response shapes of the Hypercore-compatible agent routes."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from agents.models import Agent

__all__ = [
    "AgentSerializer",
    "ChatRequestSerializer",
    "ListQuerySerializer",
    "SpawnRequestSerializer",
]


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
        help_text="Your own key; stored encrypted.",
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
            "last_error",
        ]
        read_only_fields = fields

    def get_url(self, agent: Agent) -> str:
        return f"{settings.CONSOLE_BASE_URL}/agents/{agent.pk}"

    def get_metrics_url(self, agent: Agent) -> str:
        return f"{settings.CONSOLE_BASE_URL}/agents/{agent.pk}/metrics"


class ChatRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=200_000, trim_whitespace=False)
    user_id = serializers.CharField(required=False, max_length=150)
    session_id = serializers.UUIDField(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        required=False, default=4096, min_value=1, max_value=128_000
    )
    stream = serializers.BooleanField(required=False, default=False)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The prompt may not be blank.")
        return value
