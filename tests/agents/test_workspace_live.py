"""An agent's workspace files and commands through ``/api/v1/``, for real.

As in ``test_api_v1_live.py``: the console is served over ASGI, the agent boots as a real
``python -m agents.runtime`` under bubblewrap (vmdriver's process backend), and the files and
commands go through the console to its runtime on the path chat takes.
"""

from __future__ import annotations

import httpx
import pytest

from agents import sandbox
from agents.models import Agent
from console.models import AuditEvent, Quota
from console.services import api_key_create

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"


def _client(base: str, raw_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{base}{API}", timeout=60, headers={"Authorization": f"Bearer {raw_key}"}
    )


@pytest.fixture
def alice(user, api_key, live_console):
    with _client(live_console, api_key(user)) as client:
        yield client


@pytest.fixture
def agent_id(alice) -> str:
    response = alice.post("/agents", json={"name": "files", "memory": 256})
    assert response.status_code == 201, response.text
    agent_id = response.json()["agent_id"]
    agent = alice.get(f"/agents/{agent_id}").json()
    assert agent["status"] == "running", agent["last_error"]
    return agent_id


def _workspace(agent_id: str):
    """The agent's workspace folder on this host (the process backend's)."""
    agent = Agent.objects.get(pk=agent_id)
    return sandbox.driver()._dir(agent.sandbox_id) / "workspace"


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


def _exec(client: httpx.Client, agent_id: str, **body) -> dict:
    response = client.post(f"/agents/{agent_id}/exec", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_owner_uploads_lists_downloads_and_deletes_files(alice, agent_id, user):
    files = f"/agents/{agent_id}/files"
    empty = alice.get(files)
    assert empty.status_code == 200, empty.text
    assert empty.json()["entries"] == []
    assert empty.json()["limits"] == {
        "max_file_bytes": 32 * 1024 * 1024,
        "max_workspace_bytes": 1024 * 1024 * 1024,
    }

    created = alice.put(f"{files}/notes/hello.txt", content=b"hello, workspace\n")
    assert created.status_code == 201, created.text
    assert created.json() == {
        "agent_id": agent_id,
        "path": "notes/hello.txt",
        "size": 17,
        "replaced": False,
    }
    assert (_workspace(agent_id) / "notes" / "hello.txt").read_bytes() == b"hello, workspace\n"

    # A multipart upload, as a browser's form sends it, into a directory.
    multipart = alice.post(
        files, params={"path": "notes"}, files={"file": ("second.bin", b"\x00\x01\x02")}
    )
    assert multipart.status_code == 201, multipart.text
    assert [f["path"] for f in multipart.json()["files"]] == ["notes/second.bin"]

    listing = alice.get(files, params={"path": "notes"}).json()
    assert listing["path"] == "notes"
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("hello.txt", "file", 17),
        ("second.bin", "file", 3),
    ]
    assert listing["workspace_bytes"] == 20

    download = alice.get(f"{files}/notes/hello.txt")
    assert download.status_code == 200
    assert download.content == b"hello, workspace\n"
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''hello.txt"
    assert download.headers["content-security-policy"] == "sandbox"

    # The agent's own commands see the same files: the workspace is the sandbox's.
    seen = _exec(alice, agent_id, command="cat notes/hello.txt; pwd")
    assert seen["stdout"] == "hello, workspace\n/workspace\n"

    assert alice.delete(f"{files}/notes/hello.txt").json()["deleted"] is True
    not_empty = alice.delete(f"{files}/notes")
    assert (not_empty.status_code, _error(not_empty)["code"]) == (409, "directory_not_empty")
    assert alice.delete(f"{files}/notes", params={"recursive": "true"}).status_code == 200
    assert alice.get(files).json()["entries"] == []
    gone = alice.get(f"{files}/notes/hello.txt")
    assert (gone.status_code, _error(gone)["code"]) == (404, "file_not_found")

    audited = list(
        AuditEvent.objects.filter(target_id=agent_id)
        .order_by("at", "pk")
        .values_list("actor__username", "action", "changes")
    )
    assert [action for _, action, _ in audited] == [
        "agent.file_upload",
        "agent.file_upload",
        "agent.exec",
        "agent.file_delete",
        "agent.file_delete",
    ]
    assert {actor for actor, _, _ in audited} == {user.username}
    assert audited[0][2] == {"path": [None, "notes/hello.txt"], "size": [None, 17]}
    assert audited[3][2]["path"] == ["notes/hello.txt", None]


