"""The ``qemu`` backend: each sandbox is a microVM (QEMU ``-M microvm``) running the agent runtime.

The guest (Debian's cloud kernel and an initramfs with Python and the runtime) is built by
``python -m vmdriver.guest.build --out GUEST_DIR``. Each VM gets QEMU's user network with
``restrict=on``: the console reaches the runtime through a forwarded loopback port, and the one
way out of the guest is a forward from 10.0.2.100 to the console's gateway (``spec.gateway``),
each connection carried by ``vmdriver/guest/gatewayfwd.py``. No route, no DNS, nothing else.

The runtime's environment travels as a JSON object in a fw_cfg item, so values may hold any text.
Acceleration is KVM where ``/dev/kvm`` really runs a guest (probed once per host by booting a
tiny guest, see ``detect_accel``), TCG otherwise. State lives on disk under ``state_dir/<id>/``
as for the ``process`` backend: spec, pid, endpoint, accel, log (the serial console).

Each QEMU opens a QMP socket, by which the driver pauses the guest (``stop``, its memory kept)
and resumes it (``cont``). A pause ``to_disk`` saves the guest's whole state to the sandbox's
``snapshot`` file (an outgoing migration) and ends QEMU, freeing its memory; resuming starts
QEMU again with that file as its incoming migration, on a new forwarded port.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vmdriver.errors import BackendUnavailable, SandboxNotRunning, VmPauseError, VmStartError
from vmdriver.guest import (
    ENV_FW_CFG_NAME,
    GATEWAY_GUEST_IP,
    GUEST_PORT,
    INITRD,
    KERNEL,
    MANIFEST,
    PROBE_INITRD,
    PROBE_MARKER,
    find_image,
)
from vmdriver.qmp import qmp_call
from vmdriver.state import (
    PAUSED_FILE,
    SandboxFolders,
    free_port,
    proc_start_time,
    write_private,
)
from vmdriver.types import PauseMethod, VmHandle, VmSpec

__all__ = [
    "ACCELS",
    "GatewayRoute",
    "QemuDriver",
    "detect_accel",
    "gateway_route",
    "guest_env",
    "qemu_argv",
    "tcg_tsc_khz",
]

QEMU = "qemu-system-x86_64"
ACCELS = ("kvm", "tcg")
MIN_MEMORY_MIB = 256
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"
GUEST_WORKSPACE = "/workspace"
_GUEST_BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": GUEST_WORKSPACE, "LANG": "C.UTF-8"}
_RELAY = Path(__file__).resolve().parent / "guest" / "gatewayfwd.py"
_HOST_FACTS = "host.json"
_TSC_ATTEMPTS = 3
_TSC_DETECTED = re.compile(rb"tsc: Detected ([0-9]+\.[0-9]+) MHz processor")
_TSC_FAILED = b"Marking TSC unstable"
_LISTEN_WAIT = 5.0
_START_ATTEMPTS = 3
_SNAPSHOT = "snapshot"
_MIGRATE_WAIT = 300.0


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """Where the guest's one way out leads: the gateway's host address and its port, which
    the guest reaches as ``10.0.2.100:<port>``."""

    host: str
    port: int

    @property
    def guest_address(self) -> str:
        return f"{GATEWAY_GUEST_IP}:{self.port}"


def gateway_route(url: str) -> GatewayRoute | None:
    """The route to the gateway at ``url`` (``http://host:port/path``), or None without one."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the gateway must be an http(s) URL, not {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return GatewayRoute(host=parts.hostname, port=port)


def guest_env(spec: VmSpec, route: GatewayRoute | None) -> dict[str, str]:
    """The agent runtime's environment inside the guest: the spec's, plus where to listen and
    how to reach the gateway (``SANDBOX_*``, and the older ``AGENT_HOST``/``AGENT_PORT``). The
    gateway's URL stays as the console gave it: the runtime sends its requests, named for that
    host, to ``SANDBOX_GATEWAY``, the guest's address of the gateway. The tools act in the
    guest's ``/workspace``, whatever host path the spec named. The spec's secrets join the
    environment here: the guest is the sandbox, and they travel by fw_cfg, not the command
    line."""
    env = _GUEST_BASE_ENV | dict(spec.env) | dict(spec.secrets)
    env |= {
        "SANDBOX_LISTEN": f"tcp:0.0.0.0:{GUEST_PORT}",
        "AGENT_HOST": "0.0.0.0",
        "AGENT_PORT": str(GUEST_PORT),
        "AGENT_WORKSPACE": GUEST_WORKSPACE,
    }
    if route is None:
        env.pop("SANDBOX_GATEWAY", None)
        return env
    env["SANDBOX_GATEWAY"] = f"tcp:{route.guest_address}"
    env.setdefault("AGENT_GATEWAY_URL", spec.gateway)
    return env


def _opt(value: str) -> str:
    """A value inside a QEMU ``-opt key=value,...`` list: commas are doubled."""
    return value.replace(",", ",,")


def _accel_args(accel: str) -> list[str]:
    if accel not in ACCELS:
        raise ValueError(f"accel must be one of {ACCELS}, not {accel!r}")
    return ["-accel", accel, "-cpu", "host" if accel == "kvm" else "max"]


def _machine_args(
    kernel: Path,
    initrd: Path,
    memory_mib: int,
    vcpus: int,
    cmdline: str = KERNEL_CMDLINE,
    *,
    pcie: bool = False,
) -> list[str]:
    # No default devices, no display; the serial console is QEMU's stdout (the sandbox's log).
    # A PCIe bus only for a guest given a GPU: VFIO passes a PCI device.
    fixed = "-nodefaults -no-user-config -display none -serial stdio -no-reboot"
    return [
        *("-M", "microvm,pcie=on" if pcie else "microvm"),
        *fixed.split(),
        *("-smp", str(vcpus), "-m", f"{memory_mib}M"),
        *("-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline),
    ]


def qemu_argv(
    *,
    spec: VmSpec,
    accel: str,
    kernel: Path,
    initrd: Path,
    env_file: Path,
    host_port: int,
    route: GatewayRoute | None,
    qemu: str = QEMU,
    relay: Sequence[str] = (sys.executable, "-I", str(_RELAY)),
    tsc_khz: int | None = None,
    qmp: Path | None = None,
    incoming: Path | None = None,
) -> list[str]:
    """The QEMU command line that boots ``spec`` as a microVM.

    Its network is QEMU's user mode with ``restrict=on`` (the guest cannot reach the host or
    beyond), one ``hostfwd`` from ``127.0.0.1:<host_port>`` to the runtime, and, with a gateway,
    one ``guestfwd`` from ``10.0.2.100:<port>`` to a relay that connects to the gateway.
    ``tsc_khz`` spares a TCG guest its fragile TSC calibration (see ``tcg_tsc_khz``). ``qmp``
    is where QEMU opens its QMP socket; ``incoming`` a saved state it restores instead of
    booting.
    """
    cmdline = KERNEL_CMDLINE
    if tsc_khz is not None and accel == "tcg":
        cmdline += f" tsc_early_khz={tsc_khz}"
    netdev = [
        "user",
        "id=net0",
        "restrict=on",
        f"hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}",
    ]
    if route is not None:
        command = shlex.join([*relay, route.host, str(route.port)])
        netdev.append(_opt(f"guestfwd=tcp:{route.guest_address}-cmd:{command}"))
    return [
        qemu,
        "-name",
        _opt(f"sandbox-{spec.name}"),
        *_accel_args(accel),
        *_machine_args(
            kernel,
            initrd,
            max(spec.memory_mib, MIN_MEMORY_MIB),
            spec.vcpus,
            cmdline,
            pcie=bool(spec.gpus),
        ),
        "-netdev",
        ",".join(netdev),
        "-device",
        "virtio-net-device,netdev=net0",
        "-device",
        "virtio-rng-device",
        # Each GPU given whole, at its PCI address: the host has bound it to vfio-pci.
        *(arg for unit in spec.gpus for arg in ("-device", f"vfio-pci,host={unit.pci_address}")),
        "-fw_cfg",
        f"name={ENV_FW_CFG_NAME},file={_opt(str(env_file))}",
        # QEMU's own seccomp filter. Spawning and set*id stay allowed: the gateway relay is
        # spawned (glib's spawn needs the set*id calls that elevateprivileges=deny stops), and
        # so are a saved state's reader and writer.
        "-sandbox",
        "on,obsolete=deny,resourcecontrol=deny",
        *(("-qmp", f"unix:{_opt(str(qmp))},server=on,wait=off") if qmp else ()),
        *(("-incoming", "exec:" + shlex.join(["cat", str(incoming)])) if incoming else ()),
    ]


def _image(guest_dir: Path) -> Path:
    image = find_image(guest_dir)
    if image is None:
        raise BackendUnavailable(
            f"no microVM guest image in {guest_dir}: build it with "
            f"`python -m vmdriver.guest.build --out {guest_dir}`"
        )
    return image


def _qemu_binary(qemu: str) -> str:
    found = shutil.which(qemu)
    if found is None:
        raise BackendUnavailable(
            f"{qemu} is not installed: it is Debian's qemu-system-x86 "
            "(vmdriver/guest/host-packages.sh installs it)"
        )
    return found


def _serial_until(argv: list[str], timeout: float, done: Callable[[bytes], bool]) -> bytes:
    """Run a probe guest and return its serial output once ``done(output)``, it ends, or
    ``timeout`` passes; the guest is killed either way."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as exc:
        return f"{exc}".encode()
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen = (seen + chunk)[-65536:]
            if done(seen):
                break
        return seen
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


class _HostFacts:
    """What probing found about this host, kept in ``guest_dir/host.json`` and keyed by the
    host's kernel, QEMU and the guest's kernel, so that a change of any of them probes again."""

    def __init__(self, guest_dir: Path, qemu: str) -> None:
        self.image = _image(guest_dir)
        self.qemu = _qemu_binary(qemu)
        manifest = json.loads((self.image / MANIFEST).read_text())
        self.key = {
            "host_kernel": os.uname().release,
            "qemu": f"{self.qemu}@{int(os.stat(self.qemu).st_mtime)}",
            "guest_kernel": str(manifest.get("kernel_release", "")),
        }
        self.path = guest_dir / _HOST_FACTS
        self.facts: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(self.path.read_text())
            if isinstance(stored, dict) and stored.get("key") == self.key:
                self.facts = stored

    def probe_argv(self, accel: str, *, quiet: bool) -> list[str]:
        cmdline = KERNEL_CMDLINE if quiet else KERNEL_CMDLINE.replace(" quiet", "")
        probe = self.image / PROBE_INITRD
        return [
            self.qemu,
            *_accel_args(accel),
            *_machine_args(self.image / KERNEL, probe, 128, 1, cmdline),
        ]

    def save(self, **facts: object) -> None:
        self.facts |= facts | {"key": self.key}
        tmp = self.path.with_name(f".{_HOST_FACTS}.{os.getpid()}")
        tmp.write_text(json.dumps(self.facts, indent=2) + "\n")
        tmp.replace(self.path)


def detect_accel(timeout: float = 10, *, guest_dir: Path, qemu: str = QEMU) -> str:
    """Whether KVM really runs a guest here ("kvm") or not ("tcg"), probed once per host.

    ``/dev/kvm`` is not enough: under nested virtualization a guest may hang early in boot. So
    this boots the probe image of ``guest_dir`` with KVM and waits up to ``timeout`` seconds
    for its init to print a marker. The answer is kept in ``guest_dir/host.json``.
    """
    host = _HostFacts(Path(guest_dir), qemu)
    if host.facts.get("accel") in ACCELS:
        return str(host.facts["accel"])
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        accel, reason = "tcg", "/dev/kvm is missing or not accessible"
    else:
        started = time.monotonic()
        marker = PROBE_MARKER.encode()
        output = _serial_until(
            host.probe_argv("kvm", quiet=True), timeout, lambda out: marker in out
        )
        if marker in output:
            took = time.monotonic() - started
            accel, reason = "kvm", f"a KVM guest reached userspace in {took:.1f} s"
        else:
            accel, reason = "tcg", f"a KVM guest did not reach userspace within {timeout:g} s"
    host.save(accel=accel, accel_reason=reason)
    return accel


def _cpuinfo_tsc_khz() -> int | None:
    """The host's TSC rate as /proc/cpuinfo gives it, when it says that rate is constant."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if flags is None or mhz is None or "tsc_known_freq" not in flags.group(1).split():
        return None
    return round(float(mhz.group(1)) * 1000)


def tcg_tsc_khz(timeout: float = 10, *, guest_dir: Path, qemu: str = QEMU) -> int | None:
    """The TSC rate (kHz) a TCG guest sees here, to pass as ``tsc_early_khz``; probed once.

    A TCG guest reads the host's TSC, and its kernel calibrates that against the emulated PIT,
    a timing loop that fails when the host is busy: the kernel then marks the TSC unstable and
    the boot hangs. So the rate is measured once, by booting the probe kernel until it prints
    what it detected (retrying while the host is busy), and every guest is told it.
    """
    host = _HostFacts(Path(guest_dir), qemu)
    if "tsc_khz" in host.facts:
        known = host.facts["tsc_khz"]
        return known if isinstance(known, int) else None
    khz: int | None = None
    source = "none: the guest kernel calibrates at each boot"
    for _attempt in range(_TSC_ATTEMPTS):
        output = _serial_until(
            host.probe_argv("tcg", quiet=False),
            timeout,
            lambda out: _TSC_DETECTED.search(out) is not None or _TSC_FAILED in out,
        )
        if found := _TSC_DETECTED.search(output):
            khz = round(float(found.group(1)) * 1000)
            source = "the probe guest's calibration"
            break
    else:
        if (khz := _cpuinfo_tsc_khz()) is not None:
            source = "/proc/cpuinfo (the probe guest could not calibrate)"
    host.save(tsc_khz=khz, tsc_source=source)
    return khz


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (read from the kernel, no connecting)."""
    wanted = f"0100007F:{port:04X}"
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in table)


class QemuDriver(SandboxFolders):
    """Runs each sandbox as a QEMU microVM booted from the guest image in ``guest_dir``.

    ``accel`` is "kvm", "tcg", or "auto" (the default): KVM when ``detect_accel`` finds it runs
    a guest, else TCG. The handle ``start`` returns says which (``VmHandle.accel``).
    """

    backend = "qemu"

    def __init__(
        self, *, state_dir: Path, guest_dir: Path, accel: str = "auto", qemu: str = QEMU
    ) -> None:
        if accel != "auto" and accel not in ACCELS:
            raise ValueError(f"accel must be 'auto', 'kvm' or 'tcg', not {accel!r}")
        self.qemu = _qemu_binary(qemu)
        super().__init__(state_dir=state_dir)
        self.guest_dir = Path(guest_dir)
        self.accel = accel
        self._probed: tuple[str, int | None] | None = None
        # Socket paths are limited to 108 bytes: the QMP sockets live under a short folder.
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        self.socket_root = Path(tempfile.gettempdir()) / f"agent-console-qmp-{digest}"

    def _qmp(self, sandbox_id: str) -> Path:
        return self.socket_root / f"{sandbox_id}.sock"

    def _boot_options(self) -> tuple[str, int | None]:
        """The accelerator, and for TCG the TSC rate to tell the guest; probed once per host."""
        if self._probed is None:
            accel = self.accel
            if accel == "auto":
                accel = detect_accel(guest_dir=self.guest_dir, qemu=self.qemu)
            tsc_khz = None
            if accel == "tcg":
                tsc_khz = tcg_tsc_khz(guest_dir=self.guest_dir, qemu=self.qemu)
            self._probed = (accel, tsc_khz)
        return self._probed

    def accel_in_use(self) -> str:
        """The accelerator this driver's guests boot with: "kvm" or "tcg"."""
        return self._boot_options()[0]

    def create(self, spec: VmSpec) -> VmHandle:
        gateway_route(spec.gateway)
        if sliced := [unit.uuid for unit in spec.gpus if unit.profile or not unit.pci_address]:
            raise ValueError(
                f"a microVM takes whole GPUs by their PCI address (VFIO), not {sliced}: "
                "a MIG slice cannot be passed through"
            )
        path = self._dir(spec.name)
        path.mkdir(parents=True, exist_ok=True)
        self._write_spec(path, spec)
        return VmHandle(id=spec.name, backend=self.backend)

    def _running_handle(self, sandbox_id: str, path: Path, pid: int) -> VmHandle:
        endpoint = (path / "endpoint").read_text()
        accel = (path / "accel").read_text() if (path / "accel").exists() else ""
        return VmHandle(sandbox_id, self.backend, endpoint, pid, accel)

    def _launch(self, path: Path, argv: list[str], port: int) -> subprocess.Popen[bytes] | None:
        """Start QEMU; the process once its forwarded port listens, None if it lost the port."""
        with (path / "log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=path,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise VmStartError(f"QEMU could not be started: {exc}") from exc
        deadline = time.monotonic() + _LISTEN_WAIT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.logs(path.name, lines=5)
                if "host forwarding" in tail:
                    return None
                raise VmStartError(f"QEMU exited at once ({proc.returncode})", log_tail=tail)
            if _listening(port):
                return proc
            time.sleep(0.01)
        return proc

    def start(self, handle: VmHandle) -> VmHandle:
        path = self._existing_dir(handle.id)
        if (pid := self._live_pid(path)) is not None:
            return self._running_handle(handle.id, path, pid)
        return self._boot(path)

    def _boot(self, path: Path, *, incoming: Path | None = None) -> VmHandle:
        """Start QEMU for the sandbox at ``path``: booting its guest, or restoring ``incoming``."""
        spec = self._spec(path)
        image = _image(self.guest_dir)
        accel, tsc_khz = self._boot_options()
        route = gateway_route(spec.gateway)
        env_file = path / "guest-env.json"
        write_private(env_file, json.dumps(guest_env(spec, route)))
        qmp = self._qmp(path.name)
        self.socket_root.mkdir(mode=0o700, exist_ok=True)
        qmp.unlink(missing_ok=True)
        for _ in range(_START_ATTEMPTS):
            port = free_port()
            argv = qemu_argv(
                spec=spec,
                accel=accel,
                kernel=image / KERNEL,
                initrd=image / INITRD,
                env_file=env_file,
                host_port=port,
                route=route,
                qemu=self.qemu,
                tsc_khz=tsc_khz,
                qmp=qmp,
                incoming=incoming,
            )
            proc = self._launch(path, argv, port)
            if proc is not None:
                break
        else:
            raise VmStartError("QEMU could not bind a loopback port", log_tail=self.logs(path.name))
        started = proc_start_time(proc.pid)
        if started is None:
            raise VmStartError("QEMU exited at once", log_tail=self.logs(path.name))
        endpoint = f"http://127.0.0.1:{port}"
        (path / "endpoint").write_text(endpoint)
        (path / "accel").write_text(accel)
        (path / "argv.json").write_text(json.dumps(argv))
        (path / "pid").write_text(f"{proc.pid} {started}")
        return VmHandle(path.name, self.backend, endpoint, proc.pid, accel)

    def _wait_qmp(self, path: Path, timeout: float = _LISTEN_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not self._qmp(path.name).exists():
            if time.monotonic() > deadline or self._live_pid(path) is None:
                raise VmPauseError("QEMU did not open its QMP socket")
            time.sleep(0.01)

    def pause(self, sandbox_id: str, *, to_disk: bool = False) -> PauseMethod:
        """Halt the guest's vCPUs, its memory kept; with ``to_disk`` save its state to disk
        and end QEMU, freeing its memory."""
        path = self._existing_dir(sandbox_id)
        method = self._paused_method(path)
        if method is PauseMethod.SNAPSHOT:
            return method
        if self._live_pid(path) is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
        qmp = self._qmp(sandbox_id)
        self._wait_qmp(path)
        if method is None:
            qmp_call(qmp, "stop")
            self._record_paused(path, PauseMethod.VM_STOP)
        if not to_disk:
            return PauseMethod.VM_STOP
        saving = path / f".{_SNAPSHOT}.tmp"
        qmp_call(qmp, "migrate", {"uri": "exec:cat > " + shlex.quote(str(saving))})
        deadline = time.monotonic() + _MIGRATE_WAIT
        while (state := qmp_call(qmp, "query-migrate").get("status")) != "completed":
            if state in ("failed", "cancelled") or time.monotonic() > deadline:
                saving.unlink(missing_ok=True)
                raise VmPauseError(f"QEMU could not save the guest's state ({state})")
            time.sleep(0.05)
        saving.replace(path / _SNAPSHOT)
        self._record_paused(path, PauseMethod.SNAPSHOT)
        with contextlib.suppress(VmPauseError):  # it may close the socket before answering
            qmp_call(qmp, "quit")
        self._end(path)  # if quit did not
        self._note(path, "paused to disk: QEMU ended, its guest's state saved")
        return PauseMethod.SNAPSHOT

    def resume(self, sandbox_id: str) -> VmHandle:
        """Continue a paused guest: its vCPUs again, or QEMU restored from its saved state (on
        a new forwarded port: the handle says where)."""
        path = self._existing_dir(sandbox_id)
        method = self._paused_method(path)
        pid = self._live_pid(path)
        if method is not PauseMethod.SNAPSHOT:
            if pid is None:
                raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
            if method is not None:
                qmp_call(self._qmp(sandbox_id), "cont")
                (path / PAUSED_FILE).unlink(missing_ok=True)
            return self._running_handle(sandbox_id, path, pid)
        handle = self._boot(path, incoming=path / _SNAPSHOT)
        qmp = self._qmp(sandbox_id)
        self._wait_qmp(path)
        deadline = time.monotonic() + _MIGRATE_WAIT
        while (state := qmp_call(qmp, "query-status").get("status")) == "inmigrate":
            if time.monotonic() > deadline or self._live_pid(path) is None:
                self._end(path)
                raise VmPauseError("QEMU could not restore the guest's saved state")
            time.sleep(0.05)
        if state != "running":
            qmp_call(qmp, "cont")
        (path / _SNAPSHOT).unlink(missing_ok=True)
        (path / PAUSED_FILE).unlink(missing_ok=True)
        self._note(path, "resumed from disk")
        return handle

    def _unpause_for_stop(self, path: Path) -> None:
        (path / _SNAPSHOT).unlink(missing_ok=True)
        super()._unpause_for_stop(path)

    def _forget(self, sandbox_id: str) -> None:
        self._qmp(sandbox_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: other sandboxes still live
            self.socket_root.rmdir()
