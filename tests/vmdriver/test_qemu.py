"""The ``qemu`` backend: a real microVM booted from the guest image, chatting through the gateway.

The pure parts (command line, guest environment, gateway route, the initramfs writer, the
gateway relay, the recipe hash) run anywhere. The microVM test needs ``qemu-system-x86_64``
(``make install`` installs it with ``vmdriver/guest/host-packages.sh``) and a guest image,
which it builds once into ``var/test-guest`` (about 10 s with a fast Debian mirror; cached after,
and rebuilt when the recipe or the runtime's sources change). It skips, with the reason, where
either is missing. It uses neither Django nor the shared fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.anthropic import FakeAnthropic, ToolUse
from tests.guest import QEMU, guest_or_skip
from tests.polling import eventually
from tests.servers import answers
from vmdriver import (
    BackendUnavailable,
    PauseMethod,
    SandboxNotFound,
    VmSpec,
    VmState,
    make_driver,
)
from vmdriver.guest import GATEWAY_GUEST_IP, GUEST_PORT, find_image
from vmdriver.guest.build import DEFAULT_RUNTIME_SRC, recipe_hash
from vmdriver.guest.cpio import CharDevice, write_cpio
from vmdriver.guest.gatewayfwd import relay
from vmdriver.qemu import (
    MIN_MEMORY_MIB,
    GatewayRoute,
    QemuDriver,
    gateway_route,
    guest_env,
    qemu_argv,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _netdev_options(argv: list[str]) -> list[str]:
    """The options of ``-netdev``, split on single commas (QEMU escapes a comma by doubling)."""
    netdev = argv[argv.index("-netdev") + 1]
    return [part.replace(",,", ",") for part in re.split(r"(?<!,),(?!,)", netdev)]


def _argv(spec: VmSpec, tmp_path: Path, **overrides: object) -> list[str]:
    options: dict[str, object] = {
        "spec": spec,
        "accel": "tcg",
        "kernel": tmp_path / "vmlinuz",
        "initrd": tmp_path / "initrd.img",
        "env_file": tmp_path / "guest-env.json",
        "host_port": 40123,
        "route": gateway_route(spec.gateway),
        "qemu": "/usr/bin/qemu-system-x86_64",
        "relay": ("/usr/bin/python3", "-I", "/opt/vmdriver/guest/gatewayfwd.py"),
    }
    options.update(overrides)
    return qemu_argv(**options)  # type: ignore[arg-type]


# --- The gateway route and the guest's environment ---------------------------------------------


def test_gateway_route_takes_host_and_port_from_the_url() -> None:
    assert gateway_route("http://127.0.0.1:8000/gateway") == GatewayRoute("127.0.0.1", 8000)
    assert gateway_route("https://console.example/gateway") == GatewayRoute("console.example", 443)
    assert gateway_route("http://localhost/") == GatewayRoute("localhost", 80)
    assert gateway_route("") is None


@pytest.mark.parametrize("url", ["ftp://host/x", "127.0.0.1:8000", "http:///path"])
def test_gateway_route_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        gateway_route(url)


def test_guest_env_listens_on_the_forwarded_port_and_reaches_the_gateway_through_10_0_2_100() -> (
    None
):
    spec = VmSpec(
        name="a",
        gateway="http://127.0.0.1:8000/gateway",
        env={"AGENT_GATEWAY_URL": "http://127.0.0.1:8000/gateway", "AGENT_ID": "7"},
    )

    env = guest_env(spec, gateway_route(spec.gateway))

    assert env["SANDBOX_LISTEN"] == f"tcp:0.0.0.0:{GUEST_PORT}"
    assert env["SANDBOX_GATEWAY"] == f"tcp:{GATEWAY_GUEST_IP}:8000"
    # The URL keeps the console's name for the gateway (the Host its requests carry).
    assert env["AGENT_GATEWAY_URL"] == "http://127.0.0.1:8000/gateway"
    assert (env["AGENT_HOST"], env["AGENT_PORT"]) == ("0.0.0.0", str(GUEST_PORT))
    assert env["AGENT_ID"] == "7"
    assert env["AGENT_WORKSPACE"] == "/workspace"


def test_guest_env_keeps_any_text_through_its_json_encoding() -> None:
    prompt = 'Line one, with "quotes" and commas.\nLine two:\ttab; $HOME `x` \\ é ✓'
    spec = VmSpec(name="a", env={"AGENT_SYSTEM_PROMPT": prompt, "AGENT_GATEWAY_URL": "http://h/"})

    env = guest_env(spec, None)

    assert json.loads(json.dumps(env))["AGENT_SYSTEM_PROMPT"] == prompt


def test_guest_env_without_a_gateway_has_no_way_out() -> None:
    spec = VmSpec(name="a", env={"SANDBOX_GATEWAY": "tcp:1.2.3.4:80"})

    env = guest_env(spec, None)

    assert "SANDBOX_GATEWAY" not in env


def test_guest_env_points_at_the_gateway_when_the_spec_names_no_url() -> None:
    spec = VmSpec(name="a", gateway="http://127.0.0.1:9000/gw")

    env = guest_env(spec, gateway_route(spec.gateway))

    assert env["AGENT_GATEWAY_URL"] == "http://127.0.0.1:9000/gw"
    assert env["SANDBOX_GATEWAY"] == f"tcp:{GATEWAY_GUEST_IP}:9000"


# --- The QEMU command line ---------------------------------------------------------------------


def test_the_network_is_restricted_with_one_loopback_forward_in_and_one_gateway_forward_out(
    tmp_path: Path,
) -> None:
    spec = VmSpec(name="a", gateway="http://127.0.0.1:8000/gateway")

    options = _netdev_options(_argv(spec, tmp_path))

    assert options[0] == "user" and "restrict=on" in options
    assert [o for o in options if o.startswith("hostfwd=")] == [
        f"hostfwd=tcp:127.0.0.1:40123-:{GUEST_PORT}"
    ]
    assert [o for o in options if o.startswith("guestfwd=")] == [
        "guestfwd=tcp:10.0.2.100:8000-cmd:"
        "/usr/bin/python3 -I /opt/vmdriver/guest/gatewayfwd.py 127.0.0.1 8000"
    ]
    assert not [o for o in options if o.split("=")[0] in ("net", "dns", "smb", "tftp", "bootfile")]


def test_without_a_gateway_there_is_no_forward_out(tmp_path: Path) -> None:
    options = _netdev_options(_argv(VmSpec(name="a"), tmp_path))

    assert "restrict=on" in options
    assert not [o for o in options if o.startswith("guestfwd=")]


def test_resources_come_from_the_spec_with_a_floor_on_memory(tmp_path: Path) -> None:
    argv = _argv(VmSpec(name="a", vcpus=3, memory_mib=1024), tmp_path)
    small = _argv(VmSpec(name="a", memory_mib=64), tmp_path)

    assert argv[argv.index("-smp") + 1] == "3"
    assert argv[argv.index("-m") + 1] == "1024M"
    assert small[small.index("-m") + 1] == f"{MIN_MEMORY_MIB}M"
    assert argv[argv.index("-M") + 1] == "microvm"


@pytest.mark.parametrize(("accel", "cpu"), [("tcg", "max"), ("kvm", "host")])
def test_the_accelerator_is_chosen_explicitly(tmp_path: Path, accel: str, cpu: str) -> None:
    argv = _argv(VmSpec(name="a"), tmp_path, accel=accel)

    assert argv[argv.index("-accel") + 1] == accel
    assert argv[argv.index("-cpu") + 1] == cpu


def test_a_tcg_guest_is_told_its_tsc_rate_and_a_kvm_guest_is_not(tmp_path: Path) -> None:
    tcg = _argv(VmSpec(name="a"), tmp_path, tsc_khz=2599987)
    kvm = _argv(VmSpec(name="a"), tmp_path, accel="kvm", tsc_khz=2599987)
    unknown = _argv(VmSpec(name="a"), tmp_path)

    assert tcg[tcg.index("-append") + 1].split()[-1] == "tsc_early_khz=2599987"
    assert "tsc_early_khz" not in kvm[kvm.index("-append") + 1]
    assert "tsc_early_khz" not in unknown[unknown.index("-append") + 1]


def test_an_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accel"):
        _argv(VmSpec(name="a"), tmp_path, accel="hvf")


def test_the_environment_file_is_passed_by_fw_cfg_with_commas_escaped(tmp_path: Path) -> None:
    argv = _argv(VmSpec(name="a"), tmp_path, env_file=Path("/state/odd,name/guest-env.json"))

    assert argv[argv.index("-fw_cfg") + 1] == (
        "name=opt/agent-console/env,file=/state/odd,,name/guest-env.json"
    )


# --- The guest's pieces ------------------------------------------------------------------------


def _read_cpio(data: bytes) -> dict[str, tuple[int, int, bytes]]:
    """name -> (mode, uid, data) of a newc archive."""
    entries, offset = {}, 0
    while True:
        header = data[offset : offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        name_size, file_size = fields[11], fields[6]
        name_at = offset + 110
        name = data[name_at : name_at + name_size - 1].decode()
        data_at = name_at + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], fields[2], data[data_at : data_at + file_size])
        offset = data_at + file_size + (-file_size % 4)


def test_the_initramfs_writer_keeps_files_links_owners_and_device_nodes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF...")
    (tmp_path / "bin" / "sh").symlink_to("busybox")
    (tmp_path / "workspace").mkdir()
    (tmp_path / "dev").mkdir()
    out = io.BytesIO()

    write_cpio(
        out, tmp_path, devices=[CharDevice("dev/console", 5, 1)], owners={"workspace": (1000, 1000)}
    )

    entries = _read_cpio(out.getvalue())
    assert entries["bin/busybox"][2] == b"\x7fELF..."
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][2] == b"busybox"
    assert stat.S_ISDIR(entries["workspace"][0]) and entries["workspace"][1] == 1000
    assert stat.S_ISCHR(entries["dev/console"][0]) and entries["bin/busybox"][1] == 0
    assert len(out.getvalue()) % 4 == 0


def test_the_recipe_hash_follows_the_runtime_sources(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    shutil.copytree(DEFAULT_RUNTIME_SRC, runtime, ignore=shutil.ignore_patterns("__pycache__"))
    before = recipe_hash(runtime)

    assert recipe_hash(runtime) == before
    (runtime / "server.py").write_text((runtime / "server.py").read_text() + "\n# changed\n")
    assert recipe_hash(runtime) != before


def test_a_folder_without_a_built_guest_is_refused(tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")
    driver = QemuDriver(state_dir=tmp_path / "state", guest_dir=tmp_path / "guest")
    handle = driver.create(VmSpec(name="a"))

    assert find_image(tmp_path / "guest") is None
    with pytest.raises(BackendUnavailable, match=r"vmdriver\.guest\.build"):
        driver.start(handle)


def test_make_driver_builds_the_qemu_driver_with_a_default_guest_folder(tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        with pytest.raises(BackendUnavailable, match="qemu"):
            make_driver("qemu", state_dir=tmp_path / "sandboxes")
        return

    driver = make_driver("qemu", state_dir=tmp_path / "sandboxes")

    assert isinstance(driver, QemuDriver) and driver.backend == "qemu"
    assert driver.guest_dir == tmp_path / "guest"


def test_the_gateway_relay_carries_both_ways_and_ends_with_the_guest() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(1024))
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\npong")
            conn.recv(1024)  # until the relay closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    guest, relay_end = socket.socketpair()
    upstream = socket.create_connection(server.getsockname())
    worker = threading.Thread(target=relay, args=(relay_end, upstream), daemon=True)
    worker.start()

    guest.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert guest.recv(1024) == b"HTTP/1.1 200 OK\r\n\r\npong"
    guest.close()
    worker.join(timeout=5)
    upstream.close()  # as gatewayfwd.main does once relay returns
    relay_end.close()
    thread.join(timeout=5)

    assert not worker.is_alive() and not thread.is_alive()
    assert received == [b"GET / HTTP/1.1\r\n\r\n"]
    server.close()


# --- A real microVM ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    return guest_or_skip()


@pytest.fixture
def outside_listener() -> Iterator[tuple[int, list[object]]]:
    """A host port the guest must not reach; yields it and the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept()[1])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    done.set()
    thread.join(timeout=2)
    server.close()


