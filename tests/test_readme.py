"""The README runs as written: every command block, on a fresh clone, against a live console
started as ``make run`` starts it; and its settings tables name every variable the code reads.

What "runs" means, by the block's language:

- ``sh``: bash runs each command as written, in order, in one shell (``set -euo pipefail``), in
  the fresh clone. Each must exit 0. The comment lines right under a command are its output: a
  JSON sample (``# {…}``) must match the command's output in shape (every key it names is there,
  with a value of the same type; a string with ``…`` matches any text there; other strings match
  exactly, a decimal string any decimal string), and text sample lines must each match an output
  line (``…`` matches anything, a number any number). ``make run``, the console itself, is started
  by the test (``make -n`` shows the launcher is what it runs), with the variables the block
  sets; ``make test`` is this suite, and only checked with ``make -n``.
- ``python``: saved in the clone and run with the project's interpreter, with the walk-through's
  ``KEY``; its trailing comment lines are its output, as above.
- ``json`` and ``text``: samples of output, not commands. JSON must parse.

The only rewrite is the README's ``http://127.0.0.1:8000`` to the test console's address. The
PostgreSQL and Redis block runs on the ``DATABASE_URL`` and ``REDIS_URL`` given to the test (the
CI's services); without them it skips, and in CI it fails.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.config.test_launch import Console
from tests.polling import eventually
from vmdriver import VmState, make_driver

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ADDRESS = "http://127.0.0.1:8000"
KINDS = {"sh", "python", "json", "text"}


@dataclass
class Block:
    lang: str
    text: str
    line: int


@dataclass
class Command:
    text: str
    line: int
    sample: list[str] = field(default_factory=list)


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text().splitlines()
    fence = re.compile(r"^(\s*)```(\S*)\s*$")
    index = 0
    while index < len(lines):
        opening = fence.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, start, body = len(opening.group(1)), index + 1, []
        index += 1
        while not fence.match(lines[index]):
            body.append(lines[index][indent:])
            index += 1
        blocks.append(Block(opening.group(2), "\n".join(body) + "\n", start))
        index += 1
    return blocks


def _complete(text: str) -> bool:
    return (
        subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True).returncode == 0
    )


def shell_commands(block: Block) -> list[Command]:
    """The block's commands, each with the comment lines right under it that show its output: a
    JSON sample ends where its brackets close (comments after it are prose), a text one at the
    next blank line or command."""
    commands: list[Command] = []
    pending: list[str] = []
    open_sample, depth, start = False, 0, 0
    for offset, line in enumerate(block.text.splitlines()):
        stripped = line.strip()
        if pending or (stripped and not stripped.startswith("#")):
            start = start if pending else offset
            pending.append(line)
            if not line.endswith("\\") and _complete("\n".join(pending) + "\n"):
                commands.append(Command("\n".join(pending), block.line + start + 1))
                pending, open_sample, depth = [], True, 0
            continue
        if not stripped or not open_sample:
            open_sample = False
            continue
        body = stripped.removeprefix("#").strip()
        sample = commands[-1].sample
        if not sample and not _json_like(body):
            sample.append(body)  # a text sample: to the next blank line or command
            continue
        if sample and not depth and not _json_like(sample[0]):
            sample.append(body)
            continue
        sample.append(body)
        depth += body.count("{") + body.count("[") - body.count("}") - body.count("]")
        open_sample = depth > 0
    assert not pending, f"README line {block.line}: an unfinished command"
    return commands


def _json_like(line: str) -> bool:
    """``{…`` or ``[{…``, ``["…``: JSON, not text such as ``[offline model]``."""
    return line.startswith("{") or re.match(r"\[\s*[\[{\"\]\d-]", line) is not None


def _is_json_start(command: Command) -> bool:
    return _json_like(command.sample[0])


# --- Output samples -------------------------------------------------------------------------


def _json_sample(lines: list[str]) -> object:
    return json.loads(re.sub(r",\s*…\s*(?=[}\]])", "", " ".join(lines)))


def _decimal(value: object) -> bool:
    try:
        Decimal(str(value))
    except InvalidOperation:
        return False
    return isinstance(value, str)


def shape_problems(sample: object, actual: object, where: str = "") -> list[str]:
    if isinstance(sample, dict):
        if not isinstance(actual, dict):
            return [f"{where or 'the output'} is not an object: {actual!r}"]
        return [
            problem
            for key, value in sample.items()
            for problem in (
                shape_problems(value, actual[key], f"{where}.{key}")
                if key in actual
                else [f"{where}.{key} is missing"]
            )
        ]
    if isinstance(sample, list):
        if not isinstance(actual, list):
            return [f"{where} is not a list: {actual!r}"]
        return [
            f"{where}: no item matches {item!r}"
            for item in sample
            if all(shape_problems(item, other) for other in actual)
        ]
    if isinstance(sample, str):
        if "…" in sample:
            pattern = ".*".join(re.escape(part) for part in sample.split("…"))
            ok = isinstance(actual, str) and re.fullmatch(pattern, actual, re.S)
        elif _decimal(sample):
            ok = _decimal(actual)
        else:
            ok = actual == sample
        return [] if ok else [f"{where} is {actual!r}, not like {sample!r}"]
    if type(sample) is not type(actual):
        return [f"{where} is {actual!r}, not a {type(sample).__name__}"]
    return []


def _line_pattern(sample: str) -> re.Pattern[str]:
    """``…`` matches anything, and a number standing alone any number."""
    parts = re.split(r"(…|(?<!\S)-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?!\S))", sample)
    return re.compile(
        "".join(
            re.escape(part) if index % 2 == 0 else ".*" if part == "…" else r"-?[\d.e+-]+"
            for index, part in enumerate(parts)
        )
    )


def output_problems(sample: list[str], output: str) -> list[str]:
    if not sample:
        return []
    if _json_like(sample[0]):
        try:
            actual = json.loads(output)
        except ValueError:
            return [f"not JSON: {output[:300]!r}"]
        return shape_problems(_json_sample(sample), actual)
    lines = output.splitlines()
    return [
        f"no line like {line!r}"
        for line in sample
        if not any(_line_pattern(line).fullmatch(out) for out in lines)
    ]


def test_every_block_is_a_command_or_a_marked_sample():
    blocks = readme_blocks()
    assert {block.lang for block in blocks} <= KINDS, [
        (block.line, block.lang) for block in blocks if block.lang not in KINDS
    ]
    for block in blocks:
        if block.lang == "json":
            json.loads(block.text)
        if block.lang == "sh":
            for command in shell_commands(block):
                if command.sample and _is_json_start(command):
                    _json_sample(command.sample)


def test_samples_match_what_they_describe():
    sample = ['{"agent_id": "…", "url": "http://h/agents/…", "cores": 1, "cost_usd": "0.5", …}']
    good = {"agent_id": "a1", "url": "http://h/agents/a1", "cores": 2, "cost_usd": "0", "x": 1}
    assert output_problems(sample, json.dumps(good)) == []
    assert output_problems(sample, json.dumps(good | {"cores": "2"}))
    assert output_problems(sample, json.dumps({"error": {"code": "not_found"}}))
    metrics = 'agent_requests_total{endpoint="/v1/agents/spawn",status="201"} 3.0\nother 1\n'
    assert (
        output_problems(
            ['agent_requests_total{endpoint="/v1/agents/spawn",status="201"} 1.0'], metrics
        )
        == []
    )
    assert output_problems(
        ['agent_requests_total{endpoint="/v1/agents/spawn",status="200"} 1.0'], metrics
    )
    assert output_problems(["Stopped: 2"], "Agents to stop: 3\nStopped: 3\n") == []
    assert output_problems(["3fdd 1"], "4fdd 1\n")


# --- Settings -------------------------------------------------------------------------------

_READERS = {"env_str", "env_bool", "env_int", "env_float", "env_decimal", "env_list"}
_READERS |= {"env_secret", "_int", "_env_int", "_secret", "get", "getenv"}


def variables_read(path: Path) -> set[str]:
    """Names of the environment variables a module reads: the literal first argument of its
    readers (``env_int("PORT", …)``, ``os.environ.get("HOST")``), and ``NAME_FILE`` of a secret."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (
            isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
        ):
            continue
        name, func = node.args[0].value, node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in _READERS and isinstance(name, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", name):
            found.add(name)
            if called == "env_secret":
                found.add(f"{name}_FILE")
    return found


def documented_variables(heading: str) -> set[str]:
    """The variables in the first column of the tables under README's ``heading``."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0]))
    return names


def test_the_settings_tables_name_every_variable_the_code_reads_and_only_those():
    modules = ("config/settings.py", "config/launch.py", "agents/runtime/config.py")
    read = set().union(*(variables_read(ROOT / m) for m in (*modules, "agents/runtime/tools.py")))
    documented = documented_variables("Configuration")
    assert sorted(read - documented) == [], "read by the code, missing from README"
    assert sorted(documented - read) == [], "in README, read by no code"


# --- Running the blocks ---------------------------------------------------------------------


def fresh_clone(folder: Path) -> Path:
    """The repository's tracked files as they are now (a clone of this working tree), with the
    project's virtualenv."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    clone = folder / "clone"
    for name in filter(None, (f.decode() for f in files)):
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    return clone


_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Z_][A-Z0-9_]*)=(\S*)$")


def server_environment(block: Block) -> dict[str, str] | None:
    """For a block that starts the console (``NAME=value …`` then ``make run``): the variables
    it sets. None for any other block."""
    commands = [c.text.split("#", 1)[0].strip() for c in shell_commands(block)]
    if not commands or not re.search(r"(^|\s)make run$", commands[-1]):
        return None
    env: dict[str, str] = {}
    for command in commands[:-1]:
        found = _ASSIGNMENT.match(command)
        assert found, f"README line {block.line}: {command!r} before make run"
        env[found.group(1)] = found.group(2)
    for word in commands[-1].removesuffix("make run").split():
        found = _ASSIGNMENT.match(word)
        assert found, f"README line {block.line}: {word!r} before make run"
        env[found.group(1)] = found.group(2)
    return env


def test_make_targets_in_the_readme_exist_and_make_run_is_the_launcher(tmp_path):
    clone = fresh_clone(tmp_path)
    targets = {
        word
        for block in readme_blocks()
        if block.lang == "sh"
        for command in shell_commands(block)
        for word in re.findall(r"(?:^|\s)make (\w+)", command.text.split("#", 1)[0])
    }
    assert {"run", "test"} <= targets
    for target in targets:
        # Run as a reader would, not as a sub-make of `make test` (which prints its folders).
        env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
        dry = subprocess.run(
            ["make", "-n", target], cwd=clone, capture_output=True, text=True, env=env
        )
        assert dry.returncode == 0, dry.stderr
        if target == "run":
            assert dry.stdout.strip().splitlines()[-1] == ".venv/bin/python -m config.launch"


def run_shell(commands: list[Command], clone: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """Run ``commands`` in one bash, in order: each one's output, and ``KEY`` at the end."""
    script = ["set -euo pipefail"]
    for index, command in enumerate(commands):
        script += [command.text, f"printf '\\n\\036%d\\n' {index}"]
    script.append("printf '\\036KEY=%s\\n' \"${KEY-}\"")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    pieces = re.split(r"\n\x1e\d+\n", done.stdout)
    outputs, rest = [piece.strip() for piece in pieces[:-1]], pieces[-1]
    if done.returncode or len(outputs) < len(commands):
        failed = commands[len(outputs)] if len(outputs) < len(commands) else commands[-1]
        raise AssertionError(
            f"README line {failed.line}: {failed.text!r} failed (exit {done.returncode}):\n"
            f"{rest[-2000:]}\n{done.stderr[-2000:]}"
        )
    return outputs, rest.removeprefix("\x1eKEY=").strip()


def check_outputs(commands: list[Command], outputs: list[str]) -> None:
    for command, output in zip(commands, outputs, strict=True):
        problems = output_problems(command.sample, output)
        assert not problems, (
            f"README line {command.line}: {command.text!r}: {problems}\n{output[:2000]}"
        )


def _with_address(block: Block, url: str) -> Block:
    return Block(block.lang, block.text.replace(ADDRESS, url), block.line)


def _runs_make(block: Block) -> bool:
    return any(re.search(r"(^|\s)make \w+", c.text.split("#", 1)[0]) for c in shell_commands(block))


def start_console(
    tmp_path: Path, server_env: dict[str, str], clone: Path | None = None
) -> tuple[Console, Path]:
    """The console on a fresh clone (or ``clone`` again), as ``make run`` (after installing)
    starts it, with the variables the README's block sets; once its worker has registered its
    sandbox host."""
    clone = clone or fresh_clone(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    console = Console(tmp_path, {"CONSOLE_VAR_DIR": str(clone / "var"), **server_env}, root=clone)
    try:
        eventually(
            console.healthy,
            90,
            every=0.2,
            failing="timed out waiting for the console to answer /health",
        )
        eventually(
            lambda: re.search(r"worker@\S+ ready\.", console.output()),
            60,
            every=0.2,
            failing="timed out waiting for the worker",
        )
        eventually(
            lambda: httpx.get(f"{console.url}/ready").status_code == 200,
            30,
            every=0.2,
            failing="timed out waiting for /ready",
        )
    except BaseException:
        console.kill()
        raise
    return console, clone


def walk_through(console: Console, clone: Path, server_env: dict[str, str]) -> tuple[str, str]:
    """Run the README's client blocks (every ``sh`` block that is not ``make``), then its Python
    block, then ``agents_stop_all`` on two running agents; the final ``/metrics``, and KEY."""
    env = {k: v for k, v in console.env.items() if k != "CONSOLE_VAR_DIR"} | server_env
    blocks = [_with_address(b, console.url) for b in readme_blocks()]
    shell = [b for b in blocks if b.lang == "sh" and not _runs_make(b)]
    stop_all = [b for b in shell if "agents_stop_all" in b.text]
    assert len(stop_all) == 1
    commands = [c for b in shell if b not in stop_all for c in shell_commands(b)]
    outputs, key = run_shell(commands, clone, env)
    check_outputs(commands, outputs)
    assert key.startswith("ac_")

    (python,) = [b for b in blocks if b.lang == "python"]
    (clone / "hello.py").write_text(python.text)
    said = subprocess.run(
        [str(clone / ".venv/bin/python"), "hello.py"],
        cwd=clone,
        env=env | {"KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.returncode == 0, said.stderr
    code = python.text.splitlines()
    trailing = len(code) - next(
        i for i, line in enumerate(reversed(code)) if not line.startswith("#")
    )
    sample = [line.removeprefix("#").strip() for line in code[trailing:]]
    assert sample and output_problems(sample, said.stdout) == [], said.stdout

    # Two agents running in real sandboxes, then the README's command stops them all.
    api = httpx.Client(base_url=console.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    ids = [api.post("/v1/agents/spawn", json={"user_id": "alice"}).json()["agent_id"] for _ in "ab"]

    def running() -> bool:
        return all(
            api.get(f"/v1/agents/get?agent_id={i}").json()["status"] == "running" for i in ids
        )

    eventually(running, 60, every=0.2, failing="timed out waiting for two agents to boot")
    driver = make_driver("process", state_dir=clone / "var" / "sandboxes", isolation="none")

    def live() -> set[str]:
        return {status.id for status in driver.list() if status.state == VmState.RUNNING}

    assert len(live()) == 2
    commands = shell_commands(stop_all[0])
    outputs, _ = run_shell(commands, clone, env)
    check_outputs(commands, outputs)
    assert live() == set()
    assert {api.get(f"/v1/agents/get?agent_id={i}").json()["status"] for i in ids} == {"stopped"}
    return httpx.get(f"{console.url}/metrics").text, key


def _server_block(*names: str) -> dict[str, str]:
    (env,) = [
        env
        for b in readme_blocks()
        if b.lang == "sh" and (env := server_environment(b)) is not None and set(env) == set(names)
    ]
    return env


def test_the_readme_runs_as_written_on_a_fresh_clone(tmp_path):
    console, clone = start_console(tmp_path, {})  # make run
    again = None
    try:
        metrics, key = walk_through(console, clone, {})
        # Offline, nothing was forwarded to Anthropic: the overhead and time to first token are
        # absent, as the README says; the calls themselves are counted.
        assert "console_gateway_request_duration_seconds_count" in metrics
        assert "console_gateway_overhead_seconds" not in metrics
        assert "console_gateway_upstream_ttft_seconds" not in metrics

        # Ctrl-C leaves a running agent's sandbox running...
        api = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"})
        spawned = api.post(f"{console.url}/v1/agents/spawn", json={"user_id": "alice"}).json()
        agent = f"/v1/agents/get?agent_id={spawned['agent_id']}"
        eventually(
            lambda: api.get(console.url + agent).json()["status"] == "running",
            60,
            every=0.2,
            failing="timed out waiting for a boot",
        )
        driver = make_driver("process", state_dir=clone / "var" / "sandboxes", isolation="none")
        (sandbox,) = [s for s in driver.list() if s.state == VmState.RUNNING]
        assert console.interrupt() == 0
        assert driver.status(sandbox.id).state == VmState.RUNNING

        # ...and the next make run (here the README's, with an Anthropic key) serves it again.
        env = _server_block("ANTHROPIC_API_KEY") | {"TMPDIR": str(console.tmp)}
        again, _ = start_console(tmp_path / "again", env, clone)
        assert again.env["ANTHROPIC_API_KEY"] == "sk-ant-…"
        assert api.get(again.url + agent).json()["status"] == "running"
        assert api.get(f"{again.url}/agents/{spawned['agent_id']}/metrics").status_code == 200
        assert driver.status(sandbox.id).pid == sandbox.pid
        assert again.interrupt() == 0
    finally:
        if again is not None:
            again.kill()
        console.kill()


@contextlib.contextmanager
def _database(url: str) -> Iterator[None]:
    """The database ``url`` names, created for the test when it does not exist (as the README's
    ``createdb`` does), and dropped after only then."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        if not exists:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.redis
def test_the_postgres_and_redis_lines_run_on_the_given_services(tmp_path):
    env = _server_block("DATABASE_URL", "REDIS_URL")
    # The CI's services, in place of the README's example addresses.
    env = {name: os.environ[name] for name in env}
    with _database(env["DATABASE_URL"]):
        console, clone = start_console(tmp_path, env)
        try:
            walk_through(console, clone, env)
            assert not (clone / "var" / "console.sqlite3").exists()
            assert console.interrupt() == 0
        finally:
            console.kill()
