"""The agents' routes: the chat page, each agent's own endpoints, Hypercore's agent API, and the
REST API of agents, sessions and turns. Sockets are in ``routing.py``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from agents import api, asyncapi, pages, views, workspace_api

hypercore = SimpleRouter(trailing_slash=False)
hypercore.register("v1/agents", views.HypercoreAgentViewSet, basename="hypercore-agent")

router = SimpleRouter(trailing_slash=False)
router.register("agents", api.AgentViewSet, basename="api-agent")
router.register("sessions", api.SessionViewSet, basename="api-session")

chat = [
    path("", pages.chat, name="chat"),
    path("new", pages.chat_new, name="chat-new"),
    path("<uuid:session_id>", pages.chat, name="chat-session"),
    path("agents/<uuid:agent_id>/files", pages.chat_files, name="chat-files"),
    path("agents/<uuid:agent_id>/files/upload", pages.chat_files_upload, name="chat-files-upload"),
    path("agents/<uuid:agent_id>/files/delete", pages.chat_files_delete, name="chat-files-delete"),
]

agent = [
    path("v1/agent/chat", views.agent_chat, name="agent-chat"),
    path("metrics", views.agent_metrics, name="agent-metrics"),
    path("health", views.agent_health, name="agent-health"),
]

rest = [
    path("execute", api.execute, name="api-execute"),
    path("sessions/<uuid:session_id>/messages", api.session_messages, name="api-session-messages"),
    path("sessions/<uuid:session_id>/cancel", api.session_cancel, name="api-session-cancel"),
    path("agents/<uuid:agent_id>/files", workspace_api.agent_files, name="api-agent-files"),
    path(
        "agents/<uuid:agent_id>/files/<path:path>",
        workspace_api.agent_file,
        name="api-agent-file",
    ),
    path("agents/<uuid:agent_id>/exec", workspace_api.agent_exec, name="api-agent-exec"),
    path("", include(router.urls)),
]

urlpatterns = [
    path("chat/", include(chat)),
    # The chat's streams (WebSocket and SSE), beside the OpenAPI schema (/api/schema/)
    path("api/asyncapi/", asyncapi.asyncapi_view, name="api-asyncapi"),
    path("agents/<uuid:agent_id>/", include(agent)),
    path("api/v1/", include(rest)),
    path("", include(hypercore.urls)),
]
