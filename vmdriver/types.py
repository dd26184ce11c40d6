"""The values a driver takes and returns: all frozen, so they can be passed around freely."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vmdriver.gpus import GpuUnit

__all__ = ["PauseMethod", "VmHandle", "VmSpec", "VmState", "VmStatus"]


def _frozen_env(env: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(env))


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What to run: resources, the program (``image``: for ``process`` an argv, for ``qemu`` an
    image name), its environment, the guest ports to expose, and ``gateway``: the one URL the
    sandbox may reach (its only way out). Inside, ``SANDBOX_LISTEN`` says where the program
    should listen and ``SANDBOX_GATEWAY`` how to reach the gateway (``unix:<path>`` or
    ``tcp:<host>:<port>``). ``secrets`` reach the program as files in the folder named by
    ``SANDBOX_SECRETS`` (for it to read and delete), never in an environment that other
    processes in the sandbox could read. ``gpus`` are the GPUs (or MIG slices) given to it
    (``vmdriver.gpus``)."""

    name: str
    vcpus: int = 1
    memory_mib: int = 512
    image: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    gateway: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    gpus: tuple[GpuUnit, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"invalid sandbox name {self.name!r}")
        if self.vcpus < 1:
            raise ValueError("vcpus must be at least 1")
        if self.memory_mib < 16:
            raise ValueError("memory_mib must be at least 16")
        object.__setattr__(self, "env", _frozen_env(self.env))
        object.__setattr__(self, "secrets", _frozen_env(self.secrets))


@dataclass(frozen=True, slots=True)
class VmHandle:
    """A created sandbox: its id, backend, and once started where its runtime listens."""

    id: str
    backend: str
    endpoint: str = ""
    pid: int | None = None
    accel: str = ""


class VmState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"


class PauseMethod(enum.StrEnum):
    """How a paused sandbox was paused."""

    FREEZER = "freezer"  # its cgroup (v1) freezer: no CPU, memory kept
    SIGSTOP = "sigstop"  # SIGSTOP to each of its processes, where there is no freezer
    VM_STOP = "vm-stop"  # QEMU's ``stop``: the vCPUs halt, the guest's memory is kept
    SNAPSHOT = "snapshot"  # QEMU's state saved to disk and QEMU ended: its memory is freed


@dataclass(frozen=True, slots=True)
class VmStatus:
    """What a driver sees of a sandbox right now."""

    id: str
    state: VmState
    endpoint: str = ""
    pid: int | None = None
    exit_code: int | None = None
    paused: PauseMethod | None = None
