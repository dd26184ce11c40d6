"""The chat page's routes, under ``/chat/``."""

from __future__ import annotations

from django.urls import path

from agents import pages

urlpatterns = [
    path("", pages.chat, name="chat"),
    path("new", pages.chat_new, name="chat-new"),
    path("<uuid:session_id>", pages.chat, name="chat-session"),
]
