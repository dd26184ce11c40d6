"""Settings read from the environment: malformed values stop the process, naming the variable.

Each case loads the settings in a fresh interpreter, since they are read once at import.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = "import django; django.setup()"
PRINT = SETUP + "; from django.conf import settings as s; print(repr({}))"

# Variables the host (or pytest-env) may set that would change what a case observes.
_CONTROLLED = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "DEBUG",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "PORT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
)


@pytest.fixture
def run(tmp_path: Path):
    """``run(*argv, **env)``: run ``python *argv`` (default: set Django up) in a controlled env.

    The environment is ours minus the variables under test, with a fresh var dir; ``NAME=None``
    unsets a variable.
    """
    var_dir = tmp_path / "var"

    def run_(*argv: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k not in _CONTROLLED}
        environ |= {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "CONSOLE_VAR_DIR": str(var_dir),
            "SECRET_KEY": "tests-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        }
        for name, value in env.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return subprocess.run(
            [sys.executable, *(argv or ("-c", SETUP))],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run_.var_dir = var_dir  # type: ignore[attr-defined]
    return run_


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        (
            {"DATABASE_URL": "postgres://console:pw@db.invalid/console", "DATABASE_POOL_MAX": "0"},
            "DATABASE_POOL_MAX",
        ),
        ({"SANDBOX_BACKEND": "docker"}, "SANDBOX_BACKEND"),
        ({"AGENT_TOOLS": "rm"}, "AGENT_TOOLS"),
        ({"AGENT_MAX_TOOL_ROUNDS": "-1"}, "AGENT_MAX_TOOL_ROUNDS"),
        (
            {"SANDBOX_HOST_HEARTBEAT_SECONDS": "10", "SANDBOX_HOST_STALE_SECONDS": "15"},
            "SANDBOX_HOST_STALE_SECONDS",
        ),
        ({"BEAT_LOCK_SECONDS": "1"}, "BEAT_LOCK_SECONDS"),
        ({"SANDBOX_RELAY_LISTEN": "8090"}, "SANDBOX_RELAY_LISTEN"),
        ({"SANDBOX_RELAY_URL": "http://host-1:8090/relay"}, "SANDBOX_RELAY_URL"),
        ({"SANDBOX_RELAY_URL": "http://host-1:8090", "SANDBOX_RELAY_KEY": ""}, "SANDBOX_RELAY_KEY"),
        (
            {"SANDBOX_RELAY_URL": "http://host-1:8090", "SANDBOX_RELAY_KEY": "short"},
            "SANDBOX_RELAY_KEY",
        ),
        ({"SANDBOX_RELAY_TOKEN_SECONDS": "1"}, "SANDBOX_RELAY_TOKEN_SECONDS"),
    ],
)
def test_a_malformed_variable_stops_startup_naming_it(run, env, named):
    result = run(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr.strip().splitlines()[-1]


def test_secret_key_is_required_when_debug_is_off(run):
    result = run(SECRET_KEY=None)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line
    assert "SECRET_KEY" in last_line


def test_secret_key_is_read_from_secret_key_file(run, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-mounted-secret-file\n")
    result = run("-c", PRINT.format("s.SECRET_KEY"), SECRET_KEY=None, SECRET_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr("from-a-mounted-secret-file")


def test_an_unreadable_secret_key_file_stops_startup_naming_it(run, tmp_path):
    result = run(SECRET_KEY=None, SECRET_KEY_FILE=str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "SECRET_KEY_FILE" in result.stderr.strip().splitlines()[-1]


def test_the_local_secret_key_in_the_var_dir_is_used_when_none_is_given(run):
    run.var_dir.mkdir()
    (run.var_dir / "secret_key").write_text("written-by-make-run\n")
    result = run("-c", PRINT.format("s.SECRET_KEY"), SECRET_KEY=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr("written-by-make-run")


def test_debug_defaults_to_off(run):
    result = run("-c", PRINT.format("(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr((False, True, True))


def test_deploy_check_passes_with_production_settings(run):
    result = run(
        "manage.py",
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=secrets.token_urlsafe(45),
        ALLOWED_HOSTS="console.example.com",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_host_is_stale_after_three_missed_heartbeats_by_default(run):
    settings = "(s.SANDBOX_HOST_HEARTBEAT_SECONDS, s.SANDBOX_HOST_STALE_SECONDS)"
    result = run(
        "-c",
        PRINT.format(settings),
        SANDBOX_HOST_HEARTBEAT_SECONDS="4",
        SANDBOX_HOST_STALE_SECONDS=None,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr((4.0, 12.0))


@pytest.mark.parametrize(
    ("env", "schedule_in"),
    [
        ({}, "unix://{var}/broker/redis.sock"),  # make run's private broker
        ({"REDIS_URL": "redis://cache.invalid:6380/3"}, "redis://cache.invalid:6380/3"),
        (
            {"CELERY_BROKER_URL": "redis+socket:///run/redis.sock?virtual_host=2"},
            "unix:///run/redis.sock?db=2",
        ),
        (
            {"CELERY_BROKER_URL": "amqp://mq.invalid//", "REDIS_URL": "redis://cache.invalid/4"},
            "redis://cache.invalid/4",
        ),
    ],
)
def test_beat_keeps_its_schedule_in_the_brokers_redis_else_in_redis_url(run, env, schedule_in):
    result = run("-c", PRINT.format("(s.BEAT_REDIS_URL, s.CELERY_BEAT_MAX_LOOP_INTERVAL)"), **env)
    assert result.returncode == 0, result.stderr
    expected = (schedule_in.format(var=run.var_dir), 5.0)  # a fifth of the lock's 25 s
    assert result.stdout.strip() == repr(expected)


def test_beat_without_redis_refuses_to_start_saying_why(run):
    result = run("-m", "celery", "-A", "config", "beat", CELERY_BROKER_URL="amqp://mq.invalid//")
    assert result.returncode != 0
    assert "beat keeps its schedule in Redis: set REDIS_URL" in result.stdout + result.stderr
