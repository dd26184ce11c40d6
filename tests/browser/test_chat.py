"""The chat page in Chromium: spawn an agent, chat with a streamed reply, stop one, reload in
the middle of another and watch it finish; model output never becomes markup."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from agents.models import Agent, Message
from tests.browser.conftest import PHONE
from tests.fakes.anthropic import Text

REPLY = ".msg-assistant .msg-body"


def _words(count: int, prefix: str = "word") -> str:
    return " ".join(f"{prefix}{n}" for n in range(count))


def _start_chat(page) -> None:  # type: ignore[no-untyped-def]
    page.goto("/chat/")
    page.fill("#chat-agent-name", "Scribe")
    page.click("[data-testid=new-chat]")
    page.wait_for_url(re.compile(r"/chat/[0-9a-f-]{36}$"))
    expect(page.locator("[data-connection]")).to_have_text("Live")


def _ask(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#chat-input", text)
    page.keyboard.press("Enter")


@pytest.fixture
def slow(fake_anthropic, monkeypatch):
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.12)
    return fake_anthropic


def test_spawn_chat_stop_and_reload_mid_reply(logged_in_page, user, slow, screenshot):
    page = logged_in_page(user)
    _start_chat(page)
    screenshot(page, "empty")

    # A streamed reply: it grows word by word, then shows its tokens and cost.
    slow.enqueue(Text("Here is **bold** and code:\n\n```python\nprint('hi')\n```\n\n" + _words(12)))
    _ask(page, "Show me some *markdown*")
    reply = page.locator(REPLY).last
    expect(reply).to_contain_text("bold")
    partial = reply.inner_text()
    expect(page.locator(".msg-usage").last).to_contain_text("tokens", timeout=20_000)
    assert len(reply.inner_text()) > len(partial), "the reply did not stream"
    assert reply.locator("strong").inner_text() == "bold"
    assert reply.locator("pre code").inner_text().strip() == "print('hi')"
    expect(page.locator(".msg-usage").last).to_contain_text("$")
    expect(page.locator("[data-chat-title]")).to_have_text("Show me some *markdown*")
    screenshot(page, "answered")

    # Stop: the reply ends where it was, marked stopped, and is not recorded.
    slow.enqueue(Text(_words(80, "long")))
    _ask(page, "Tell me a long story")
    expect(page.locator(REPLY).last).to_contain_text("long3")
    page.click("[data-stop]")
    expect(page.locator(".msg-assistant.is-stopped")).to_have_count(1)
    assert "long79" not in page.locator(REPLY).last.inner_text()
    screenshot(page, "stopped")
    assert Message.objects.count() == 2

    # Reload in the middle of a reply: the page comes back, catches up, and follows to the end.
    slow.enqueue(Text(_words(40, "again")))
    _ask(page, "Once more, please")
    expect(page.locator(REPLY).last).to_contain_text("again5")
    page.reload()
    expect(page.locator(".msg-assistant.is-streaming")).to_have_count(1)
    screenshot(page, "reloaded-mid-reply")
    expect(page.locator(REPLY).last).to_have_text(_words(40, "again"), timeout=20_000)
    expect(page.locator(".msg-usage")).to_have_count(2)
    assert [m.content for m in Message.objects.all()][-1] == _words(40, "again")
    screenshot(page, "finished-after-reload")


def test_model_output_never_injects_markup_or_script(
    logged_in_page, user, fake_anthropic, screenshot
):
    page = logged_in_page(user)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _start_chat(page)
    hostile = (
        "<img src=x onerror=alert(1)> <script>window.pwned = 1; alert(2)</script>\n\n"
        '[click](javascript:alert(3)) <a href="javascript:alert(4)">a</a> '
        '<iframe src="javascript:alert(5)"></iframe> <b onmouseover=alert(6)>b</b>'
    )
    fake_anthropic.enqueue(Text(hostile))
    _ask(page, "<img src=y onerror=alert(7)> is what I typed")
    expect(page.locator(".msg-usage")).to_have_count(1, timeout=20_000)
    log = page.locator("[data-log]")
    for tag in ("img", "script", "iframe", "b"):
        assert log.locator(tag).count() == 0, tag
    assert all(
        not (href or "").startswith("javascript:")
        for href in log.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    )
    assert page.evaluate("window.pwned") is None
    # The markup shows as the text it is.
    expect(page.locator(REPLY).last).to_contain_text("<img src=x onerror=alert(1)>")
    expect(page.locator(".msg-user .msg-body").last).to_have_text(
        "<img src=y onerror=alert(7)> is what I typed"
    )
    page.locator(REPLY).last.hover()
    assert dialogs == []
    screenshot(page, "hostile-output")


def test_the_chat_page_fits_a_phone(new_page, log_in, user, fake_anthropic, screenshot):
    page = new_page(viewport=PHONE)
    log_in(page, user)
    _start_chat(page)
    _ask(page, "Hello from a phone")
    expect(page.locator(".msg-usage")).to_have_count(1, timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "phone")


def test_regenerate_and_edit_replace_the_turn_in_place(
    logged_in_page, user, fake_anthropic, screenshot
):
    page = logged_in_page(user)
    _start_chat(page)
    _ask(page, "First question")
    expect(page.locator(".msg-usage")).to_have_count(1, timeout=20_000)

    fake_anthropic.enqueue(Text("A *better* answer"))
    page.click("[data-regenerate]")
    expect(page.locator(REPLY)).to_have_text(["A better answer"], timeout=20_000)
    assert page.locator(f"{REPLY} em").inner_text() == "better"

    page.click("[data-edit]")
    page.fill(".msg-edit textarea", "The question, edited")
    page.click(".msg-edit [type=submit]")
    expect(page.locator(REPLY)).to_have_text(["Echo: The question, edited"], timeout=20_000)
    expect(page.locator(".msg-user .msg-body")).to_have_text(["The question, edited"])
    assert [m.content for m in Message.objects.all()] == [
        "The question, edited",
        "Echo: The question, edited",
    ]
    screenshot(page, "edited")


def test_the_agent_badge_and_the_starting_toast_follow_the_agent(
    logged_in_page, user, fake_anthropic, screenshot
):
    page = logged_in_page(user)
    _start_chat(page)
    toast = page.locator(".toast", has_text="is starting")
    # The page opened while the agent was still booting; its boot ends afterwards.
    agent = Agent.objects.get()
    Agent.objects.filter(pk=agent.pk).update(status="starting")
    page.reload()
    expect(page.locator("[data-connection]")).to_have_text("Live")
    expect(page.locator("[data-agent-status]")).to_have_text("starting")
    Agent.objects.filter(pk=agent.pk).update(status="running")
    _ask(page, "Are you up?")
    expect(page.locator(".msg-usage")).to_have_count(1, timeout=20_000)
    # A reply came from the agent: the badge says it runs, without a reload.
    expect(page.locator("[data-agent-status]")).to_have_text("running")
    # The toast said its piece and went, off the footer.
    expect(toast).to_have_count(0, timeout=10_000)
    screenshot(page, "after-first-reply")


def test_a_phone_shows_the_chats_first_on_the_chat_page(
    new_page, log_in, user, fake_anthropic, screenshot
):
    page = new_page(viewport=PHONE)
    log_in(page, user)
    _start_chat(page)
    page.goto("/chat/")
    chats = page.locator(".chat-sessions")
    welcome = page.locator(".chat-welcome")
    expect(chats).to_be_visible()
    # What the welcome says is where the chats are, and they come before any empty card.
    assert chats.bounding_box()["y"] < welcome.bounding_box()["y"] or not welcome.is_visible()
    expect(page.locator("body")).not_to_contain_text("on the left")
    screenshot(page, "chat-list-phone")
