"""Pausing and resuming agents through ``/api/v1/agents/<id>/pause`` and ``/resume``, for real.

As in ``test_api_v1_live.py``: the console is served over ASGI, the agent boots through the
Celery task (run eagerly) as a real ``python -m agents.runtime`` under bubblewrap, and Claude
is the fake Anthropic server. Who may pause or resume (owners; outsiders get 404, read-only keys
403) is in ``test_api_v1.py``'s table of routes.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from agents import sandbox
from agents.models import Agent
from tests.fakes.anthropic import ToolUse
from tests.polling import eventually
from tests.processes import cpu_ticks, stat, tree
from vmdriver import VmState

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
# A busy loop in a session of its own, which outlives the tool's command; the command waits
# until it is (the tool ends its command's process group as the command returns).
SPIN = (
    'setsid /usr/bin/python3 -c \'open("spun", "w").close(); exec("while True: pass")\''
    " </dev/null >/dev/null 2>&1 & while [ ! -e spun ]; do sleep 0.05; done; echo spinning"
)


def _freezer_writable() -> bool:
    return (
        Path("/sys/fs/cgroup/freezer").is_dir()
        and Path("/sys/fs/cgroup/freezer").stat().st_uid == 0
    )


@pytest.fixture
def alice(user, api_key, live_console):
    with httpx.Client(
        base_url=f"{live_console}{API}",
        timeout=60,
        headers={"Authorization": f"Bearer {api_key(user)}"},
    ) as client:
        yield client


def _spawn(client: httpx.Client) -> str:
    response = client.post("/agents", json={"name": "sleepy", "memory": 256})
    assert response.status_code == 201, response.text
    agent = client.get(f"/agents/{response.json()['agent_id']}").json()
    assert agent["status"] == "running", agent["last_error"]
    assert agent["on_idle"] == "stop"
    return agent["agent_id"]


def _act(client: httpx.Client, agent_id: str, action: str) -> dict:
    """POST the action; the agent as it answers (pausing, resuming), then as it is once the
    host did it (the tasks run eagerly here)."""
    response = client.post(f"/agents/{agent_id}/{action}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("pausing", "paused", "resuming", "running")
    return client.get(f"/agents/{agent_id}").json()


def _spinner(leader: int) -> int | None:
    for pid in tree(leader):
        try:
            if b"while True" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def _health(agent_id: str) -> int:
    agent = Agent.objects.get(pk=agent_id)
    with sandbox.runtime_client_sync(agent.endpoint, timeout=5) as client:
        return client.get("/health").status_code


def test_a_paused_agent_is_frozen_keeps_its_session_and_a_turn_resumes_it(alice, fake_anthropic):
    agent_id = _spawn(alice)
    session = alice.post("/sessions", json={"agent_id": agent_id}).json()["session_id"]
    fake_anthropic.enqueue(ToolUse("run_command", {"command": SPIN}))
    first = alice.post(f"/sessions/{session}/messages", json={"content": "spin for me"})
    assert first.status_code == 200, first.text
    agent = Agent.objects.get(pk=agent_id)
    leader = sandbox.driver().status(agent.sandbox_id).pid
    spinner = eventually(lambda: _spinner(leader), 10, failing="no busy loop in the sandbox")
    before = cpu_ticks(spinner)
    time.sleep(0.5)
    assert cpu_ticks(spinner) > before, "the busy loop should use CPU while the agent runs"

    body = _act(alice, agent_id, "pause")

    assert body["status"] == "paused" and body["paused_at"], body
    status = sandbox.driver().status(agent.sandbox_id)
    assert status.state is VmState.PAUSED
    if _freezer_writable():
        assert body["pause_method"] == "freezer"
        group = Path((Path(sandbox.driver().state_dir) / agent.sandbox_id / "freezer").read_text())
        assert (group / "freezer.state").read_text().strip() == "FROZEN"
        assert stat(spinner)[0] == "D"
    else:  # no freezer cgroup on this host: each process is stopped, and the log says why
        assert body["pause_method"] == "sigstop"
        assert stat(spinner)[0] == "T"
        assert "paused by SIGSTOP" in sandbox.driver().logs(agent.sandbox_id)
    frozen = cpu_ticks(spinner)
    time.sleep(1.0)
    assert cpu_ticks(spinner) == frozen, "a paused agent must use no CPU"
    again = alice.post(f"/agents/{agent_id}/pause")
    assert (again.status_code, again.json()["status"]) == (200, "paused")

    # A turn sent to the paused agent resumes it and runs, in the session it kept in memory.
    second = alice.post(f"/sessions/{session}/messages", json={"content": "still there?"})

    assert second.status_code == 200, second.text
    sent = fake_anthropic.requests[-1].body["messages"]
    assert sent[0]["content"] in ("spin for me", [{"type": "text", "text": "spin for me"}])
    assert len(sent) == 5  # the first turn (prompt, tool call, result, reply), then this one
    got = alice.get(f"/agents/{agent_id}").json()
    assert (got["status"], got["pause_method"], got["paused_at"]) == ("running", "", None)
    assert _health(agent_id) == 200
    resumed = cpu_ticks(spinner)
    time.sleep(0.5)
    assert cpu_ticks(spinner) > resumed, "the busy loop carries on where it was"


def test_an_agent_paused_and_resumed_by_request_answers_health(alice):
    agent_id = _spawn(alice)
    assert _act(alice, agent_id, "pause")["status"] == "paused"
    assert _act(alice, agent_id, "resume")["status"] == "running"
    again = alice.post(f"/agents/{agent_id}/resume")
    assert (again.status_code, again.json()["status"]) == (200, "running")
    assert _health(agent_id) == 200


def test_only_a_running_agent_pauses_and_only_a_paused_one_resumes(alice):
    agent_id = _spawn(alice)
    assert alice.post(f"/agents/{agent_id}/stop").status_code == 200
    for action in ("pause", "resume"):
        refused = alice.post(f"/agents/{agent_id}/{action}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "agent_not_running"
        assert refused.json()["error"]["details"]["status"] == "stopped"


def test_a_one_shot_task_naming_no_agent_resumes_your_paused_one(alice, fake_anthropic):
    agent_id = _spawn(alice)
    assert _act(alice, agent_id, "pause")["status"] == "paused"

    answer = alice.post("/execute", json={"task_description": "wake up"})

    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"]["agent_id"] == agent_id
    assert answer.json()["result"] == "Echo: wake up"
    assert alice.get(f"/agents/{agent_id}").json()["status"] == "running"
