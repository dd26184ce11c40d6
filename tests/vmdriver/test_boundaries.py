"""vmdriver stands alone: it imports none of the console's frameworks or packages, runs a whole
sandbox lifecycle without Django loaded, its tests pass without Django, and it type-checks."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VMDRIVER = REPO_ROOT / "vmdriver"
FORBIDDEN = {
    *("django", "celery", "channels", "rest_framework"),
    *("config", "gateway", "dashboard", "usage", "agents", "scaling", "console"),
    *("plumbing", "wire"),
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_vmdriver_imports_none_of_the_consoles_frameworks_or_packages() -> None:
    files = sorted(VMDRIVER.rglob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "base.py", "process.py", "types.py"}

    offenders = {
        str(f.relative_to(REPO_ROOT)): sorted(_imported_roots(f) & FORBIDDEN) for f in files
    }

    assert {path: found for path, found in offenders.items() if found} == {}


def test_a_full_lifecycle_runs_without_django_loaded(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time, urllib.request
        from pathlib import Path
        import vmdriver

        serve = (
            "import http.server, os\\n"
            "host, port = os.environ['SANDBOX_LISTEN'][4:].rsplit(':', 1)\\n"
            "http.server.HTTPServer((host, int(port)), http.server.SimpleHTTPRequestHandler)"
            ".serve_forever()\\n"
        )
        driver = vmdriver.make_driver(
            "process", state_dir=Path({str(tmp_path)!r}), isolation="none"
        )
        spec = vmdriver.VmSpec(name="boundary", image=(sys.executable, "-c", serve))
        handle = driver.start(driver.create(spec))
        try:
            assert driver.status("boundary").state == vmdriver.VmState.RUNNING
            deadline = time.monotonic() + 5
            while True:
                try:
                    urllib.request.urlopen(handle.endpoint, timeout=1).read()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the sandbox never answered"
                    time.sleep(0.02)
            driver.stop("boundary")
            assert driver.status("boundary").state == vmdriver.VmState.EXITED
        finally:
            driver.destroy("boundary")
        try:
            driver.status("boundary")
        except vmdriver.SandboxNotFound:
            pass
        else:
            raise AssertionError("destroyed sandbox still has a status")
        loaded = sorted(
            m for m in sys.modules
            if m.split(".")[0] in {sorted(FORBIDDEN)!r}
        )
        assert "django" not in sys.modules, loaded
        assert not loaded, loaded
        print("lifecycle ok")
        """
    )

    result = _run([sys.executable, "-c", script], timeout=20)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "lifecycle ok" in result.stdout


def test_vmdriver_tests_pass_without_django_or_the_shared_fixtures() -> None:
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "--noconftest",
        "-p",
        "no:django",
        "-p",
        "no:env",
        "-p",
        "no:cacheprovider",
        "-q",
        "tests/vmdriver/test_process_driver.py",
    ]

    result = _run(argv, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert " passed" in output and "failed" not in output


def test_vmdriver_passes_mypy_strict() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e .[dev])")

    result = _run([sys.executable, "-m", "mypy", "--strict", "vmdriver"], timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