def _wait_healthy(driver: QemuDriver, sandbox_id: str, endpoint: str, timeout: float) -> None:
    def healthy() -> bool:
        if answers(f"{endpoint}/health"):
            return True
        assert driver.status(sandbox_id).state == VmState.RUNNING, driver.logs(sandbox_id)
        return False

    eventually(
        healthy,
        timeout,
        every=0.05,
        failing=lambda: f"no /health from the guest:\n{driver.logs(sandbox_id)}",
    )


def _egress_probe(outside_port: int, gateway_port: int) -> str:
    """A shell command for the guest: tries its ways out and says which are open."""
    targets = (
        f"10.0.2.2:{outside_port} 10.0.2.2:{gateway_port} 10.0.2.3:53 10.0.2.100:22 1.1.1.1:80"
    )
    return (
        f"for t in {targets}; do "
        'if nc -w 2 "${t%:*}" "${t#*:}" </dev/null >/dev/null 2>&1; '
        'then echo "$t open"; else echo "$t blocked"; fi; done; '
        f"nc -w 2 {GATEWAY_GUEST_IP} {gateway_port} </dev/null >/dev/null 2>&1 "
        "&& echo 'gateway open'; "
        "wget -q -T 2 -O /dev/null http://deb.debian.org/ 2>/dev/null && echo 'web open'; "
        "id -u"
    )


