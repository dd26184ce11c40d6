"""The console as a wheel: built from the checkout, installed into a fresh virtual environment
outside it, and serving the thin path from there (``agent-console migrate``, ``run`` and
``create-api-key``; an agent spawned, one chat turn answered by fake Claude)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.config.test_launch import Console, _walk_through
from tests.fakes.anthropic import FakeAnthropic
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
# Package data: what is not Python but the console needs.
DATA = ("config/templates", "config/static", "vmdriver/guest")
# Settings of the test process an installed console must not inherit.
NOT_INHERITED = {
    "PYTHONPATH",
    "DJANGO_SETTINGS_MODULE",
    "CONSOLE_VAR_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "CELERY_TASK_ALWAYS_EAGER",
    "PYTEST_CURRENT_TEST",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (no build folder left in it)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", "*_cache", "node_modules"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", folder, source],
        check=True,
        timeout=180,
    )
    (built,) = folder.glob("agent_console-*.whl")
    return built


def _files(folder: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_the_templates_static_files_guest_recipe_and_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for folder in DATA:
        expected = _files(folder)
        assert expected, folder
        assert expected - names == set(), folder
    assert "vmdriver/guest/init.sh" in names
    assert "config/templates/base.html" in names
    assert "agent-console = config.cli:main" in scripts
    # Every app of the console, and nothing of the tests.
    for app in ("autopilot", "operator_agent", "agents", "dashboard", "mcpserver"):
        assert f"{app}/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]


@pytest.mark.timeout(600)
def test_the_installed_wheel_serves_the_thin_path_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", "-c", ROOT / "requirements.lock", wheel],
        check=True,
        timeout=420,
    )
    command = [str(venv / "bin" / "agent-console")]
    site = tmp_path / "site"  # the folder a user runs it in
    site.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}

    def run(*args: str) -> str:
        done = subprocess.run(
            args, cwd=site, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    # The code comes from the virtual environment, not the checkout.
    where = run(str(venv / "bin" / "python"), "-c", "import config; print(config.__file__)")
    assert where.startswith(str(venv)), where
    assert "create-api-key" in run(*command, "--help")
    # Its state goes to var/ of the folder it runs in by default.
    assert "Applying console.0001_initial... OK" in run(*command, "migrate")
    assert (site / "var" / "console.sqlite3").is_file()

    with FakeAnthropic() as fake:
        console = Console(
            tmp_path,
            {
                "ANTHROPIC_API_KEY": "sk-ant-package-test",
                "ANTHROPIC_BASE_URL": fake.base_url,
                "CONSOLE_VAR_DIR": str(site / "var"),
                # Static files as in production: collected by `run`, served by WhiteNoise.
                "WHITENOISE_USE_FINDERS": "false",
            },
            root=site,
            command=command,
        )
        try:
            eventually(console.healthy, 90, every=0.2, failing="the console never answered")
            page = httpx.get(f"{console.url}/accounts/login/")
            assert page.status_code == 200
            assert "<title>" in page.text
            stylesheet = re.search(r'href="(/static/console/console\.[^"]*css)"', page.text)
            assert stylesheet, page.text[:1000]
            css = httpx.get(f"{console.url}{stylesheet.group(1)}")
            assert css.status_code == 200
            assert css.headers["content-type"].startswith("text/css")
            _walk_through(console)
        finally:
            console.kill()
    assert (site / "var" / "staticfiles" / "console" / "console.css").is_file()
