"""The house's structure: its layers hold (import-linter's contracts in pyproject.toml), no
modules import each other in a loop, no import hides in a function without saying why, and each
app owns its routes, which the project's URL conf only includes."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
from django.urls import URLResolver

from config import urls as config_urls

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "config",
    "autopilot",
    "mcpserver",
    "gateway",
    "dashboard",
    "usage",
    "operator_agent",
    "agents",
    "scaling",
    "console",
    "plumbing",
    "wire",
    "vmdriver",
)
APPS_WITH_ROUTES = (
    "plumbing",
    "console",
    "agents",
    "scaling",
    "operator_agent",
    "dashboard",
    "usage",
    "autopilot",
)
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_hold():
    linted = _lint_imports(REPO)

    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 broken" in linted.stdout


def test_a_plumbing_module_that_imports_an_app_breaks_the_layers(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "plumbing" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom console.models import User  # noqa\n")

    linted = _lint_imports(tmp_path)

    assert linted.returncode == 1, linted.stdout + linted.stderr
    assert "plumbing is not allowed to import console" in linted.stdout


def _cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_modules_import_each_other_in_a_loop():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)

    assert _cycles(graph) == []


def test_the_loop_finder_finds_a_loop():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")

    assert _cycles(graph) == [{"a", "b"}]


def _unexplained_function_imports(path: Path) -> list[str]:
    """Imports of the project's packages inside a function, without a comment on their line or
    the line above saying why they are there."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if not any(name.split(".")[0] in PACKAGES for name in names):
                continue
            here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
            if "#" not in here and not above.startswith("#"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_import_hides_in_a_function_without_saying_why():
    sources = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]

    unexplained = [line for path in sources for line in _unexplained_function_imports(path)]

    assert unexplained == []


def test_the_project_urls_only_include_the_apps_routes():
    patterns = config_urls.urlpatterns

    assert all(isinstance(pattern, URLResolver) for pattern in patterns)
    included = {
        pattern.urlconf_name.__name__
        for pattern in patterns
        if not isinstance(pattern.urlconf_name, list)
    }
    assert {f"{app}.urls" for app in APPS_WITH_ROUTES} <= included


def test_each_app_owns_its_routes():
    for app in APPS_WITH_ROUTES:
        assert (REPO / app / "urls.py").is_file(), app
    assert (REPO / "agents" / "routing.py").is_file()