@pytest.mark.parametrize(
    "path",
    [
        "..%2fetc%2fpasswd",
        "%2e%2e/etc/passwd",
        "notes/..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "a%00b",
    ],
)
def test_paths_outside_the_workspace_are_refused_by_the_console(alice, agent_id, path):
    files = f"/agents/{agent_id}/files"
    for response in (
        alice.get(f"{files}/{path}"),
        alice.put(f"{files}/{path}", content=b"x"),
        alice.delete(f"{files}/{path}"),
    ):
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert _error(response)["code"] == "invalid_path"
        assert "root:" not in response.text
    listing = alice.get(files, params={"path": "../"})
    assert (listing.status_code, _error(listing)["code"]) == (400, "invalid_path")
    assert not AuditEvent.objects.filter(target_id=agent_id).exists()


def test_symlinks_made_in_the_sandbox_do_not_lead_out_of_the_workspace(alice, agent_id):
    made = _exec(
        alice,
        agent_id,
        command="ln -s /etc/passwd passwd && ln -s / root && ln -s .. up && "
        "mkdir real && echo inside > real/data.txt && ln -s real inner && ls",
    )
    assert made["exit_code"] == 0, made
    files = f"/agents/{agent_id}/files"
    for path in ("passwd", "root/etc/passwd", "up/workspace/real/data.txt"):
        response = alice.get(f"{files}/{path}")
        assert response.status_code == 400, (path, response.text)
        assert "outside the workspace" in _error(response)["message"]
        assert "root:" not in response.text
    assert alice.put(f"{files}/root/tmp/planted", content=b"x").status_code == 400
    assert alice.get(files, params={"path": "root"}).status_code == 400
    # A symlink inside the workspace is followed.
    assert alice.get(f"{files}/inner/data.txt").content == b"inside\n"
    listing = {e["name"]: e for e in alice.get(files).json()["entries"]}
    assert (listing["passwd"]["type"], listing["passwd"]["target"]) == ("symlink", "/etc/passwd")
    # Deleting the link removes the link only.
    assert alice.delete(f"{files}/passwd").json()["type"] == "symlink"


def test_uploads_past_the_quota_are_refused_with_the_limit(alice, agent_id, user):
    Quota.objects.update_or_create(
        user=user, defaults={"max_file_bytes": 1000, "max_workspace_bytes": 2500}
    )
    files = f"/agents/{agent_id}/files"
    too_big = alice.put(f"{files}/big.bin", content=b"x" * 1001)
    assert too_big.status_code == 413
    assert _error(too_big)["code"] == "file_too_large"
    assert _error(too_big)["details"]["limit_bytes"] == 1000

    # Streamed with no length: the console knows its size once received, and refuses it too.
    streamed = alice.put(f"{files}/big.bin", content=iter([b"y" * 600, b"y" * 600]))
    assert (streamed.status_code, _error(streamed)["code"]) == (413, "file_too_large")

    assert alice.put(f"{files}/a.bin", content=b"a" * 1000).status_code == 201
    assert alice.put(f"{files}/b.bin", content=b"b" * 1000).status_code == 201
    full = alice.put(f"{files}/c.bin", content=b"c" * 600)
    assert full.status_code == 413
    assert _error(full)["details"] == {
        "path": "c.bin",
        "limit": "max_workspace_bytes",
        "limit_bytes": 2500,
        "used_bytes": 2000,
    }
    # The workspace's size counts what the agent's commands wrote too.
    _exec(alice, agent_id, command="head -c 400 /dev/zero > made-by-a-command")
    assert alice.put(f"{files}/d.bin", content=b"d" * 200).status_code == 413
    assert [e["name"] for e in alice.get(files).json()["entries"]] == [
        "a.bin",
        "b.bin",
        "made-by-a-command",
    ]


