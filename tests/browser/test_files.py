"""The chat page's files panel in Chromium: the agent's workspace listed beside the chat, a file
uploaded with the form, downloaded by its link, a folder opened, and a file deleted after the
page asks; what the agent's tools write shows up once a turn ends."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from agents import sandbox
from agents.models import Agent
from console.models import AuditEvent
from tests.browser.conftest import PHONE
from tests.fakes.anthropic import ToolUse

PANEL = "[data-files-panel]"
ROWS = "[data-files-list] .files-row"


def _start_chat(page) -> None:  # type: ignore[no-untyped-def]
    page.goto("/chat/")
    page.fill("#chat-agent-name", "Filer")
    page.click("[data-testid=new-chat]")
    page.wait_for_url(re.compile(r"/chat/[0-9a-f-]{36}$"))
    expect(page.locator("[data-connection]")).to_have_text("Live")


def test_the_files_panel_uploads_downloads_browses_and_deletes(
    logged_in_page, user, fake_anthropic, screenshot, tmp_path
):
    page = logged_in_page(user)
    _start_chat(page)
    panel = page.locator(PANEL)
    expect(panel).to_contain_text("The workspace is empty", timeout=20_000)
    expect(panel.locator("[data-files-usage]")).to_contain_text("of 1.0\xa0GB used")

    upload = tmp_path / "report.txt"
    upload.write_text("quarterly numbers\n")
    panel.locator("#files-input").set_input_files(str(upload))
    panel.get_by_role("button", name="Upload", exact=True).click()
    expect(panel.locator(ROWS)).to_have_count(1)
    expect(panel.locator(ROWS).first).to_contain_text("report.txt")
    expect(panel.locator(ROWS).first).to_contain_text("18\xa0bytes")
    expect(page.locator(".toast").filter(has_text="Uploaded report.txt")).to_have_count(1)
    agent = Agent.objects.get()
    workspace = sandbox.driver()._dir(agent.sandbox_id) / "workspace"
    assert (workspace / "report.txt").read_text() == "quarterly numbers\n"

    with page.expect_download() as download:
        panel.get_by_role("link", name="report.txt").click()
    saved = tmp_path / "downloaded.txt"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "report.txt"
    assert saved.read_text() == "quarterly numbers\n"

    # The agent's tools write files: the panel lists them once the turn is over.
    fake_anthropic.enqueue(
        ToolUse("run_command", {"command": "mkdir -p drafts && echo hi > drafts/one.md"})
    )
    page.fill("#chat-input", "Write a draft")
    page.keyboard.press("Enter")
    expect(panel.locator(ROWS)).to_have_count(2, timeout=20_000)
    expect(panel.locator(ROWS).first).to_contain_text("drafts")
    screenshot(page, "listed")

    panel.get_by_role("link", name="drafts").click()
    expect(panel.locator(".files-crumbs [aria-current]")).to_have_text("drafts")
    expect(panel.locator(ROWS).filter(has_text="one.md")).to_have_count(1)
    panel.get_by_role("link", name="Up one folder").click()
    expect(panel.locator(".files-crumbs [aria-current]")).to_have_count(0)

    # Deleting asks first: dismissed, nothing happens; accepted, the file goes.
    questions: list[str] = []

    def answer(dialog) -> None:  # type: ignore[no-untyped-def]
        questions.append(dialog.message)
        if len(questions) == 1:
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("dialog", answer)
    row = panel.locator(ROWS).filter(has_text="report.txt")
    row.hover()
    row.get_by_role("button", name="Delete report.txt").click()
    assert questions == ["Delete report.txt? This cannot be undone."]
    assert (workspace / "report.txt").exists()
    row.hover()
    row.get_by_role("button", name="Delete report.txt").click()
    expect(panel.locator(ROWS)).to_have_count(1)
    expect(page.locator(".toast").filter(has_text="Deleted report.txt")).to_have_count(1)
    assert not (workspace / "report.txt").exists()
    screenshot(page, "deleted")
    actions = set(AuditEvent.objects.filter(actor=user).values_list("action", flat=True))
    assert {"agent.file_upload", "agent.file_delete"} <= actions

    # On a phone the panel follows the conversation, and nothing runs off the screen.
    page.set_viewport_size(PHONE)
    panel.scroll_into_view_if_needed()
    expect(panel.locator(ROWS)).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "phone")
