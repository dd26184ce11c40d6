"""The runtime's workspace routes (files and commands), on a real ``python -m agents.runtime``.

The workspace is a folder of its own here, with a secret file beside it: every way out of the
workspace (``..``, absolute paths, symlinks to the outside, swapped in mid-path) must be refused
without touching that file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agents.runtime.test_server import TOKEN, Runtime, _error, _spawn, _terminate
from tests.fakes.anthropic import FakeAnthropic
from wire.workspace import FILE_LIMIT_HEADER, WORKSPACE_LIMIT_HEADER

SECRET = "the host's secret, never to be read through the workspace routes\n"
LIMITS = {FILE_LIMIT_HEADER: "1000", WORKSPACE_LIMIT_HEADER: "5000"}


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    (root / "workspace").mkdir()
    (root / "secret.txt").write_text(SECRET)
    (root / "outside").mkdir()
    return root


@pytest.fixture(scope="module")
def runtime(
    gateway: FakeAnthropic, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    started = _spawn(
        tmp_path_factory.mktemp("runtime") / "log",
        gateway.base_url,
        AGENT_WORKSPACE=str(root / "workspace"),
        AGENT_TOOLS="none",
        AGENT_SECRET_THING="do-not-leak",
    )
    yield started
    _terminate(started)


@pytest.fixture
def ws(root: Path) -> Iterator[Path]:
    """The workspace, emptied after each test."""
    workspace = root / "workspace"
    yield workspace
    for entry in list(workspace.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in list((root / "outside").iterdir()):
        entry.unlink()


def _put(http: httpx.Client, path: str, content: bytes, **headers: str) -> httpx.Response:
    return http.put("/file", params={"path": path}, content=content, headers=LIMITS | headers)


def _exec(http: httpx.Client, **body) -> dict:
    response = http.post("/exec", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_files_are_uploaded_listed_downloaded_replaced_and_deleted(runtime_http, ws):
    assert runtime_http.get("/files").json() == {
        "path": "",
        "entries": [],
        "truncated": False,
        "workspace_bytes": 0,
    }
    created = _put(runtime_http, "notes/today.txt", b"hello")
    assert created.status_code == 201, created.text
    assert created.json() == {"path": "notes/today.txt", "size": 5, "replaced": False}
    assert (ws / "notes" / "today.txt").read_bytes() == b"hello"

    listing = runtime_http.get("/files").json()
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("notes", "directory", None)
    ]
    inner = runtime_http.get("/files", params={"path": "notes/"}).json()
    assert inner["path"] == "notes"
    assert [(e["path"], e["type"], e["size"]) for e in inner["entries"]] == [
        ("notes/today.txt", "file", 5)
    ]
    assert inner["workspace_bytes"] == 5

    download = runtime_http.get("/file", params={"path": "notes//./today.txt"})
    assert download.status_code == 200
    assert download.content == b"hello"
    assert download.headers["content-length"] == "5"

    replaced = _put(runtime_http, "notes/today.txt", b"hello again")
    assert replaced.status_code == 200
    assert replaced.json()["replaced"] is True
    assert (ws / "notes" / "today.txt").read_bytes() == b"hello again"
    # Nothing is left of the temporary file the upload was written to.
    assert [p.name for p in (ws / "notes").iterdir()] == ["today.txt"]

    not_empty = runtime_http.delete("/file", params={"path": "notes"})
    assert not_empty.status_code == 409
    assert _error(not_empty)["code"] == "directory_not_empty"
    deleted = runtime_http.delete("/file", params={"path": "notes", "recursive": "true"})
    assert deleted.json() == {"path": "notes", "type": "directory", "deleted": True}
    assert not (ws / "notes").exists()
    missing = runtime_http.get("/file", params={"path": "notes/today.txt"})
    assert (missing.status_code, _error(missing)["code"]) == (404, "file_not_found")


@pytest.mark.parametrize(
    "path",
    ["../secret.txt", "/etc/passwd", "a/../../secret.txt", "..", "a/\x00b", "", "."],
)
def test_paths_that_leave_the_workspace_or_name_no_file_are_refused(runtime_http, ws, path):
    for response in (
        runtime_http.get("/file", params={"path": path}),
        _put(runtime_http, path, b"x"),
        runtime_http.delete("/file", params={"path": path}),
    ):
        assert response.status_code == 400, (path, response.text)
        assert _error(response)["code"] == "invalid_path"
    assert list(ws.iterdir()) == []


def test_symlinks_are_followed_inside_the_workspace_and_refused_outside(runtime_http, ws, root):
    (ws / "real").mkdir()
    (ws / "real" / "data.txt").write_text("inside")
    (ws / "inside-link").symlink_to("real/data.txt")
    (ws / "inside-dir").symlink_to("real")
    (ws / "absolute-inside").symlink_to(ws / "real")
    (ws / "secret-link").symlink_to(root / "secret.txt")
    (ws / "relative-out").symlink_to("../secret.txt")
    (ws / "dir-out").symlink_to(root / "outside")
    (ws / "etc").symlink_to("/etc")
    (ws / "real" / "up-and-out").symlink_to("../../outside")
    (ws / "loop").symlink_to("loop")

    for inside in ("inside-link", "inside-dir/data.txt", "absolute-inside/data.txt"):
        response = runtime_http.get("/file", params={"path": inside})
        assert (response.status_code, response.content) == (200, b"inside"), inside
    listed = runtime_http.get("/files", params={"path": "inside-dir"}).json()
    assert listed["path"] == "real"

    for outside in (
        "secret-link",
        "relative-out",
        "dir-out/x",
        "etc/passwd",
        "real/up-and-out/x",
    ):
        response = runtime_http.get("/file", params={"path": outside})
        assert response.status_code == 400, (outside, response.text)
        assert "outside the workspace" in _error(response)["message"]
        assert SECRET not in response.text
        # Writing through a link to the outside is refused too, and writes nothing there.
        written = _put(runtime_http, f"{outside}/new.txt", b"x")
        assert written.status_code in (400, 409), (outside, written.text)
    assert list((root / "outside").iterdir()) == []
    assert runtime_http.get("/files", params={"path": "etc"}).status_code == 400
    assert _error(runtime_http.get("/file", params={"path": "loop"}))["code"] == "invalid_path"

    # The last component is not followed by a write or a delete: the link itself is replaced
    # or removed, never what it leads to.
    assert _put(runtime_http, "secret-link", b"replaced").status_code == 200
    assert not (ws / "secret-link").is_symlink()
    assert (root / "secret.txt").read_text() == SECRET
    assert runtime_http.delete("/file", params={"path": "dir-out"}).json()["type"] == "symlink"
    assert (root / "outside").is_dir()

    listing = runtime_http.get("/files").json()
    etc = next(e for e in listing["entries"] if e["name"] == "etc")
    assert (etc["type"], etc["target"]) == ("symlink", "/etc")


def test_a_symlink_swapped_in_while_uploading_does_not_lead_out(runtime_http, ws, root):
    """A directory swapped for a symlink to the outside, again and again, while uploads into
    it go on: each lands inside the workspace or is refused; none reaches the outside."""
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for make in (
                lambda: (ws / "swap").mkdir(),
                lambda: (ws / "swap").symlink_to(root / "outside"),
            ):
                with contextlib.suppress(FileExistsError):
                    make()
                try:
                    if (ws / "swap").is_symlink():
                        (ws / "swap").unlink()
                    else:
                        for child in (ws / "swap").iterdir():
                            child.unlink()
                        (ws / "swap").rmdir()
                except OSError:
                    pass

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        statuses = {_put(runtime_http, "swap/file.txt", b"x").status_code for _ in range(200)}
    finally:
        stop.set()
        swapper.join()
    assert statuses <= {200, 201, 400, 404, 409}, statuses
    assert list((root / "outside").iterdir()) == []


def test_uploads_past_the_file_or_workspace_limit_are_refused_with_the_limit(runtime_http, ws):
    too_big = _put(runtime_http, "big.bin", b"x" * 1001)
    assert too_big.status_code == 413
    error = _error(too_big)
    assert error["code"] == "file_too_large"
    assert error["details"]["limit_bytes"] == 1000
    assert not (ws / "big.bin").exists()

    # Streamed (no length announced): refused once the count passes the limit.
    def body() -> Iterator[bytes]:
        for _ in range(50):
            yield b"y" * 100

    streamed = runtime_http.put(
        "/file", params={"path": "streamed.bin"}, content=body(), headers=LIMITS
    )
    assert streamed.status_code == 413
    assert _error(streamed)["code"] == "file_too_large"
    assert [p.name for p in ws.iterdir()] == []  # no temporary file left behind

    for n in range(5):
        assert _put(runtime_http, f"f{n}.bin", b"z" * 900).status_code == 201
    full = _put(runtime_http, "one-more.bin", b"z" * 600)
    assert full.status_code == 413
    assert _error(full)["details"] == {
        "path": "one-more.bin",
        "limit": "max_workspace_bytes",
        "limit_bytes": 5000,
        "used_bytes": 4500,
    }
    # Replacing a file counts its new size instead of its old one.
    assert _put(runtime_http, "f0.bin", b"z" * 1000).status_code == 200
    # An upload without the limits is refused: the console always sends them.
    bare = runtime_http.put("/file", params={"path": "x"}, content=b"x")
    assert bare.status_code == 400


def test_a_directory_or_a_fifo_is_not_read_as_a_file(runtime_http, ws):
    (ws / "d").mkdir()
    os.mkfifo(ws / "pipe")
    started = time.monotonic()
    for path, code in (("d", "is_a_directory"), ("pipe", "not_a_file")):
        response = runtime_http.get("/file", params={"path": path})
        assert (response.status_code, _error(response)["code"]) == (409, code)
    assert time.monotonic() - started < 5
    assert _put(runtime_http, "d", b"x").status_code == 409


def test_exec_runs_an_argv_or_a_shell_string_in_the_workspace(runtime_http, ws):
    result = _exec(runtime_http, argv=["sh", "-c", "pwd; echo oops >&2; exit 3"])
    assert result["exit_code"] == 3
    assert result["stdout"] == f"{ws}\n"
    assert result["stderr"] == "oops\n"
    assert (result["timed_out"], result["truncated"]) == (False, False)
    assert result["duration_ms"] >= 0

    (ws / "sub").mkdir()
    shell = _exec(runtime_http, command="echo $((6 * 7)) > answer; pwd; env", cwd="sub")
    assert shell["exit_code"] == 0
    assert shell["stdout"].startswith(f"{ws / 'sub'}\n")
    assert (ws / "sub" / "answer").read_text() == "42\n"
    # No secret reaches a command: not the gateway token, nor anything that looks like one.
    assert TOKEN not in shell["stdout"] and "do-not-leak" not in shell["stdout"]

    missing = _exec(runtime_http, argv=["/no/such/program"])
    assert missing["exit_code"] == 127 and "No such file" in missing["stderr"]

    for bad in (
        {},
        {"argv": [], "command": None},
        {"argv": "ls"},
        {"argv": ["ls"], "command": "ls"},
        {"command": "   "},
        {"command": "ls", "timeout_seconds": 0},
        {"command": "ls", "timeout_seconds": 10**9},
        {"command": "ls", "output_limit_bytes": -1},
        {"argv": ["ls", "a\x00b"]},
    ):
        response = runtime_http.post("/exec", json=bad)
        assert response.status_code == 400, (bad, response.text)
    outside = runtime_http.post("/exec", json={"command": "ls", "cwd": "../"})
    assert _error(outside)["code"] == "invalid_path"


def test_exec_stops_at_its_time_limit_and_cuts_its_output(runtime_http, ws):
    started = time.monotonic()
    slow = _exec(
        runtime_http,
        command="echo begun; (sleep 30 &) ; sleep 30; echo never",
        timeout_seconds=1,
    )
    assert time.monotonic() - started < 10
    assert (slow["exit_code"], slow["timed_out"]) == (None, True)
    assert slow["stdout"] == "begun\n"

    chatty = _exec(
        runtime_http, command="head -c 100000 /dev/zero | tr '\\0' a", output_limit_bytes=1000
    )
    assert chatty["truncated"] is True
    assert chatty["stdout"] == "a" * 1000
    assert chatty["stdout_bytes"] == 100000
    assert chatty["exit_code"] == 0
