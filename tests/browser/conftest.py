"""Browser tests: Playwright driving Debian's Chromium against the console served for real.

``make test`` installs Chromium (``scripts/system-packages.sh browser``). Where it or Playwright
cannot be had, every test marked ``browser`` skips with the reason (and fails in CI, which must
have them).

``live_console`` serves the console's ASGI application (pages, APIs, WebSockets and the gateway)
on loopback from a thread, on the test database, with the fake Anthropic behind the gateway, so
agents spawned from a page boot for real and answer through it. Screenshots land in
``var/screenshots/`` (``SCREENSHOT_DIR`` overrides it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT_DIR = Path(
    os.environ.get("SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "var" / "screenshots")
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright (pip install playwright; `make test` installs it)"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"needs Chromium at {CHROMIUM} (`scripts/system-packages.sh browser` installs it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.django_db(transaction=True))


@pytest.fixture(autouse=True)
def _require_browser(request: pytest.FixtureRequest) -> None:
    reason = _browser_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide the browser: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def _chromium() -> Iterator[object]:
    """One Chromium per test module. Playwright's sync API keeps an event loop running on the
    test's thread while it lives, so it must not outlive the module: other tests run their own
    loops there."""
    if _browser_missing():
        yield None
        return
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        # With that loop running, Django would refuse the test's own ORM calls (fixtures,
        # assertions) as if they came from async code. They do not: the server answers from
        # its own thread and loop.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        manager = sync_playwright().start()
        browser = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        manager.stop()


@pytest.fixture
def new_page(_chromium, live_console: str) -> Iterator[Callable[..., object]]:
    """``new_page(viewport=PHONE)``: a page in a fresh browser context (its own cookies) whose
    relative URLs resolve against ``live_console``. Closed after the test."""
    contexts = []

    def make(viewport: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
        context = _chromium.new_context(base_url=live_console, viewport=viewport or DESKTOP)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):  # type: ignore[no-untyped-def]
    """A desktop-sized page on ``live_console``."""
    return new_page()


def _log_in(page, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/accounts/login/?next=/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


@pytest.fixture
def log_in() -> Callable[..., None]:
    """``log_in(page, user)``: signs ``user`` (made by ``make_user``, password ``pw``) in
    through the login form, as a person would."""

    def sign_in(page, user, password: str = "pw") -> None:  # type: ignore[no-untyped-def]
        _log_in(page, user.username, password)

    return sign_in


@pytest.fixture
def logged_in_page(page, log_in):  # type: ignore[no-untyped-def]
    """``logged_in_page(user)``: the desktop page, signed in as ``user``."""

    def make(user):  # type: ignore[no-untyped-def]
        log_in(page, user)
        return page

    return make


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """``screenshot(page, name)`` saves a full-page PNG as ``<test>-<name>.png``; returns its
    path."""

    def take(page, name: str) -> Path:  # type: ignore[no-untyped-def]
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
