"""The Hypercore-compatible agent routes, and the per-agent chat and metrics endpoints."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from agents import selectors, services
from agents.models import Agent
from agents.sandbox import runtime_session
from agents.serializers import (
    AgentSerializer,
    ChatRequestSerializer,
    ListQuerySerializer,
    SpawnRequestSerializer,
    agent_row_data,
    validated,
)
from agents.services.live import (
    FollowedTurn,
    live_error,
    live_result,
    live_turn_ask,
    live_turn_result,
)
from agents.services.mcp import McpServerSpec
from console.api.permissions import is_operator
from console.authentication import request_user
from console.idempotency import idempotent, idempotent_json
from console.models import User
from plumbing.database import database_sync_to_async
from plumbing.errors import (
    AgentNotFound,
    AgentUnavailable,
    BadRequest,
    ConsoleError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    error_body,
    error_response,
    methods_allowed,
)
from plumbing.parsers import json_loads
from plumbing.views import metrics_token_presented
from wire.sse import sse_frame

__all__ = [
    "IDEMPOTENCY_KEY",
    "HypercoreAgentViewSet",
    "agent_chat",
    "agent_health",
    "agent_metrics",
    "json_object_body",
    "named_user",
    "spawn_requested",
    "spawn_response",
    "sse_response",
    "turn_stream_response",
]

_AGENT_ID = OpenApiParameter("agent_id", str, required=True, description="The agent's id.")
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    location=OpenApiParameter.HEADER,
    description="A retry with the same key gets the first answer (24 h).",
)


def _query_uuid(request: Request, name: str) -> uuid.UUID:
    raw = request.query_params.get(name)
    if not raw:
        raise BadRequest(
            f"the {name} query parameter is required",
            details={name: ["This parameter is required."]},
        )
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"{name} is not a valid id", details={name: ["Must be a UUID."]}) from None


def named_user(viewer: User, username: str | None, *, operator: bool) -> User:
    """The user a request names by ``user_id``: the caller, or anyone for an ``operator``."""
    if not username or username == viewer.username:
        return viewer
    if not operator:
        raise Forbidden("you may only act for yourself", details={"user_id": username})
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user {username!r}", details={"user_id": username})
    return user


def spawn_response(request: Request) -> Response:
    """Spawn the agent a request's body asks for (``SpawnRequestSerializer``): 201 with it."""
    params = SpawnRequestSerializer(data=request.data)
    params.is_valid(raise_exception=True)
    agent = spawn_requested(
        viewer=request.user, operator=is_operator(request), data=params.validated_data
    )
    return Response(AgentSerializer(agent).data, status=status.HTTP_201_CREATED)


def spawn_requested(*, viewer: User, operator: bool, data: dict[str, Any]) -> Agent:
    """Spawn the agent that ``data`` (``SpawnRequestSerializer``'s validated data) asks for,
    owned by ``viewer`` or, for an ``operator``, by the user it names."""
    return services.agent_spawn(
        owner=named_user(viewer, data.get("user_id"), operator=operator),
        model=data.get("model"),
        name=data["name"],
        system_prompt=data["system_prompt"],
        vcpus=data["cores"],
        memory_mib=data["memory"],
        max_concurrent_sessions=data["max_concurrent"],
        anthropic_api_key=data.get("anthropic_api_key", ""),
        gpu=services.GpuRequest(data["gpus"], data["gpu_model"], data["gpu_profile"]),
        builtin_tools=data.get("tools"),
        mcp_servers=tuple(McpServerSpec(**server) for server in data.get("mcp_servers", ())),
        console_mcp=data["console_mcp"],
        on_idle=data.get("on_idle"),
        architecture=data["architecture"],
    )


class HypercoreAgentViewSet(viewsets.GenericViewSet):
    """Agents, on the routes Hypercore's agent manager serves: spawn, list, get, delete, stats."""

    serializer_class = AgentSerializer

    def get_queryset(self):
        return selectors.agent_list(viewer=self.request.user, operator=is_operator(self.request))

    @extend_schema(
        request=SpawnRequestSerializer,
        responses={201: AgentSerializer},
        parameters=[IDEMPOTENCY_KEY],
    )
    @action(detail=False, methods=["post"], url_path="spawn")
    @idempotent
    def spawn(self, request: Request) -> Response:
        return spawn_response(request)

    @extend_schema(
        parameters=[OpenApiParameter("user_id", str, description="Owner's username.")],
        responses=inline_serializer(
            "AgentListResponse",
            {"agents": AgentSerializer(many=True), "count": serializers.IntegerField()},
        ),
    )
    @action(detail=False, methods=["get"], url_path="list")
    def list_agents(self, request: Request) -> Response:
        query = ListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        username = query.validated_data.get("user_id")
        operator = is_operator(request)
        owner = named_user(request.user, username, operator=operator) if username else None
        rows = selectors.agent_page(viewer=request.user, operator=operator, owner=owner)
        data = [agent_row_data(row) for row in rows]
        return Response({"agents": data, "count": len(data)})

    @extend_schema(parameters=[_AGENT_ID], responses=AgentSerializer)
    @action(detail=False, methods=["get"], url_path="get")
    def get_agent(self, request: Request) -> Response:
        agent_id = _query_uuid(request, "agent_id")
        agent = services.agent_for_user(
            user=request.user, agent_id=agent_id, operator=is_operator(request)
        )
        return Response(AgentSerializer(agent).data)

    @extend_schema(parameters=[_AGENT_ID], responses=AgentSerializer)
    @action(detail=False, methods=["delete"], url_path="delete")
    def delete_agent(self, request: Request) -> Response:
        agent_id = _query_uuid(request, "agent_id")
        agent = services.agent_destroy(
            agent=services.agent_for_user(
                user=request.user, agent_id=agent_id, operator=is_operator(request)
            ),
            actor=request.user,
        )
        return Response(AgentSerializer(agent).data | {"deleted": True})

    @extend_schema(
        responses=inline_serializer(
            "AgentStats",
            {
                "scope": serializers.ChoiceField(choices=["own", "all"]),
                "total_agents": serializers.IntegerField(),
                "active_agents": serializers.IntegerField(),
                "by_status": serializers.DictField(child=serializers.IntegerField()),
                "total_sessions": serializers.IntegerField(),
                "open_sessions": serializers.IntegerField(),
                "input_tokens": serializers.IntegerField(),
                "output_tokens": serializers.IntegerField(),
                "cost_usd": serializers.CharField(help_text="US dollars, a decimal string."),
            },
        )
    )
    @action(detail=False, methods=["get"], url_path="stats")
    def stats(self, request: Request) -> Response:
        return Response(selectors.agent_stats(viewer=request.user, operator=is_operator(request)))


