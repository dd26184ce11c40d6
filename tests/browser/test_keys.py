"""The key page in a real browser: a user makes a key (its secret shown once, then used against
the API), sees it listed, and revokes it; an operator may give a key the admin scope; another
user never sees it. Screenshots at desktop and phone widths."""

from __future__ import annotations

import httpx
import pytest

from console.models import ApiKey
from tests.browser.conftest import PHONE

expect = pytest.importorskip("playwright.sync_api").expect


def _no_sideways_scroll(page) -> None:  # type: ignore[no-untyped-def]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url} scrolls sideways ({width}px)"


def test_a_user_makes_uses_and_revokes_a_key(
    new_page, log_in, user, outsider, live_console, screenshot
):
    page = new_page()
    log_in(page, user)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    page.wait_for_url("**/keys/")
    expect(page.locator("#key-list")).to_contain_text("No keys yet")
    expect(page.locator("input[name=scopes][value=admin]")).to_have_count(0)

    page.fill("input[name=name]", "laptop")
    page.uncheck("input[name=scopes][value=write]")
    page.select_option("select[name=expires_in]", "30")
    page.get_by_role("button", name="Create key").click()

    secret = page.locator("#key-secret-value")
    expect(secret).to_be_visible()
    raw = secret.input_value()
    key = ApiKey.objects.get(user=user)
    assert raw.startswith(key.prefix)
    row = page.locator(f"#key-{key.pk}")
    expect(row).to_contain_text("laptop")
    expect(row).to_contain_text(key.prefix)
    expect(row).to_contain_text("active")
    expect(row.locator(".badge", has_text="write")).to_have_count(0)
    screenshot(page, "created")

    api = httpx.get(f"{live_console}/api/v1/keys", headers={"Authorization": f"Bearer {raw}"})
    assert api.status_code == 200
    assert [k["prefix"] for k in api.json()["results"]] == [key.prefix]

    page.reload()  # shown once: gone, and last used now
    expect(page.locator("#key-secret-value")).to_have_count(0)
    expect(row).to_contain_text("ago")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    expect(page.locator("#toasts")).to_contain_text("revoked")
    screenshot(page, "revoked")
    api = httpx.get(f"{live_console}/api/v1/keys", headers={"Authorization": f"Bearer {raw}"})
    assert api.status_code == 401

    other = new_page()
    log_in(other, outsider)
    other.goto("/keys/")
    expect(other.locator("#key-list")).to_contain_text("No keys yet")


def test_an_operator_gives_a_key_the_admin_scope(page, log_in, operator, live_console):
    log_in(page, operator)
    page.goto("/keys/")
    page.check("input[name=scopes][value=admin]")
    page.get_by_role("button", name="Create key").click()
    raw = page.locator("#key-secret-value").input_value()
    assert sorted(ApiKey.objects.get(user=operator).scopes) == ["admin", "read", "write"]
    quotas = httpx.get(f"{live_console}/api/v1/quotas", headers={"Authorization": f"Bearer {raw}"})
    assert quotas.status_code == 200


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, PHONE], ids=["wide", "phone"])
def test_the_key_page_fits(new_page, log_in, user, screenshot, viewport):
    page = new_page(viewport=viewport)
    log_in(page, user)
    page.goto("/keys/")
    page.fill("input[name=name]", "a key with a rather long name, to see it wrap")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#key-secret-value")).to_be_visible()
    _no_sideways_scroll(page)
    screenshot(page, "page")
