"""deploy/env.example: every name in it is a setting the console reads (and README documents),
each line is one systemd can read, and the console, so configured, passes ``manage.py check
--deploy`` with no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_readme import documented_variables, variables_read

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "env.example"
_SETTING = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def example() -> dict[str, tuple[bool, str]]:
    """Each name the file sets or shows commented out: (set, value)."""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        if match := _SETTING.match(line):
            found[match.group(2)] = (not match.group(1), match.group(3))
    return found


def settings_read() -> set[str]:
    modules = ("config/settings.py", "config/launch.py")
    return set().union(*(variables_read(ROOT / m) for m in modules))


def test_every_name_is_a_setting_of_the_console():
    names = set(example())
    read, documented = settings_read(), documented_variables("Configuration")
    assert sorted(names - read) == [], "not a setting the console reads"
    assert sorted(names - documented) == [], "not in README's Configuration"


def test_it_names_what_a_real_deployment_must_set():
    required = {
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY_FILE",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "CONSOLE_BASE_URL",
        "GATEWAY_URL",
        "TRUSTED_PROXIES",
        "USE_X_FORWARDED_PROTO",
        "SECURE_SSL_REDIRECT",
        "ANTHROPIC_API_KEY_FILE",
        "CONSOLE_VAR_DIR",
        "HOST",
    }
    settings = example()
    assert sorted(required - {n for n, (is_set, _) in settings.items() if is_set}) == []
    assert "SANDBOX_HOST_NAME" in settings
    assert settings["TRUSTED_PROXIES"][1] == "1"  # nginx, and nothing else, in front


def test_every_line_is_a_comment_or_a_setting_systemd_reads():
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"\\]+", line), f"line {number}: {line}"


def test_the_console_so_configured_passes_the_deployment_checks(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "secret_key").write_text("an-example-secret-key-" + "x" * 50)
    (etc / "anthropic_api_key").write_text("sk-ant-example")
    (etc / "metrics_token").write_text("a-metrics-token")
    (etc / "relay_key").write_text("an-example-relay-key-" + "y" * 40)
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", k) or k in {"PATH", "HOME", "LANG", "TMPDIR"}
    }
    for name, (is_set, value) in example().items():
        if is_set:
            env[name] = value.replace("/etc/agent-console", str(etc))
    env |= {"CONSOLE_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
