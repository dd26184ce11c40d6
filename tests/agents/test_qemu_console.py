"""The console on a qemu host: spawn boots a microVM, chat goes through it to the gateway and
Claude, the accelerator in use is reported on the host and the agent, and delete destroys it.

It needs QEMU and the guest image (``tests/guest.py``) and skips, with the reason, without them.
"""

from __future__ import annotations

import httpx
import pytest

from agents import sandbox
from agents.models import Agent, SandboxHost
from agents.services import host_register
from console.models import UsageRecord
from tests.fakes.anthropic import ToolUse
from tests.guest import guest_or_skip
from vmdriver import SandboxNotFound, VmState

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def qemu_host(settings) -> SandboxHost:
    """This machine as a qemu sandbox host, registered as its worker would register it."""
    settings.SANDBOX_GUEST_DIR = guest_or_skip()
    settings.SANDBOX_BACKEND = "qemu"
    sandbox.driver.cache_clear()
    accel = sandbox.host_accel()
    assert accel in {"kvm", "tcg"}
    SandboxHost.objects.all().delete()
    return host_register(
        name=settings.SANDBOX_HOST_NAME,
        backend="qemu",
        capacity_vcpus=8,
        capacity_memory_mib=4096,
        accel=accel,
    )


@pytest.fixture
def alice(asgi_server, settings, fake_anthropic, user, api_key) -> httpx.Client:
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    return httpx.Client(
        base_url=asgi_server, timeout=60, headers={"Authorization": f"Bearer {api_key(user)}"}
    )


def test_a_microvm_agent_boots_chats_with_tools_and_is_destroyed(alice, qemu_host, fake_anthropic):
    response = alice.post("/v1/agents/spawn", json={"user_id": "alice", "cores": 1, "memory": 384})
    assert response.status_code == 201, response.text
    spawned = response.json()
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.status == "running", agent.last_error
    assert (agent.host, agent.accel) == (qemu_host, qemu_host.accel)
    shown = alice.get(f"/v1/agents/get?agent_id={agent.pk}").json()
    assert (shown["backend"], shown["accel"]) == ("qemu", qemu_host.accel)
    assert sandbox.driver().status(agent.sandbox_id).state == VmState.RUNNING

    # Claude asks the agent to run a command: it runs inside the guest, whose kernel is its own.
    fake_anthropic.enqueue(ToolUse("run_command", {"command": "uname -r; pwd"}))
    chat = alice.post(
        f"{spawned['url']}/v1/agent/chat",
        json={"prompt": "Which kernel?", "user_id": "alice", "stream": False},
    )
    assert chat.status_code == 200, chat.text
    reply = chat.json()
    assert reply["status"] == "completed"
    # The fake Claude echoes the tool's result: Debian's cloud kernel, not the host's, and the
    # guest's own workspace.
    assert reply["content"].startswith("Tool result: exit code: 0\n")
    assert reply["content"].endswith("-cloud-amd64\n/workspace\n"), reply["content"]
    assert UsageRecord.objects.filter(agent=agent).count() == 2  # both calls went through

    assert alice.delete(f"/v1/agents/delete?agent_id={agent.pk}").status_code == 200
    with pytest.raises(SandboxNotFound):
        sandbox.driver().status(agent.sandbox_id)


def test_a_microvm_agents_workspace_files_and_commands_work_as_on_a_process(alice, qemu_host):
    """The same routes, through the runtime inside the guest: its /workspace, its kernel."""
    response = alice.post("/api/v1/agents", json={"name": "vm-files", "cores": 1, "memory": 384})
    assert response.status_code == 201, response.text
    agent_id = response.json()["agent_id"]
    assert Agent.objects.get(pk=agent_id).status == "running"
    files = f"/api/v1/agents/{agent_id}/files"

    written = alice.put(f"{files}/notes/a.txt", content=b"from the host\n")
    assert written.status_code == 201, written.text
    listing = alice.get(files, params={"path": "notes"}).json()
    assert [(e["name"], e["size"]) for e in listing["entries"]] == [("a.txt", 14)]
    assert alice.get(f"{files}/notes/a.txt").content == b"from the host\n"

    ran = alice.post(
        f"/api/v1/agents/{agent_id}/exec",
        json={"command": "uname -r; pwd; cat notes/a.txt; ln -s /etc/passwd leak"},
    ).json()
    assert ran["exit_code"] == 0, ran
    kernel, cwd, content = ran["stdout"].splitlines()
    assert kernel.endswith("-cloud-amd64") and cwd == "/workspace"
    assert content == "from the host"
    leak = alice.get(f"{files}/leak")
    assert leak.status_code == 400 and "outside the workspace" in leak.json()["error"]["message"]
    assert alice.get(f"{files}/..%2fetc%2fpasswd").status_code == 400

    slow = alice.post(
        f"/api/v1/agents/{agent_id}/exec", json={"argv": ["sleep", "30"], "timeout_seconds": 1}
    ).json()
    assert (slow["exit_code"], slow["timed_out"]) == (None, True)
    assert alice.delete(f"{files}/notes", params={"recursive": "true"}).status_code == 200
    assert [e["name"] for e in alice.get(files).json()["entries"]] == ["leak"]
    assert alice.delete(f"/api/v1/agents/{agent_id}").status_code == 200