def json_object_body(request: HttpRequest) -> dict[str, Any]:
    """The request's body, which must be a JSON object; else ``BadRequest``."""
    body = json_loads(request.body)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """Server-sent events, passed on as they come."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


def _sse_of(event: dict[str, Any]) -> bytes:
    """A turn's event as the chat routes' streams write it."""
    kind = event["type"]
    if kind == "delta":
        return sse_frame("delta", {"text": event["text"]})
    if kind == "tool":
        return sse_frame("tool", event["tool"])
    if kind == "done":
        return sse_frame("done", live_result(event).as_hypercore())
    if kind == "error":
        return sse_frame("error", event["error"])
    return sse_frame(kind, {"session_id": event["session_id"]})  # cancelled


async def turn_stream_response(followed: FollowedTurn) -> HttpResponse:
    """A live turn as SSE, from its first event on; a refusal before the reply's first word
    answers with its own status instead."""
    events = followed.events()
    first = await anext(events)
    if first["type"] == "error":
        await events.aclose()  # type: ignore[attr-defined]
        return error_response(live_error(first))

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield _sse_of(first)
            async for event in events:
                yield _sse_of(event)
        except ConsoleError as exc:  # after the status was sent (Redis gone): the last frame
            yield sse_frame("error", error_body(exc.code, exc.message, exc.details)["error"])
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return sse_response(frames())


@csrf_exempt
async def agent_chat(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """``POST /agents/<id>/v1/agent/chat``: one turn, as JSON or (``stream: true``) SSE."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed(["POST"])
        user = await request_user(request, scope="write")
        data = validated(ChatRequestSerializer, json_object_body(request))
        if data.get("user_id") and data["user_id"] != user.username:
            raise Forbidden("you may only chat as yourself", details={"user_id": data["user_id"]})
        ask = functools.partial(
            live_turn_ask,
            user=user,
            agent_id=agent_id,
            session_id=str(data["session_id"]) if data.get("session_id") else None,
            prompt=data["prompt"],
            max_tokens=data["max_tokens"],
        )
        if data["stream"]:
            return await turn_stream_response(await ask())

        async def chat() -> dict[str, Any]:
            return (await live_turn_result(await ask())).as_hypercore()

        return await idempotent_json(request, user.pk, chat)
    except ConsoleError as exc:
        return error_response(exc)


def _scraped_agent(agent_id: uuid.UUID) -> Agent:
    agent = (
        Agent.objects.filter(pk=agent_id, deleted_at__isnull=True)
        .only("endpoint", "status")
        .first()
    )
    if agent is None:
        raise AgentNotFound(f"no agent {agent_id}")
    return agent


@methods_allowed("GET")
async def agent_metrics(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """``GET /agents/<id>/metrics``: the agent runtime's own Prometheus metrics, for its owner,
    an operator, or Prometheus with the METRICS_BEARER_TOKEN (``/metrics/targets`` lists the
    agents for it to scrape here)."""
    return await _runtime_get(request, agent_id, "/metrics")


@methods_allowed("GET")
async def agent_health(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """``GET /agents/<id>/health``: the agent runtime's own health (``status``, ``agent_id``,
    ``version``, ``timestamp``), for the same callers as its metrics."""
    return await _runtime_get(request, agent_id, "/health")


async def _runtime_get(request: HttpRequest, agent_id: uuid.UUID, path: str) -> HttpResponse:
    """The agent runtime's answer to ``GET path``, passed on."""
    try:
        if metrics_token_presented(request):
            agent = await database_sync_to_async(_scraped_agent)(agent_id)
        else:
            user = await request_user(request)
            agent = await database_sync_to_async(services.agent_for_user)(
                user=user, agent_id=agent_id, operator=is_operator(request)
            )
        if not agent.endpoint:
            raise AgentUnavailable("the agent is not running", details={"status": agent.status})
        try:
            async with (
                runtime_session(agent.endpoint, timeout=5.0) as client,
                client.get(path) as upstream,
            ):
                content = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AgentUnavailable(
                f"the agent's runtime could not be reached ({type(exc).__name__})"
            ) from exc
    except ConsoleError as exc:
        return error_response(exc)
    return HttpResponse(
        content, status=upstream.status, content_type=upstream.headers.get("content-type")
    )
