"""GPUs on a sandbox host: what the host has (read from ``nvidia-smi``, or declared), and what a
sandbox is given of them.

A GPU is given whole, or, when it is partitioned by MIG (multi-instance GPU), one of its slices:
each slice has a profile (``1g.10gb``: one compute slice, 10 GB) and a UUID of its own. A unit
is either, named by its UUID, which is what CUDA takes in ``CUDA_VISIBLE_DEVICES``.

Given to a ``process`` sandbox, a unit is its device nodes bound into bubblewrap's ``/dev``
(``/dev/nvidia<index>``, the control and unified-memory nodes, and ``/dev/nvidia-caps`` for MIG)
and ``CUDA_VISIBLE_DEVICES`` set to its UUID, so that CUDA inside sees that unit alone. Given to
a ``qemu`` sandbox, a whole GPU is passed through with VFIO at its PCI address (the host binds
the device to ``vfio-pci`` beforehand); a MIG slice cannot be passed to a VM that way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GpuDevice",
    "GpuUnit",
    "MigSlice",
    "gpu_dev_binds",
    "gpus_detect",
    "gpus_from_inventory",
    "gpus_inventory",
    "units_of",
]

_QUERY = "index,name,memory.total,uuid,pci.bus_id"
_GPU_LINE = re.compile(r"^GPU (?P<index>\d+): .*\(UUID: (?P<uuid>GPU-[0-9a-fA-F-]+)\)")
_MIG_LINE = re.compile(
    r"^\s+MIG (?P<profile>\S+)\s+Device\s+(?P<n>\d+): \(UUID: (?P<uuid>MIG-[0-9a-zA-Z/-]+)\)"
)
_SHARED_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True, slots=True)
class MigSlice:
    """One MIG slice of a GPU: its profile and its UUID."""

    profile: str
    uuid: str


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU of a host, with its MIG slices when it is partitioned."""

    index: int
    model: str
    memory_mib: int
    uuid: str
    pci_address: str = ""
    mig: tuple[MigSlice, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuUnit:
    """What one sandbox may be given: a whole GPU (``profile`` "") or one MIG slice of it."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    profile: str = ""
    pci_address: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "index": self.index,
            "model": self.model,
            "memory_mib": self.memory_mib,
            "profile": self.profile,
            "pci_address": self.pci_address,
        }


def units_of(devices: Iterable[GpuDevice]) -> list[GpuUnit]:
    """Every unit of ``devices``: each MIG slice of a partitioned GPU, each other GPU whole."""
    units = []
    for gpu in devices:
        for piece in gpu.mig:
            units.append(
                GpuUnit(
                    uuid=piece.uuid,
                    index=gpu.index,
                    model=gpu.model,
                    memory_mib=_profile_memory_mib(piece.profile) or gpu.memory_mib,
                    profile=piece.profile,
                    pci_address=gpu.pci_address,
                )
            )
        if not gpu.mig:
            units.append(
                GpuUnit(
                    uuid=gpu.uuid,
                    index=gpu.index,
                    model=gpu.model,
                    memory_mib=gpu.memory_mib,
                    pci_address=gpu.pci_address,
                )
            )
    return units


def _profile_memory_mib(profile: str) -> int:
    """A MIG profile's memory (``3g.40gb``: 40 GB), in MiB; 0 when it does not say."""
    found = re.search(r"\.(\d+)gb$", profile)
    return int(found.group(1)) * 1024 if found else 0


def _run(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=True).stdout


def gpus_detect(nvidia_smi: str | None = None) -> list[GpuDevice]:
    """This host's NVIDIA GPUs and their MIG slices, as ``nvidia-smi`` reports them; none when
    it is not installed. Raises ``RuntimeError`` when it is there and fails (a driver that is
    not loaded): a host must not register as having no GPUs because its driver is broken."""
    binary = nvidia_smi or shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        table = _run([binary, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"])
        listing = _run([binary, "-L"])
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"nvidia-smi failed: {exc}") from exc
    slices: dict[int, list[MigSlice]] = {}
    uuid_index: dict[str, int] = {}
    current: int | None = None
    for line in listing.splitlines():
        if gpu := _GPU_LINE.match(line):
            current = int(gpu.group("index"))
            uuid_index[gpu.group("uuid")] = current
        elif (piece := _MIG_LINE.match(line)) and current is not None:
            slices.setdefault(current, []).append(
                MigSlice(profile=piece.group("profile"), uuid=piece.group("uuid"))
            )
    devices = []
    for row in table.splitlines():
        if not row.strip():
            continue
        index, name, memory, uuid, bus = (cell.strip() for cell in row.split(","))
        devices.append(
            GpuDevice(
                index=int(index),
                model=name,
                memory_mib=int(float(memory)),
                uuid=uuid,
                pci_address=_pci(bus),
                mig=tuple(slices.get(int(index), ())),
            )
        )
    return devices


def _pci(bus_id: str) -> str:
    """``00000000:07:00.0`` (nvidia-smi's) as ``0000:07:00.0`` (sysfs' and VFIO's)."""
    domain, _, rest = bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower() if rest else bus_id.lower()


def gpus_inventory(devices: Iterable[GpuDevice]) -> list[dict[str, Any]]:
    """``devices`` as JSON-able data, as the console records a host's GPUs."""
    return [
        {
            "index": gpu.index,
            "model": gpu.model,
            "memory_mib": gpu.memory_mib,
            "uuid": gpu.uuid,
            "pci_address": gpu.pci_address,
            "mig": [{"profile": piece.profile, "uuid": piece.uuid} for piece in gpu.mig],
        }
        for gpu in devices
    ]


def gpus_from_inventory(data: Iterable[Mapping[str, Any]]) -> list[GpuDevice]:
    """The devices of ``gpus_inventory``'s data (or an operator's declaration in that shape);
    ``ValueError`` when an entry lacks what a GPU needs."""
    devices = []
    for n, entry in enumerate(data):
        try:
            devices.append(
                GpuDevice(
                    index=int(entry.get("index", n)),
                    model=str(entry["model"]),
                    memory_mib=int(entry["memory_mib"]),
                    uuid=str(entry["uuid"]),
                    pci_address=str(entry.get("pci_address", "")),
                    mig=tuple(
                        MigSlice(profile=str(m["profile"]), uuid=str(m["uuid"]))
                        for m in entry.get("mig", ())
                    ),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"GPU {n}: needs model, memory_mib and uuid ({exc})") from exc
    if len({d.uuid for d in devices}) != len(devices):
        raise ValueError("two GPUs share a UUID")
    return devices


def gpu_dev_binds(units: Iterable[GpuUnit], dev: Path = Path("/dev")) -> list[str]:
    """bubblewrap's arguments that give ``units``' device nodes to a sandbox: each GPU's own
    node, the driver's shared nodes, and MIG's capability nodes, those the host has."""
    units = list(units)
    if not units:
        return []
    nodes = [str(dev / f"nvidia{index}") for index in sorted({u.index for u in units})]
    nodes += [str(dev / Path(node).name) for node in _SHARED_NODES]
    if any(u.profile for u in units):
        nodes.append(str(dev / "nvidia-caps"))
    argv: list[str] = []
    for node in nodes:
        argv += ["--dev-bind-try", node, "/dev/" + Path(node).name]
    return argv
