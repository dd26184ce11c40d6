"""The browser harness itself: a person signs in through the form and lands on the console."""

from __future__ import annotations

from urllib.parse import urlparse

from tests.browser.conftest import PHONE


def test_a_wrong_password_is_refused_in_place(page, user, screenshot):
    page.goto("/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "not-the-password")
    page.click("[type=submit]")
    assert "/login/" in urlparse(page.url).path
    assert "correct username and password" in page.locator("[role=alert]").inner_text()
    screenshot(page, "refused")


def test_sign_in_lands_on_the_home_page(page, log_in, user, screenshot):
    page.goto("/")
    assert "/login/" in page.url  # the console asks who you are first
    log_in(page, user)
    assert urlparse(page.url).path == "/"
    assert user.username in page.locator("header").inner_text()
    assert screenshot(page, "home").stat().st_size > 0


def test_the_home_page_fits_a_phone(new_page, log_in, user, screenshot):
    page = new_page(viewport=PHONE)
    log_in(page, user)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    screenshot(page, "home-phone")
