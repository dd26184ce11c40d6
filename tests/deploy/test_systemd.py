"""deploy/systemd/: the units an operator installs. ``systemd-analyze verify`` reads each as
systemd would (every directive known and well formed, every program there), where it is
installed; their command lines are the ones ``make run`` starts; and the worker's hardening is
what bubblewrap allows, which is run here as the unit runs it."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from config.launch import gateway_command, web_command

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/agent-console"  # where deploy/README.md has the operator put the clone
NAMES = {
    "agent-console-web@.service",
    "agent-console-gateway@.service",
    "agent-console-worker.service",
    "agent-console-relay.service",
    "agent-console-beat.service",
    "agent-console.target",
}
# Directives that would stop bubblewrap in the worker (see the unit's comment).
_BREAK_BWRAP = {
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "ProtectProc",
    "RestrictNamespaces",
    "PrivateUsers",
    "SystemCallFilter",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def directives(name: str, key: str) -> list[str]:
    """Every value of a directive that may be given more than once, in order."""
    prefix = f"{key}="
    lines = (UNITS / name).read_text().splitlines()
    return [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]


def exec_start(name: str) -> list[str]:
    return shlex.split(unit(name)["Service"]["ExecStart"])


def test_there_is_a_unit_for_each_process_kind():
    assert {path.name for path in UNITS.iterdir()} == NAMES


def test_every_service_runs_as_its_own_user_from_the_env_file_and_restarts_on_failure():
    for name in NAMES - {"agent-console.target"}:
        service = unit(name)["Service"]
        assert service["User"] == service["Group"] == "agent-console", name
        assert directives(name, "EnvironmentFile") == [
            "/etc/agent-console/env",
            "-/etc/agent-console/host.env",  # optional, and read last: it wins
        ], name
        assert service["Restart"] == "on-failure", name
        assert service["NoNewPrivileges"] == "yes", name
        assert service["ProtectSystem"] == "strict", name
        assert service["PrivateTmp"] == "yes", name
        assert service["WorkingDirectory"] == INSTALLED, name
        assert exec_start(name)[0] == f"{INSTALLED}/.venv/bin/python", name
        assert unit(name)["Install"]["WantedBy"] == "agent-console.target", name


def test_web_and_gateway_are_templates_on_the_instances_port_with_make_runs_command_lines():
    web = exec_start("agent-console-web@.service")
    assert web[1:] == web_command("${HOST}", "%i", quiet=True)
    gateway = exec_start("agent-console-gateway@.service")
    assert gateway[1:] == gateway_command("${HOST}", "%i")


def test_the_worker_keeps_what_bubblewrap_needs():
    service = unit("agent-console-worker.service")["Service"]
    assert not _BREAK_BWRAP & set(service), _BREAK_BWRAP & set(service)
    assert service["CapabilityBoundingSet"] == ""
    assert service["KillMode"] == "process"  # the sandboxes outlive a restart of the worker
    assert exec_start("agent-console-worker.service")[1:5] == ["-m", "celery", "-A", "config"]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs bubblewrap as another user: needs root")
def test_bubblewrap_runs_as_the_workers_unit_runs_it():
    """An unprivileged user, no new privileges, an empty capability bounding set: what the
    worker's unit gives it (setpriv stands in for systemd), with vmdriver's own probe."""
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if not (bwrap and setpriv):
        pytest.skip("bwrap or setpriv is not installed (scripts/system-packages.sh installs bwrap)")
    as_unit = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    as_unit += ["--no-new-privs", "--bounding-set", "-all", "--inh-caps", "-all"]
    probe = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent"]
    probe += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    result = subprocess.run([*as_unit, *probe], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        reason = "systemd-analyze is not installed (no systemd here): the units are not verified"
        if os.environ.get("CI") and Path("/run/systemd/system").is_dir():
            pytest.fail(f"CI runs systemd, and must verify the units: {reason}")
        pytest.skip(reason)
    return found


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    """The units as installed, but for their one path: this clone, whose virtualenv stands in for
    /opt/agent-console/.venv (so that verify finds every program it names). verify exits 0
    even on an unknown directive, so any line it prints fails the test."""
    analyze = _systemd_analyze()
    for name in NAMES:
        text = (UNITS / name).read_text().replace(INSTALLED, str(ROOT))
        (tmp_path / name).write_text(text)
    instances = [n.replace("@.", "@8001.") for n in sorted(NAMES)]
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in instances)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr


def test_systemd_analyze_verify_catches_a_mistake(tmp_path):
    analyze = _systemd_analyze()
    text = (UNITS / "agent-console-beat.service").read_text().replace(INSTALLED, str(ROOT))
    (tmp_path / "broken.service").write_text(text.replace("Restart=on-failure", "Restart=often"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "broken.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Failed to parse service restart specifier" in result.stdout + result.stderr
