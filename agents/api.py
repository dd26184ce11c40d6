"""``/api/v1/`` for agents, sessions, messages and one-shot tasks.

Everyone sees and acts on their own; operators see everyone's. Chatting is always as yourself:
a session is its user's. Lists are cursor-paginated, newest first, with filters.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from agents import sandbox, services
from agents.models import Agent, Session
from agents.serializers import (
    AgentFilterSerializer,
    AgentSerializer,
    ExecuteRequestSerializer,
    LogsSerializer,
    SendMessageSerializer,
    SessionCreateSerializer,
    SessionDetailSerializer,
    SessionFilterSerializer,
    SessionSerializer,
    SpawnRequestSerializer,
)
from agents.views import _named_user, _validation_error, spawn_response
from console.api.pagination import ApiCursorPagination
from console.api.permissions import HasScope
from console.authentication import request_user
from console.errors import (
    AgentNotRunning,
    BadRequest,
    Conflict,
    ConsoleError,
    MethodNotAllowed,
    NotFound,
    error_response,
)
from console.idempotent import idempotent, idempotent_json
from console.models import User
from vmdriver import SandboxNotFound

__all__ = [
    "AgentViewSet",
    "SessionViewSet",
    "execute",
    "session_cancel",
    "session_messages",
]

_SIGNED_IN = [IsAuthenticated, HasScope]
_IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    location=OpenApiParameter.HEADER,
    description="A retry with the same key gets the first answer (24 h).",
)


class _NewestFirst(ApiCursorPagination):
    ordering = "-created_at"


def _filters(serializer_class: type, request: Request) -> dict[str, Any]:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


# --- Agents --------------------------------------------------------------------------------------


@extend_schema(parameters=[AgentFilterSerializer])
class AgentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Agents: spawn, list (``?status=``, ``?model=``, ``?q=`` in the name, and for operators
    ``?user_id=``), get, stop, start, restart, delete, and the runtime's last log lines."""

    serializer_class = AgentSerializer
    permission_classes = _SIGNED_IN
    pagination_class = _NewestFirst
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Agent.objects.none()
        agents = Agent.objects.filter(deleted_at__isnull=True).select_related("owner")
        if not self.request.user.is_staff:
            agents = agents.filter(owner=self.request.user)
        if self.action != "list":
            return agents
        found = _filters(AgentFilterSerializer, self.request)
        if found.get("user_id"):
            agents = agents.filter(owner=_named_user(self.request.user, found["user_id"]))
        if found.get("status"):
            agents = agents.filter(status=found["status"])
        if found.get("model"):
            agents = agents.filter(model=found["model"])
        if found.get("q"):
            agents = agents.filter(name__icontains=found["q"])
        return agents

    @extend_schema(request=SpawnRequestSerializer, responses={201: AgentSerializer})
    @idempotent
    def create(self, request: Request) -> Response:
        return spawn_response(request)

    @extend_schema(responses=AgentSerializer)
    def destroy(self, request: Request, pk: str) -> Response:
        agent = services.agent_destroy(agent=self.get_object())
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        return Response(AgentSerializer(services.agent_stop(agent=self.get_object())).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str) -> Response:
        return Response(AgentSerializer(services.agent_start(agent=self.get_object())).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str) -> Response:
        return Response(AgentSerializer(services.agent_restart(agent=self.get_object())).data)

    @extend_schema(
        parameters=[OpenApiParameter("lines", int, description="How many (1-1000; 200).")],
        responses=LogsSerializer,
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        agent = self.get_object()
        lines = request.query_params.get("lines", "200")
        if not lines.isdigit() or not 1 <= int(lines) <= 1000:
            raise BadRequest("lines must be 1 to 1000", details={"lines": [lines]})
        text = ""
        if agent.sandbox_id:
            try:
                text = sandbox.driver().logs(agent.sandbox_id, lines=int(lines))
            except SandboxNotFound:
                text = ""
        return Response({"agent_id": str(agent.pk), "status": agent.status, "log": text})


# --- Sessions ------------------------------------------------------------------------------------


@extend_schema(parameters=[SessionFilterSerializer])
class SessionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Sessions: create one with an agent of yours, list (``?agent_id=``, ``?open=``, ``?q=`` in
    the title), get one with its messages, close it. Send turns to
    ``/api/v1/sessions/{id}/messages``."""

    serializer_class = SessionSerializer
    permission_classes = _SIGNED_IN
    pagination_class = _NewestFirst
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_serializer_class(self):
        return SessionDetailSerializer if self.action == "retrieve" else SessionSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Session.objects.none()
        sessions = Session.objects.annotate(message_count=Count("messages"))
        if not self.request.user.is_staff:
            sessions = sessions.filter(user=self.request.user)
        if self.action == "retrieve":
            return sessions.prefetch_related("messages")
        if self.action != "list":
            return sessions
        found = _filters(SessionFilterSerializer, self.request)
        if found.get("agent_id"):
            sessions = sessions.filter(agent_id=found["agent_id"])
        if found.get("open") is not None:
            sessions = sessions.filter(closed_at__isnull=found["open"])
        if found.get("q"):
            sessions = sessions.filter(title__icontains=found["q"])
        return sessions

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionSerializer})
    def create(self, request: Request) -> Response:
        params = SessionCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        agent = Agent.objects.filter(
            pk=data["agent_id"], owner=request.user, deleted_at__isnull=True
        ).first()
        if agent is None:
            raise NotFound(
                f"you have no agent {data['agent_id']}", details={"agent_id": str(data["agent_id"])}
            )
        session = Session.objects.create(agent=agent, user=request.user, title=data["title"])
        session.message_count = 0
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=SessionSerializer)
    @action(detail=True, methods=["post"])
    def close(self, request: Request, pk: str) -> Response:
        session = self.get_object()
        if session.user_id != request.user.pk:
            raise NotFound(f"you have no session {pk}")  # operators read, never chat for others
        if session.closed_at is None:
            session.closed_at = timezone.now()
            Session.objects.filter(pk=session.pk).update(closed_at=session.closed_at)
        return Response(SessionSerializer(session).data)


# --- Messages (async: a turn may stream for minutes) ----------------------------------------------


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _own_open_session(user: User, session_id: uuid.UUID) -> Session:
    session = Session.objects.filter(pk=session_id, user=user).select_related("agent").first()
    if session is None or session.agent.deleted_at is not None:
        raise NotFound(f"you have no session {session_id}")
    if session.closed_at is not None:
        raise Conflict("this session is closed", details={"session_id": str(session_id)})
    return session


@csrf_exempt  # checked in request_user for browser sessions; API keys and JWTs need none
async def session_messages(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """``POST /api/v1/sessions/{id}/messages``: send a turn; the reply as JSON, or as SSE with
    ``"stream": true`` (``delta`` events, then ``done``, ``error`` or ``cancelled``)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed("use POST")
        user = await request_user(request, scope="write")
        params = SendMessageSerializer(data=_json_body(request))
        if not params.is_valid():
            raise _validation_error(params.errors)
        data = params.validated_data
        session = await sync_to_async(_own_open_session)(user, session_id)
        turn = services.ChatTurn(
            user=user,
            agent_id=session.agent_id,
            prompt=data["content"],
            session_id=str(session.pk),
            max_tokens=data["max_tokens"],
        )
        if data["stream"]:
            events = await services.agent_chat_stream_stoppable(turn=turn)
            response = StreamingHttpResponse(events, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            return response

        async def reply() -> dict[str, Any]:
            return (await services.agent_chat_stoppable(turn=turn)).as_hypercore()

        return await idempotent_json(request, user.pk, reply)
    except ConsoleError as exc:
        return error_response(exc)


@csrf_exempt
async def session_cancel(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """``POST /api/v1/sessions/{id}/cancel``: stop the turn in flight (409 when none is)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed("use POST")
        user = await request_user(request, scope="write")
        session = await sync_to_async(_own_open_session)(user, session_id)
        if not await services.turn_cancel(str(session.pk)):
            raise Conflict("no turn is in flight in this session")
    except ConsoleError as exc:
        return error_response(exc)
    return JsonResponse({"session_id": str(session.pk), "cancelled": True}, status=202)


# --- One-shot tasks ------------------------------------------------------------------------------


def _task_agent(user: User, agent_id: uuid.UUID | None) -> Agent:
    """The named agent of the user's, or their running agent with the fewest open sessions."""
    agents = Agent.objects.filter(owner=user, deleted_at__isnull=True)
    if agent_id is not None:
        agent = agents.filter(pk=agent_id).first()
        if agent is None:
            raise NotFound(f"you have no agent {agent_id}", details={"agent_id": str(agent_id)})
        return agent
    agent = (
        agents.filter(status=Agent.Status.RUNNING)
        .annotate(open_sessions=Count("sessions", filter=Q(sessions__closed_at__isnull=True)))
        .order_by("open_sessions", "-last_active_at")
        .first()
    )
    if agent is None:
        raise AgentNotRunning("you have no running agent: spawn one first")
    return agent


def _task_prompt(task: str, context: Any) -> str:
    if context in (None, "", {}, []):
        return task
    if not isinstance(context, str):
        context = json.dumps(context, indent=2, ensure_ascii=False)
    return f"{task}\n\nContext:\n{context}"


def _close_session(session_id: str) -> None:
    Session.objects.filter(pk=session_id).update(closed_at=timezone.now())


def _task_answer(agent: Agent, result: services.ChatResult, began: float) -> dict[str, Any]:
    return {
        "result": result.content,
        "metadata": {
            "agent_id": str(agent.pk),
            "session_id": result.session_id,
            "model": agent.model,
            "tokens_used": result.input_tokens + result.output_tokens,
            "cost_usd": str(result.cost_usd),
            "timestamp": timezone.now().isoformat(),
        },
        "processing_time_ms": round((time.perf_counter() - began) * 1000),
    }


@csrf_exempt
async def execute(request: HttpRequest) -> HttpResponse:
    """``POST /api/v1/execute``: a one-shot task (``task_description``, optional ``context``
    and ``agent_id``) run in a session of its own, closed after."""
    began = time.perf_counter()
    try:
        if request.method != "POST":
            raise MethodNotAllowed("use POST")
        user = await request_user(request, scope="write")
        params = ExecuteRequestSerializer(data=_json_body(request))
        if not params.is_valid():
            raise _validation_error(params.errors)
        data = params.validated_data
        agent = await sync_to_async(_task_agent)(user, data.get("agent_id"))
        turn = services.ChatTurn(
            user=user,
            agent_id=agent.pk,
            prompt=_task_prompt(data["task_description"], data.get("context")),
            max_tokens=data["max_tokens"],
        )

        async def run() -> dict[str, Any]:
            result = await services.agent_chat(turn=turn)
            await sync_to_async(_close_session)(result.session_id)
            return _task_answer(agent, result, began)

        return await idempotent_json(request, user.pk, run)
    except ConsoleError as exc:
        return error_response(exc)
