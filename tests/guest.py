"""The microVM guest image the qemu tests boot, built once into ``var/test-guest``.

Building takes about 10 s with a fast Debian mirror, and is cached until the recipe or the
runtime's sources change. Tests that need it skip, with the reason, where QEMU is not installed
or the image cannot be built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmdriver.guest.build import BuildError, build_guest

__all__ = ["QEMU", "TEST_GUEST", "guest_or_skip"]

TEST_GUEST = Path(__file__).resolve().parents[1] / "var" / "test-guest"
QEMU = "qemu-system-x86_64"


def guest_or_skip() -> Path:
    """The built test guest's folder; skips the calling test where it cannot be had."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (vmdriver/guest/host-packages.sh installs it)")
    try:
        build_guest(TEST_GUEST)
    except BuildError as exc:
        pytest.skip(f"the microVM guest image cannot be built here: {exc}")
    return TEST_GUEST