def _process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


@pytest.mark.timeout(600)  # the first run builds the guest image
def test_a_microvm_boots_chats_through_its_gateway_only_and_is_destroyed(
    guest_dir: Path, tmp_path: Path, outside_listener: tuple[int, list[object]]
) -> None:
    outside_port, accepted = outside_listener
    token = f"gw-{secrets.token_hex(8)}"
    prompt = 'You answer briefly.\nQuote "this", that, and $HOME as they are.'
    with FakeAnthropic(required_api_key=token) as fake:
        driver = QemuDriver(state_dir=tmp_path / "sandboxes", guest_dir=guest_dir)
        spec = VmSpec(
            name="vm-1",
            vcpus=1,
            memory_mib=512,
            gateway=fake.base_url,
            env={
                "AGENT_ID": "vm-1",
                "AGENT_GATEWAY_URL": fake.base_url,
                "AGENT_GATEWAY_TOKEN": token,
                "AGENT_SYSTEM_PROMPT": prompt,
            },
        )
        handle = driver.start(driver.create(spec))
        try:
            booted_at = time.monotonic()
            assert handle.backend == "qemu" and handle.accel in ("kvm", "tcg")
            assert handle.endpoint.startswith("http://127.0.0.1:")
            assert driver.start(handle) == handle  # idempotent while it runs
            _wait_healthy(driver, "vm-1", handle.endpoint, timeout=60)
            boot_seconds = time.monotonic() - booted_at

            reply = httpx.post(
                f"{handle.endpoint}/v1/agent/chat", json={"prompt": "hello"}, timeout=60
            )

            assert reply.status_code == 200, reply.text
            assert reply.json()["content"] == "Echo: hello"
            sent = fake.requests[-1]
            # The system prompt, as the runtime sends it: one block, marked for the cache.
            marked = [{"type": "text", "text": prompt, "cache_control": {"type": "ephemeral"}}]
            assert sent.api_key == token and sent.body["system"] == marked

            # The agent itself, from inside, tries every way out it can think of.
            fake.enqueue(
                ToolUse(
                    name="run_command",
                    input={"command": _egress_probe(outside_port, fake.port)},
                )
            )
            probe = httpx.post(
                f"{handle.endpoint}/v1/agent/chat", json={"prompt": "look out"}, timeout=60
            )

            assert probe.status_code == 200, probe.text
            report = probe.json()["content"]
            assert "gateway open" in report, report
            assert " open" not in report.replace("gateway open", ""), report
            for target in (f"10.0.2.2:{outside_port}", f"10.0.2.2:{fake.port}", "1.1.1.1:80"):
                assert f"{target} blocked" in report
            assert report.rstrip().endswith("1000"), "the runtime should not run as root"
            assert accepted == []

            cmdline = Path(f"/proc/{handle.pid}/cmdline").read_bytes().split(b"\0")[:-1]
            options = _netdev_options([part.decode() for part in cmdline])
            assert "restrict=on" in options
            forwards = [o for o in options if "fwd=" in o]
            assert len(forwards) == 2
            assert forwards[0] == f"hostfwd=tcp:{handle.endpoint[7:]}-:{GUEST_PORT}"
            assert forwards[1].startswith(f"guestfwd=tcp:10.0.2.100:{fake.port}-cmd:")
            assert forwards[1].endswith(f"gatewayfwd.py 127.0.0.1 {fake.port}")
            assert driver.status("vm-1").state == VmState.RUNNING
            print(f"accel={handle.accel} boot-to-health={boot_seconds:.1f}s")
        finally:
            driver.destroy("vm-1")

    assert _process_gone(handle.pid)
    assert _group_members(handle.pid) == []  # no gateway relay outlives its VM
    with pytest.raises(SandboxNotFound):
        driver.status("vm-1")
    driver.destroy("vm-1")  # destroying again is not an error


