"""A host's GPUs as ``nvidia-smi`` reports them, the units a sandbox may be given (whole GPUs and
MIG slices), and how each backend gives them: device nodes and ``CUDA_VISIBLE_DEVICES`` under
bubblewrap, VFIO for a microVM.

``nvidia-smi`` is a script of the test's own here, printing what the real one prints; a test
that needs a real GPU skips where there is none. Like the other vmdriver tests, these need
neither Django nor the shared fixtures.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vmdriver import VmSpec
from vmdriver.gpus import (
    GpuDevice,
    GpuUnit,
    MigSlice,
    gpu_dev_binds,
    gpus_detect,
    gpus_from_inventory,
    gpus_inventory,
    units_of,
)
from vmdriver.qemu import QemuDriver, qemu_argv

QUERY = """\
0, NVIDIA A100-SXM4-80GB, 81920, GPU-5d0e1c2a-0000-4000-8000-000000000001, 00000000:07:00.0
1, NVIDIA L4, 23034, GPU-5d0e1c2a-0000-4000-8000-000000000002, 00000000:0A:00.0
"""
LISTING = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5d0e1c2a-0000-4000-8000-000000000001)
  MIG 3g.40gb     Device  0: (UUID: MIG-1f0c0b9e-0000-5000-8000-000000000010)
  MIG 1g.10gb     Device  1: (UUID: MIG-1f0c0b9e-0000-5000-8000-000000000011)
  MIG 1g.10gb     Device  2: (UUID: MIG-1f0c0b9e-0000-5000-8000-000000000012)
GPU 1: NVIDIA L4 (UUID: GPU-5d0e1c2a-0000-4000-8000-000000000002)
"""


def fake_nvidia_smi(folder: Path, *, exit_code: int = 0) -> Path:
    """An ``nvidia-smi`` answering the two questions the console asks, as the real one does."""
    (folder / "query.txt").write_text(QUERY)
    (folder / "listing.txt").write_text(LISTING)
    script = folder / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\n"
        f"[ {exit_code} -ne 0 ] && {{ echo 'NVIDIA-SMI has failed' >&2; exit {exit_code}; }}\n"
        f'case "$1" in\n'
        f"  --query-gpu=*) cat {folder / 'query.txt'} ;;\n"
        f"  -L) cat {folder / 'listing.txt'} ;;\n"
        f"  *) exit 2 ;;\n"
        f"esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_the_gpus_and_their_mig_slices_are_read_from_nvidia_smi(tmp_path: Path) -> None:
    devices = gpus_detect(str(fake_nvidia_smi(tmp_path)))

    assert devices == [
        GpuDevice(
            index=0,
            model="NVIDIA A100-SXM4-80GB",
            memory_mib=81920,
            uuid="GPU-5d0e1c2a-0000-4000-8000-000000000001",
            pci_address="0000:07:00.0",
            mig=(
                MigSlice("3g.40gb", "MIG-1f0c0b9e-0000-5000-8000-000000000010"),
                MigSlice("1g.10gb", "MIG-1f0c0b9e-0000-5000-8000-000000000011"),
                MigSlice("1g.10gb", "MIG-1f0c0b9e-0000-5000-8000-000000000012"),
            ),
        ),
        GpuDevice(
            index=1,
            model="NVIDIA L4",
            memory_mib=23034,
            uuid="GPU-5d0e1c2a-0000-4000-8000-000000000002",
            pci_address="0000:0a:00.0",
        ),
    ]


def test_a_partitioned_gpu_is_given_by_its_slices_and_another_whole(tmp_path: Path) -> None:
    units = units_of(gpus_detect(str(fake_nvidia_smi(tmp_path))))

    assert [(u.index, u.profile, u.memory_mib) for u in units] == [
        (0, "3g.40gb", 40 * 1024),
        (0, "1g.10gb", 10 * 1024),
        (0, "1g.10gb", 10 * 1024),
        (1, "", 23034),
    ]
    assert units[3].uuid == "GPU-5d0e1c2a-0000-4000-8000-000000000002"


