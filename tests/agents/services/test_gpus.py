"""GPUs in the console: a host's inventory (found by nvidia-smi, or declared), a user's quota of
them, placement that gives each GPU or MIG slice to one agent at a time and refuses clearly when
none is free, a stopped agent's GPUs going back to its host, and the API's fields.

The hosts' GPUs are declared here (this machine has none); ``tests/vmdriver/test_gpus.py``
covers reading them from nvidia-smi and giving them to a sandbox."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from agents import sandbox
from agents.models import Agent, SandboxHost, WarmPool
from agents.services import GpuRequest, agent_spawn, agent_start, host_register
from console.models import Quota
from console.services import quota_get
from plumbing.errors import CapacityExhausted, QuotaExceeded
from tests.vmdriver.test_gpus import fake_nvidia_smi

A100 = {
    "index": 0,
    "model": "NVIDIA A100-SXM4-80GB",
    "memory_mib": 81920,
    "uuid": "GPU-a100",
    "pci_address": "0000:07:00.0",
    "mig": [
        {"profile": "3g.40gb", "uuid": "MIG-big"},
        {"profile": "1g.10gb", "uuid": "MIG-small-1"},
        {"profile": "1g.10gb", "uuid": "MIG-small-2"},
    ],
}
L4 = {"index": 1, "model": "NVIDIA L4", "memory_mib": 23034, "uuid": "GPU-l4", "mig": []}

pytestmark = pytest.mark.django_db


@pytest.fixture
def gpu_host(db) -> SandboxHost:
    """The only host: 16 vCPUs, an A100 in three MIG slices and a whole L4."""
    SandboxHost.objects.all().delete()
    return host_register(
        name="gpu-1",
        backend="process",
        capacity_vcpus=16,
        capacity_memory_mib=65536,
        gpus=[A100, L4],
    )


@pytest.fixture
def granted(user) -> Quota:
    quota = quota_get(user=user)
    quota.max_gpus = 4
    quota.save()
    return quota


def spawn(user, **request) -> Agent:
    with transaction.atomic():  # on-commit boots never run inside the test's transaction
        return agent_spawn(owner=user, gpu=GpuRequest(**request) if request else None)


def uuids(agent: Agent) -> list[str]:
    return [unit["uuid"] for unit in agent.gpus]


def test_a_whole_gpu_of_a_model_is_given_to_one_agent_at_a_time(user, gpu_host, granted):
    first = spawn(user, count=1, model="l4")

    assert (first.host, uuids(first), first.gpu_count) == (gpu_host, ["GPU-l4"], 1)
    with pytest.raises(CapacityExhausted) as refused:
        spawn(user, count=1, model="L4")
    assert "no sandbox host has room for 1 vCPUs and 512 MiB with 1 whole GPU of a L4 free" in (
        refused.value.message
    )
    (host,) = refused.value.details["hosts"]
    assert host["free_gpus"] == [
        {"model": "NVIDIA A100-SXM4-80GB", "profile": "1g.10gb", "count": 2},
        {"model": "NVIDIA A100-SXM4-80GB", "profile": "3g.40gb", "count": 1},
    ]


def test_a_partitioned_gpu_is_given_by_its_mig_slices(user, gpu_host, granted):
    pair = spawn(user, count=2, profile="1g.10gb")

    assert uuids(pair) == ["MIG-small-1", "MIG-small-2"]
    assert {unit["memory_mib"] for unit in pair.gpus} == {10240}
    with pytest.raises(CapacityExhausted, match=r"1 1g\.10gb MIG slice free"):
        spawn(user, count=1, profile="1g.10gb")
    # A partitioned GPU is not given whole.
    with pytest.raises(CapacityExhausted, match="1 whole GPU of a A100 free"):
        spawn(user, count=1, model="A100")


def test_the_quota_caps_a_users_gpus_and_grants_none_by_default(user, gpu_host):
    quota = quota_get(user=user)
    with pytest.raises(QuotaExceeded) as refused:
        spawn(user, count=1)
    assert refused.value.details == {"limit": "max_gpus", "value": 0, "used": 0, "requested": 1}

    Quota.objects.filter(pk=quota.pk).update(max_gpus=2)
    spawn(user, count=1, profile="1g.10gb")
    with pytest.raises(QuotaExceeded, match="max_gpus quota \\(1 used of 2\\)"):
        spawn(user, count=2, profile="1g.10gb")
    assert Agent.objects.count() == 1


def test_a_host_without_the_gpus_is_passed_over_whatever_its_room(user, gpu_host, granted):
    host_register(
        name="big-cpu", backend="process", capacity_vcpus=256, capacity_memory_mib=1 << 20
    )

    assert spawn(user).host.name == "big-cpu"  # no GPU asked: the most room
    assert spawn(user, count=1, profile="3g.40gb").host == gpu_host


def test_a_stopped_agents_gpu_goes_back_and_it_takes_it_again_when_free(user, gpu_host, granted):
    first = spawn(user, count=1, model="L4")
    Agent.objects.filter(pk=first.pk).update(status="stopped")
    second = spawn(user, count=1, model="L4")
    assert uuids(second) == ["GPU-l4"]

    with transaction.atomic(), pytest.raises(CapacityExhausted, match="gpu-1 has not 1 whole"):
        agent_start(agent=Agent.objects.get(pk=first.pk))
    assert Agent.objects.get(pk=first.pk).status == "stopped"

    Agent.objects.filter(pk=second.pk).update(status="stopped")
    with transaction.atomic():
        started = agent_start(agent=Agent.objects.get(pk=first.pk))
    assert (started.status, uuids(started)) == ("pending", ["GPU-l4"])


def test_a_spawn_asking_for_gpus_never_claims_a_warm_agent(user, gpu_host, granted, settings):
    pool = WarmPool.objects.create(name="warm", model=settings.DEFAULT_AGENT_MODEL)
    Agent.objects.create(
        owner=user, model=pool.model, status="running", host=gpu_host, warm_pool=pool
    )

    agent = spawn(user, count=1, model="L4")

    assert agent.warm_pool is None and uuids(agent) == ["GPU-l4"]


def test_the_sandbox_is_given_the_agents_gpus(user, gpu_host, granted):
    agent = spawn(user, count=1, profile="3g.40gb")

    (unit,) = sandbox.runtime_spec(agent=agent).gpus

    assert (unit.uuid, unit.profile, unit.index) == ("MIG-big", "3g.40gb", 0)


class TestApi:
    def test_a_spawn_asks_for_gpus_and_shows_those_given(self, user, gpu_host, granted, client_for):
        answer = client_for(user).post(
            "/api/v1/agents", {"gpus": 1, "gpu_model": "L4"}, format="json"
        )

        assert answer.status_code == 201, answer.content
        assert answer.json()["gpus"] == [
            {"uuid": "GPU-l4", "model": "NVIDIA L4", "profile": "", "memory_mib": 23034}
        ]
        listed = client_for(user).get("/api/v1/agents").json()["results"]
        assert listed[0]["gpus"] == answer.json()["gpus"]

    @pytest.mark.parametrize(
        "body",
        [
            {"gpu_model": "L4"},
            {"gpus": 1, "gpu_profile": "a-lot"},
            {"gpus": 17},
            {"gpus": -1},
        ],
    )
    def test_a_bad_gpu_request_is_refused(self, user, gpu_host, granted, client_for, body):
        answer = client_for(user).post("/api/v1/agents", body, format="json")

        assert answer.status_code == 400, answer.content
        assert not Agent.objects.exists()

    def test_no_free_gpu_is_a_503_with_the_hosts_free_gpus(
        self, user, gpu_host, granted, client_for
    ):
        answer = client_for(user).post(
            "/v1/agents/spawn", {"gpus": 1, "gpu_model": "H100"}, format="json"
        )

        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "no_capacity"
        assert error["details"]["requested"]["gpus"] == {
            "count": 1,
            "model": "H100",
            "profile": "",
        }


class TestInventory:
    def test_declared_gpus_are_checked_and_recorded(self, settings):
        settings.SANDBOX_HOST_GPUS = json.dumps([L4])
        assert sandbox.host_gpus() == [L4 | {"pci_address": ""}]

        settings.SANDBOX_HOST_GPUS = json.dumps([{"model": "L4"}])
        with pytest.raises(Exception, match="SANDBOX_HOST_GPUS does not declare GPUs"):
            sandbox.host_gpus()

    def test_none_declares_no_gpus_and_auto_reads_nvidia_smi(self, settings, tmp_path, monkeypatch):
        settings.SANDBOX_HOST_GPUS = "none"
        assert sandbox.host_gpus() == []

        fake_nvidia_smi(tmp_path)
        monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
        settings.SANDBOX_HOST_GPUS = "auto"
        found = sandbox.host_gpus()
        assert [gpu["model"] for gpu in found] == ["NVIDIA A100-SXM4-80GB", "NVIDIA L4"]
        assert [len(gpu["mig"]) for gpu in found] == [3, 0]


def test_metrics_and_the_dashboard_show_the_hosts_gpus(user, gpu_host, granted, client):
    from agents.selectors import fleet_counts

    spawn(user, count=1, profile="1g.10gb")

    counts = fleet_counts()
    assert (counts.capacity["gpus"], counts.used["gpus"]) == (4, 1)
    user.is_staff = True
    user.save()
    client.force_login(user)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    row = page.content.decode().split("gpu-1", 1)[1].split("</tr>", 1)[0]
    assert 'aria-label="GPUs and MIG slices held"' in row and "1 / 4" in row