@pytest.mark.timeout(600)
def test_a_stopped_microvm_is_exited_and_starts_again(guest_dir: Path, tmp_path: Path) -> None:
    driver = QemuDriver(state_dir=tmp_path / "sandboxes", guest_dir=guest_dir)
    handle = driver.create(VmSpec(name="vm-2", env={"AGENT_GATEWAY_URL": "http://127.0.0.1:9/"}))
    assert driver.status("vm-2").state == VmState.CREATED
    try:
        first = driver.start(handle)
        assert first.pid is not None
        driver.stop("vm-2")
        driver.stop("vm-2")

        assert driver.status("vm-2").state == VmState.EXITED
        assert _process_gone(first.pid)
        second = driver.start(handle)
        assert second.pid != first.pid and driver.status("vm-2").state == VmState.RUNNING
        assert [s.id for s in driver.list()] == ["vm-2"]
        assert os.stat(tmp_path / "sandboxes" / "vm-2" / "guest-env.json").st_mode & 0o077 == 0
    finally:
        driver.destroy("vm-2")


def test_the_command_line_opens_qmp_and_restores_a_saved_state(tmp_path: Path) -> None:
    spec = VmSpec(name="vm-q")
    argv = _argv(spec, tmp_path, qmp=tmp_path / "q.sock", incoming=tmp_path / "my state")
    assert argv[argv.index("-qmp") + 1] == f"unix:{tmp_path / 'q.sock'},server=on,wait=off"
    assert argv[argv.index("-incoming") + 1] == f"exec:cat '{tmp_path / 'my state'}'"
    assert "-qmp" not in _argv(spec, tmp_path) and "-incoming" not in _argv(spec, tmp_path)


