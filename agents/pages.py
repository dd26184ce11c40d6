"""The chat page (``/chat/``, ``/chat/<session id>``): thin views over the selectors and
services. The conversation itself runs over the WebSocket (``agents.consumers``); these views
render the page, and start a chat with an agent of yours or a newly spawned one."""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents import selectors, services
from plumbing.errors import ConsoleError

__all__ = ["NewChatForm", "chat", "chat_new"]


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
