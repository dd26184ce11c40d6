"""The OpenAPI schema is valid, warning-free and covers every API route; /api/docs/ is
served from vendored assets only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver
from openapi_spec_validator import validate

from config import urls
from config.asgi import GATEWAY_PATH

# The routes that are the API, and so must be in the schema. The rest (the home page, admin,
# health, readiness, Prometheus' /metrics, the schema and its docs) are not part of it.
API_PREFIXES = ("/v1/", "/api/v1/", "/agents/", "/gateway/")


def _schema(client: Client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200, response.content[:300]
    return response.json()


def _openapi_path(route: str) -> str:
    """A Django route (path() or a router's regex) as an OpenAPI path template."""
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    return "/" + route.replace("^", "").replace("$", "").replace("\\", "")


def _shape(path: str) -> str:
    """A path template without its parameters' names: drf-spectacular calls ``pk`` ``id``."""
    return re.sub(r"\{\w+\}", "{}", path)


def _routes(patterns: list, prefix: str = "") -> list[str]:
    found = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append(_openapi_path(route))
    return found


def test_the_schema_generates_without_warnings_and_validates(tmp_path: Path) -> None:
    # In a subprocess: --fail-on-warn makes any drf-spectacular warning (a view it cannot
    # describe, a type it guesses) fail the command, and so this test.
    out = tmp_path / "schema.yaml"
    env = os.environ | {"CONSOLE_VAR_DIR": str(tmp_path / "var")}
    command = ["manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(out)]
    result = subprocess.run(
        [sys.executable, *command],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert out.stat().st_size > 0


@pytest.mark.django_db
def test_the_served_schema_is_valid_openapi_3() -> None:
    schema = _schema(Client())
    assert schema["openapi"].startswith("3.")
    validate(schema)


@pytest.mark.django_db
def test_every_api_route_is_in_the_schema() -> None:
    documented = {_shape(path) for path in _schema(Client())["paths"]}
    # The gateway is not a Django route: config.asgi sends it to its own ASGI app.
    routes = [*_routes(urls.urlpatterns), GATEWAY_PATH]
    api_routes = {route for route in routes if route.startswith(API_PREFIXES)}
    assert {"/v1/agents/spawn", "/agents/{agent_id}/v1/agent/chat", GATEWAY_PATH} <= api_routes
    assert sorted(route for route in api_routes if _shape(route) not in documented) == []


@pytest.mark.django_db
def test_every_operation_documents_the_error_shape() -> None:
    schema = _schema(Client())
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            default = operation["responses"].get("default", {})
            assert default.get("content", {}).get("application/json", {}).get("schema") == {
                "$ref": "#/components/schemas/Error"
            }, f"{method.upper()} {path}"


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.django_db
def test_the_swagger_ui_is_served_from_vendored_assets(tmp_path: Path, settings) -> None:
    # As `make run` serves it: collected static files, through WhiteNoise.
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", interactive=False, verbosity=0)
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    parser = _Assets()
    parser.feed(html)
    # The page's own script loads the schema through the URL it is given.
    assert "/api/schema/" in html
    assert len(parser.urls) >= 3, parser.urls
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served by the console"
        asset = client.get(url)
        assert asset.status_code == 200, url
