"""The chat page (``/chat/``, ``/chat/<session id>``): thin views over the selectors and
services. The conversation itself runs over the WebSocket (``agents.consumers``); these views
render the page, start a chat with an agent of yours or a newly spawned one, and serve its
files panel (``/chat/agents/<id>/files``: the agent's workspace, listed, uploaded to and deleted
from through ``agents.services.workspace``, as the REST API does; downloads use the API's
route)."""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents import selectors, services
from agents.models import Agent
from agents.services.workspace import (
    workspace_agent,
    workspace_delete,
    workspace_list,
    workspace_upload,
)
from agents.workspace_api import file_chunks
from console.pages import with_toast
from plumbing.errors import AgentNotRunning, ConsoleError

__all__ = [
    "NewChatForm",
    "chat",
    "chat_files",
    "chat_files_delete",
    "chat_files_upload",
    "chat_new",
]


class NewChatForm(forms.Form):
    """A chat with one of your agents (``agent_id``), or with a new agent (``name``, and an
    optional ``system_prompt``) when none is picked."""

    agent_id = forms.UUIDField(required=False)
    name = forms.CharField(max_length=100, required=False)
    system_prompt = forms.CharField(max_length=20_000, required=False)


@require_GET
@login_required
def chat(request: HttpRequest, session_id: uuid.UUID | None = None) -> HttpResponse:
    q = request.GET.get("q", "").strip()[:100]
    current = None
    if session_id is not None:
        current = selectors.chat_session(user=request.user, session_id=session_id)
        if current is None:
            raise Http404("no such session")
    context = {
        "q": q,
        "sessions": selectors.chat_sessions(user=request.user, q=q or None),
        "agents": selectors.agent_list(viewer=request.user, owner=request.user),
        "current": current,
        "budgets": selectors.chat_budgets(user=request.user),
    }
    return render(request, "agents/chat.html", context)


@require_POST
@login_required
def chat_new(request: HttpRequest) -> HttpResponse:
    form = NewChatForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick one of your agents, or name a new one.")
        return redirect("chat")
    data = form.cleaned_data
    try:
        if data["agent_id"]:
            agent_id = data["agent_id"]
        else:
            agent = services.agent_spawn(
                owner=request.user,
                name=data["name"] or "Assistant",
                system_prompt=data["system_prompt"],
            )
            agent_id = agent.pk
            messages.success(request, f"Agent {agent.name} is starting; you can write already.")
        session = services.session_create(user=request.user, agent_id=agent_id, title="")
    except ConsoleError as exc:
        messages.error(request, exc.message)
        return redirect("chat")
    return redirect("chat-session", session_id=session.pk)


# --- The files panel ------------------------------------------------------------------------------

_FILES = "agents/partials/_files.html"
_BOOTING = (Agent.Status.PENDING, Agent.Status.STARTING)


async def _files_panel(
    request: HttpRequest,
    agent_id: uuid.UUID,
    path: str,
    *,
    problem: str = "",
    status: int = 200,
) -> HttpResponse:
    """The panel's body: the directory ``path`` of the agent's workspace, or why it cannot be
    shown (a stopped agent; one still booting, asked again shortly)."""
    user = await request.auser()
    context: dict[str, Any] = {"agent_id": agent_id, "problem": problem, "path": path}
    try:
        agent = await sync_to_async(workspace_agent)(user=user, agent_id=agent_id)
        listing = await workspace_list(agent=agent, path=path)
    except AgentNotRunning as exc:
        state = exc.details.get("status", "")
        context |= {"agent_status": state, "booting": state in _BOOTING}
    except ConsoleError as exc:
        if exc.status == 404 and exc.code == "agent_not_found":
            raise Http404("no such agent") from exc
        if path:  # the folder went away: show the workspace, and say so
            return await _files_panel(request, agent_id, "", problem=exc.message, status=status)
        context["error"] = exc.message
    else:
        parent = posixpath.dirname(listing["path"])
        crumbs, so_far = [], []
        for part in listing["path"].split("/") if listing["path"] else []:
            so_far.append(part)
            crumbs.append({"name": part, "path": "/".join(so_far)})
        context |= {"listing": listing, "parent": parent, "crumbs": crumbs}
    response = render(request, _FILES, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
async def chat_files(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    return await _files_panel(request, agent_id, request.GET.get("path", "")[:4096])


@require_POST
@login_required
async def chat_files_upload(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """Upload the form's files into its folder; the panel again, with a toast."""
    user = await request.auser()
    folder = request.POST.get("path", "")[:4096]
    files = request.FILES.getlist("file")
    try:
        agent = await sync_to_async(workspace_agent)(user=user, agent_id=agent_id)
        if not files:
            raise ConsoleError("Choose a file to upload first.")
        for file in files:
            name = (file.name or "").rsplit("/", 1)[-1]
            await workspace_upload(
                user=user,
                agent=agent,
                path=posixpath.join(folder, name) if folder else name,
                size=file.size or 0,
                body=file_chunks(file),
            )
    except ConsoleError as exc:
        if exc.code == "agent_not_found":
            raise Http404("no such agent") from exc
        response = await _files_panel(request, agent_id, folder, problem=exc.message, status=422)
        return with_toast(request, response, "error", f"Not uploaded: {exc.message}")
    response = await _files_panel(request, agent_id, folder)
    names = ", ".join(file.name for file in files)
    return with_toast(request, response, "success", f"Uploaded {names}.")


@require_POST
@login_required
async def chat_files_delete(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """Delete a file, or a folder with everything in it (the page asked first)."""
    user = await request.auser()
    path = request.POST.get("path", "")[:4096]
    folder = posixpath.dirname(path.rstrip("/"))
    try:
        agent = await sync_to_async(workspace_agent)(user=user, agent_id=agent_id)
        deleted = await workspace_delete(user=user, agent=agent, path=path, recursive=True)
    except ConsoleError as exc:
        if exc.code == "agent_not_found":
            raise Http404("no such agent") from exc
        response = await _files_panel(request, agent_id, folder, problem=exc.message, status=422)
        return with_toast(request, response, "error", f"Not deleted: {exc.message}")
    response = await _files_panel(request, agent_id, folder)
    return with_toast(request, response, "success", f"Deleted {deleted['path']}.")
