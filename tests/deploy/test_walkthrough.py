"""deploy/README.md's walk-through names what is there: every file of deploy/, every unit it
enables, and its nginx command renders a site that ``nginx -t`` accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.deploy.test_nginx import certificate, nginx_binary, nginx_conf, nginx_test

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH = ROOT / "deploy" / "README.md"
INSTALLED = "/opt/agent-console"


def commands() -> list[str]:
    """The shell blocks' commands, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", WALKTHROUGH.read_text(), re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_every_file_it_names_is_there():
    names = set(
        re.findall(
            r"(?<![\w/])((?:deploy/)?(?:systemd|nginx|prometheus|grafana)/[\w./@-]*)",
            WALKTHROUGH.read_text(),
        )
    )
    assert "nginx/render.py" in names
    for name in names:
        path = ROOT / (name if name.startswith("deploy/") else f"deploy/{name}")
        assert path.exists(), name
    tests = set(re.findall(r"tests/[\w/]+\.py", WALKTHROUGH.read_text()))
    assert "tests/deploy/test_nginx.py" in tests
    for name in tests:
        assert (ROOT / name).exists(), name


def test_every_unit_it_enables_is_one_of_deploy_systemd():
    enabled = [
        word
        for line in commands()
        if line.startswith("systemctl enable")
        for word in shlex.split(line)[2:]
        if not word.startswith("-")
    ]
    assert enabled
    for name in enabled:
        unit = re.sub(r"@[^.]+", "@", name)
        unit = unit if "." in unit else f"{unit}.service"
        assert (ROOT / "deploy" / "systemd" / unit).exists(), name


def test_its_nginx_command_renders_a_site_nginx_accepts(tmp_path):
    nginx = nginx_binary()
    (line,) = [c for c in commands() if "deploy/nginx/render.py" in c]
    argv = shlex.split(line.split(">", 1)[0])
    assert argv[0] == "python3"
    cert, key = certificate(tmp_path)
    argv = [sys.executable, argv[1].replace(INSTALLED, str(ROOT)), *argv[2:]]
    argv[argv.index("--certificate") + 1] = str(cert)
    argv[argv.index("--certificate-key") + 1] = str(key)
    site = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    result = nginx_test(nginx, nginx_conf(tmp_path, site))
    assert result.returncode == 0, result.stderr