def test_a_command_is_bounded_in_time_and_output_and_audited(alice, agent_id, user, settings):
    settings.AGENT_EXEC_OUTPUT_BYTES = 2048
    settings.AGENT_EXEC_TIMEOUT_SECONDS = 2.0
    ran = _exec(alice, agent_id, argv=["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (7, "out\n", "err\n")

    # Asking for longer than the console allows gets the console's limit.
    slow = _exec(alice, agent_id, command="sleep 30", timeout_seconds=600)
    assert (slow["exit_code"], slow["timed_out"]) == (None, True)
    assert 1500 <= slow["duration_ms"] < 10_000

    chatty = _exec(alice, agent_id, command="yes | head -c 100000")
    assert chatty["truncated"] is True
    assert len(chatty["stdout"]) == 2048 and chatty["stdout_bytes"] == 100000

    events = list(AuditEvent.objects.filter(action="agent.exec").order_by("at", "pk"))
    assert len(events) == 3
    first, timed_out, cut = events
    assert (first.actor, first.target_id, first.target_type) == (user, agent_id, "agents.agent")
    assert first.changes["argv"] == [None, ["sh", "-c", "echo out; echo err >&2; exit 7"]]
    assert first.changes["exit_code"] == [None, 7]
    assert first.changes["truncated"] == [None, False]
    assert isinstance(first.changes["duration_ms"][1], int)
    assert timed_out.changes["timed_out"] == [None, True]
    assert timed_out.changes["argv"] == [None, ["/bin/sh", "-c", "sleep 30"]]
    assert cut.changes["truncated"] == [None, True]

    refused = alice.post(f"/agents/{agent_id}/exec", json={"argv": ["ls"], "command": "ls"})
    assert refused.status_code == 400
    assert AuditEvent.objects.filter(action="agent.exec").count() == 3


def test_outsiders_never_see_the_workspace_and_read_only_keys_only_read(
    alice, agent_id, live_console, outsider, operator, user
):
    alice.put(f"/agents/{agent_id}/files/kept.txt", content=b"kept")
    files = f"/agents/{agent_id}/files"
    for stranger in (outsider, operator):  # an operator too: a workspace is its owner's
        with _client(live_console, api_key_create(user=stranger)[1]) as client:
            for response in (
                client.get(files),
                client.get(f"{files}/kept.txt"),
                client.put(f"{files}/planted.txt", content=b"x"),
                client.delete(f"{files}/kept.txt"),
                client.post(f"/agents/{agent_id}/exec", json={"command": "id"}),
            ):
                assert response.status_code == 404, response.text
                assert _error(response)["code"] == "agent_not_found"

    _, read_only = api_key_create(user=user, scopes=["read"])
    with _client(live_console, read_only) as reader:
        assert reader.get(files).status_code == 200
        assert reader.get(f"{files}/kept.txt").content == b"kept"
        for response in (
            reader.put(f"{files}/planted.txt", content=b"x"),
            reader.delete(f"{files}/kept.txt"),
            reader.post(f"/agents/{agent_id}/exec", json={"command": "id"}),
            reader.post(files, files={"file": ("planted.txt", b"x")}),
        ):
            assert response.status_code == 403, response.text
            assert _error(response)["details"] == {"required_scope": "write"}
    assert [e["name"] for e in alice.get(files).json()["entries"]] == ["kept.txt"]
    assert not AuditEvent.objects.filter(action="agent.exec").exists()


def test_a_stopped_agent_answers_409(alice, agent_id):
    assert alice.post(f"/agents/{agent_id}/stop").status_code == 200
    for response in (
        alice.get(f"/agents/{agent_id}/files"),
        alice.put(f"/agents/{agent_id}/files/x", content=b"x"),
        alice.post(f"/agents/{agent_id}/exec", json={"command": "true"}),
    ):
        assert response.status_code == 409, response.text
        error = _error(response)
        assert error["code"] == "agent_not_running"
        assert error["details"]["status"] in {"stopping", "stopped"}
