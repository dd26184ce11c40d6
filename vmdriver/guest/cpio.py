"""Writes initramfs archives: the kernel's "newc" cpio format, built without root or cpio(1).

Files are owned by root unless ``owners`` says otherwise, device nodes are plain entries (no
mknod needed), and entries come in sorted order with fixed inode numbers, so the same tree
gives the same bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

__all__ = ["CharDevice", "write_cpio"]

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class CharDevice:
    """A character device node to add to the archive (such as ``dev/console``)."""

    def __init__(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.path = path
        self.major = major
        self.minor = minor
        self.mode = mode


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _entry(
    out: BinaryIO,
    *,
    ino: int,
    name: str,
    mode: int,
    mtime: int,
    data: bytes = b"",
    nlink: int = 1,
    rdev: tuple[int, int] = (0, 0),
    owner: tuple[int, int] = (0, 0),
) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, *owner, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    out.write(header + encoded + _pad(len(header) + len(encoded)))
    out.write(data + _pad(len(data)))


def write_cpio(
    out: BinaryIO,
    root: Path,
    *,
    devices: Iterable[CharDevice] = (),
    owners: Mapping[str, tuple[int, int]] = {},
) -> None:
    """Archive the tree under ``root`` (paths relative to it) and ``devices`` into ``out``;
    ``owners`` maps relative paths to the (uid, gid) that owns them."""
    ino = 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(info.st_mode):
                data = path.read_bytes()
            elif stat.S_ISDIR(info.st_mode):
                data = b""
            else:
                continue
            nlink = 2 if stat.S_ISDIR(info.st_mode) else 1
            relative = path.relative_to(root).as_posix()
            _entry(
                out,
                ino=ino,
                name=relative,
                mode=info.st_mode,
                mtime=int(info.st_mtime),
                data=data,
                nlink=nlink,
                owner=owners.get(relative, (0, 0)),
            )
            ino += 1
    for device in devices:
        _entry(
            out,
            ino=ino,
            name=device.path,
            mode=stat.S_IFCHR | device.mode,
            mtime=0,
            rdev=(device.major, device.minor),
        )
        ino += 1
    _entry(out, ino=0, name=_TRAILER, mode=0, mtime=0, nlink=1)