def test_without_nvidia_smi_a_host_has_no_gpus(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    assert gpus_detect() == []


def test_a_failing_nvidia_smi_is_an_error_not_zero_gpus(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="nvidia-smi failed"):
        gpus_detect(str(fake_nvidia_smi(tmp_path, exit_code=9)))


def test_an_inventory_round_trips_and_a_declaration_is_checked(tmp_path: Path) -> None:
    devices = gpus_detect(str(fake_nvidia_smi(tmp_path)))

    assert gpus_from_inventory(gpus_inventory(devices)) == devices
    with pytest.raises(ValueError, match="GPU 0: needs model"):
        gpus_from_inventory([{"memory_mib": 1024, "uuid": "GPU-x"}])
    twice = {"model": "L4", "memory_mib": 1, "uuid": "GPU-x"}
    with pytest.raises(ValueError, match="share a UUID"):
        gpus_from_inventory([twice, twice | {"index": 1}])


def test_a_sandbox_gets_its_gpus_device_nodes_and_the_drivers_shared_ones() -> None:
    whole = GpuUnit(uuid="GPU-a", index=1, model="L4", memory_mib=23034)
    sliced = GpuUnit(uuid="MIG-b", index=0, model="A100", memory_mib=10240, profile="1g.10gb")

    assert gpu_dev_binds([]) == []
    binds = gpu_dev_binds([whole, sliced])
    pairs = [tuple(binds[i : i + 3]) for i in range(0, len(binds), 3)]
    assert pairs == [
        ("--dev-bind-try", "/dev/nvidia0", "/dev/nvidia0"),
        ("--dev-bind-try", "/dev/nvidia1", "/dev/nvidia1"),
        ("--dev-bind-try", "/dev/nvidiactl", "/dev/nvidiactl"),
        ("--dev-bind-try", "/dev/nvidia-uvm", "/dev/nvidia-uvm"),
        ("--dev-bind-try", "/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools"),
        ("--dev-bind-try", "/dev/nvidia-caps", "/dev/nvidia-caps"),
    ]


def test_a_sandboxs_gpus_survive_its_stored_spec(tmp_path: Path) -> None:
    from vmdriver.process import ProcessDriver

    unit = GpuUnit(uuid="GPU-a", index=1, model="L4", memory_mib=23034, pci_address="0000:0a:00.0")
    driver = ProcessDriver(state_dir=tmp_path / "sb", isolation="none")
    handle = driver.create(VmSpec(name="sbx", image=("true",), gpus=(unit,)))

    assert driver._spec(driver._dir(handle.id)).gpus == (unit,)


def test_an_unsandboxed_program_sees_only_its_gpus_in_cuda_visible_devices(
    tmp_path: Path,
) -> None:
    from vmdriver.process import ProcessDriver

    units = (
        GpuUnit(uuid="MIG-b", index=0, model="A100", memory_mib=10240, profile="1g.10gb"),
        GpuUnit(uuid="GPU-a", index=1, model="L4", memory_mib=23034),
    )
    driver = ProcessDriver(state_dir=tmp_path / "sb", isolation="none")
    program = "import os; print('CUDA', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)"
    handle = driver.start(
        driver.create(VmSpec(name="sbx", image=(sys.executable, "-c", program), gpus=units))
    )
    try:
        from tests.polling import eventually

        assert eventually(lambda: "CUDA MIG-b,GPU-a" in driver.logs(handle.id), 10)
    finally:
        driver.destroy(handle.id)


def _argv(spec: VmSpec, tmp_path: Path) -> list[str]:
    return qemu_argv(
        spec=spec,
        accel="tcg",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        env_file=tmp_path / "guest-env.json",
        host_port=40123,
        route=None,
        qemu="/usr/bin/qemu-system-x86_64",
    )


def test_a_microvm_is_given_a_whole_gpu_by_vfio_on_a_pcie_bus(tmp_path: Path) -> None:
    unit = GpuUnit(uuid="GPU-a", index=1, model="L4", memory_mib=23034, pci_address="0000:0a:00.0")

    plain = _argv(VmSpec(name="sbx"), tmp_path)
    given = _argv(VmSpec(name="sbx", gpus=(unit,)), tmp_path)

    assert plain[plain.index("-M") + 1] == "microvm" and "vfio-pci" not in " ".join(plain)
    assert given[given.index("-M") + 1] == "microvm,pcie=on"
    assert given[given.index("vfio-pci,host=0000:0a:00.0") - 1] == "-device"


def test_a_microvm_refuses_a_mig_slice(tmp_path: Path) -> None:
    sliced = GpuUnit(uuid="MIG-b", index=0, model="A100", memory_mib=10240, profile="1g.10gb")
    driver = QemuDriver(state_dir=tmp_path / "vm", guest_dir=tmp_path / "guest")

    with pytest.raises(ValueError, match="a MIG slice cannot be passed through"):
        driver.create(VmSpec(name="sbx", gpus=(sliced,)))


def _real_gpu() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU here: nvidia-smi is not installed"
    try:
        return None if gpus_detect() else "nvidia-smi reports no GPU"
    except RuntimeError as exc:
        return str(exc)


@pytest.mark.skipif(_real_gpu() is not None, reason=str(_real_gpu()))
def test_a_bubblewrapped_sandbox_sees_the_gpu_it_was_given(tmp_path: Path) -> None:
    from vmdriver.isolation import bwrap_problem
    from vmdriver.process import ProcessDriver

    if problem := bwrap_problem():
        pytest.skip(problem)
    unit = units_of(gpus_detect())[0]
    python = [(p, p) for p in sorted({sys.base_prefix, sys.prefix})]
    driver = ProcessDriver(state_dir=tmp_path / "sb", ro_binds=python)
    probe = "import os; print('DEV', sorted(os.listdir('/dev')), flush=True)"
    handle = driver.start(
        driver.create(VmSpec(name="sbx", image=(sys.executable, "-c", probe), gpus=(unit,)))
    )
    try:
        from tests.polling import eventually

        assert eventually(lambda: f"nvidia{unit.index}" in driver.logs(handle.id), 10)
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        assert unit.uuid.split("-", 1)[1] in smi.stdout
    finally:
        driver.destroy(handle.id)