def _guest_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.timeout(600)
def test_a_microvm_pauses_in_memory_and_to_disk_and_resumes_with_its_session(
    guest_dir: Path, tmp_path: Path
) -> None:
    with FakeAnthropic() as fake:
        driver = QemuDriver(state_dir=tmp_path / "sandboxes", guest_dir=guest_dir)
        spec = VmSpec(
            name="vm-p",
            memory_mib=256,
            gateway=fake.base_url,
            env={"AGENT_ID": "vm-p", "AGENT_GATEWAY_URL": fake.base_url},
        )
        handle = driver.start(driver.create(spec))
        try:
            _wait_healthy(driver, "vm-p", handle.endpoint, timeout=120)
            first = httpx.post(
                f"{handle.endpoint}/v1/agent/chat",
                json={"prompt": "remember me", "session_id": "s-1"},
                timeout=60,
            )
            assert first.status_code == 200, first.text

            assert driver.pause("vm-p") is PauseMethod.VM_STOP
            assert driver.status("vm-p").state is VmState.PAUSED
            assert not answers(f"{handle.endpoint}/health")
            assert handle.pid is not None
            still = _guest_cpu_ticks(handle.pid)
            time.sleep(1)
            assert _guest_cpu_ticks(handle.pid) - still <= 10  # its vCPUs halted
            resumed = driver.resume("vm-p")
            assert resumed.endpoint == handle.endpoint
            _wait_healthy(driver, "vm-p", handle.endpoint, timeout=30)

            assert driver.pause("vm-p", to_disk=True) is PauseMethod.SNAPSHOT
            status = driver.status("vm-p")
            assert status.state is VmState.PAUSED and status.pid is None
            assert _process_gone(handle.pid)  # its memory freed
            assert (tmp_path / "sandboxes" / "vm-p" / "snapshot").stat().st_size > 0

            restored = driver.resume("vm-p")
            assert restored.pid != handle.pid
            _wait_healthy(driver, "vm-p", restored.endpoint, timeout=60)
            again = httpx.post(
                f"{restored.endpoint}/v1/agent/chat",
                json={"prompt": "still there?", "session_id": "s-1"},
                timeout=60,
            )
            assert again.status_code == 200, again.text
            # The runtime's in-memory session came through: the model saw the first turn.
            sent = fake.requests[-1].body["messages"]
            assert [m["role"] for m in sent] == ["user", "assistant", "user"]
            assert not (tmp_path / "sandboxes" / "vm-p" / "snapshot").exists()
        finally:
            driver.destroy("vm-p")
