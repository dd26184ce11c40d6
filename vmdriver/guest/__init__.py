"""The qemu backend's guest: a Debian kernel and an initramfs that runs the agent runtime.

``python -m vmdriver.guest.build --out DIR`` builds it into ``DIR/<recipe hash>/`` and points
``DIR/current`` at it. This module holds the names the builder and the driver agree on.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ENV_FW_CFG_NAME",
    "GATEWAY_GUEST_IP",
    "GUEST_IP",
    "GUEST_PORT",
    "INITRD",
    "KERNEL",
    "MANIFEST",
    "PROBE_INITRD",
    "PROBE_MARKER",
    "find_image",
]

KERNEL = "vmlinuz"
INITRD = "initrd.img"
PROBE_INITRD = "probe.img"
MANIFEST = "manifest.json"
# The fw_cfg item that carries the runtime's environment (a JSON object) into the guest.
ENV_FW_CFG_NAME = "opt/agent-console/env"
# Printed on the serial console by the probe image's init once it runs in userspace.
PROBE_MARKER = "AGENT-CONSOLE-PROBE-USERSPACE"
GUEST_IP = "10.0.2.15"
GUEST_PORT = 8080
# The address in the guest's network that QEMU forwards to the console's gateway.
GATEWAY_GUEST_IP = "10.0.2.100"


def find_image(guest_dir: Path) -> Path | None:
    """The folder with a complete built guest: ``guest_dir`` itself, or its ``current``."""
    for candidate in (guest_dir, guest_dir / "current"):
        if all((candidate / name).is_file() for name in (KERNEL, INITRD, MANIFEST)):
            return candidate.resolve()
    return None
