"""The workspace's files as the console reaches them: list a directory, read, write and delete.

Every path is resolved beneath the workspace by this process itself, one component at a time,
each opened with ``O_NOFOLLOW`` relative to the directory before it (``openat``), never by
handing a whole path to the kernel. A symlink met on the way is read and followed only while
it stays beneath the workspace: ``..`` past the workspace, or an absolute target outside it,
is refused. Since every step holds the directory it came from open, a symlink swapped in
meanwhile (a race) is met as a symlink and checked the same way; it cannot lead out.

Writing and deleting do not follow the path's last component: an upload replaces a symlink
it names (the link, not its target), and a delete removes the link. Reading and listing follow
it, within the workspace. Uploads are written to a temporary file beside the target and renamed
over it once complete, so a refused or broken upload leaves the old file as it was.

This guards the console's file routes. It is not the sandbox's boundary: commands (the
``run_command`` tool, ``/exec``) run inside the sandbox with all of it in reach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wire.workspace import WorkspacePathError, workspace_path_parts

__all__ = ["FileRefused", "Opened", "Upload", "Workspace"]

MAX_SYMLINK_HOPS = 40  # as Linux's own
MAX_LIST_ENTRIES = 1000
READ_CHUNK = 256 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PART_PREFIX = ".upload-"


class FileRefused(Exception):
    """A file operation refused: its HTTP status, a stable code, a sentence, and details."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def _invalid(message: str, path: str) -> FileRefused:
    return FileRefused(400, "invalid_path", message, {"path": path})


def _not_found(path: str) -> FileRefused:
    return FileRefused(404, "file_not_found", f"{path or '.'} does not exist", {"path": path})


def _escapes(path: str) -> FileRefused:
    return _invalid(f"{path} leads outside the workspace (through a symlink); it is refused", path)


@dataclass
class _Walk:
    """Directories opened on the way down, innermost last, and their names."""

    fds: list[int]
    names: list[str] = field(default_factory=list)

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def up(self, shown: str) -> None:
        if len(self.fds) == 1:
            raise _escapes(shown)
        os.close(self.fds.pop())
        self.names.pop()

    def down(self, fd: int, name: str) -> None:
        self.fds.append(fd)
        self.names.append(name)

    def to_root(self) -> None:
        while len(self.fds) > 1:
            os.close(self.fds.pop())
        self.names.clear()

    def take(self) -> int:
        """The innermost directory's fd, now the caller's to close; the rest are closed."""
        fd = self.fds.pop()
        self.close()
        return fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())

    @property
    def path(self) -> str:
        return "/".join(self.names)


@dataclass(frozen=True, slots=True)
class Opened:
    """A file opened for reading: its fd (the caller closes it), size and workspace path."""

    fd: int
    size: int
    path: str


class Workspace:
    """The files under ``root``, the workspace directory (an absolute path, resolved)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- Resolving ---------------------------------------------------------------------------

    def parts(self, raw: str) -> tuple[str, ...]:
        try:
            return workspace_path_parts(raw)
        except WorkspacePathError as exc:
            raise _invalid(str(exc), raw if isinstance(raw, str) else "") from None

    def _link_parts(self, target: str, shown: str) -> tuple[bool, list[str]]:
        """A symlink's target as (from the root?, components); outside targets are refused."""
        if target.startswith("/"):
            root = str(self.root)
            if target != root and not target.startswith(root.rstrip("/") + "/"):
                raise _escapes(shown)
            return True, [p for p in target[len(root) :].split("/") if p not in ("", ".")]
        return False, [p for p in target.split("/") if p not in ("", ".")]

    def _walk(self, parts: list[str], shown: str, *, create: bool = False) -> _Walk:
        """The directories ``parts`` name, opened from the root down, following symlinks that
        stay beneath it; with ``create``, missing ones are made (as ``mkdir -p``)."""
        walk = _Walk([os.open(self.root, _DIR_FLAGS)])
        pending, hops = list(parts), 0
        try:
            while pending:
                name = pending.pop(0)
                if name == "..":  # only from a symlink's target: the user's own are refused
                    walk.up(shown)
                    continue
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=walk.fd)
                except FileNotFoundError:
                    if not create:
                        raise _not_found(shown) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=walk.fd)
                    pending.insert(0, name)  # opened as any other (it may be a link by now)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    target = _readlink(name, walk.fd)
                    if target is None:
                        raise FileRefused(
                            409,
                            "not_a_directory",
                            f"{'/'.join([*walk.names, name])} is not a directory",
                            {"path": shown},
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise _invalid(f"{shown}: too many levels of symlinks", shown) from None
                    from_root, more = self._link_parts(target, shown)
                    if from_root:
                        walk.to_root()
                    pending[:0] = more
                    continue
                walk.down(fd, name)
        except BaseException:
            walk.close()
            raise
        return walk

    def _parent(self, raw: str, *, follow: bool, create: bool = False) -> tuple[_Walk, str]:
        """The open directory holding the file ``raw`` names, and its name there. With
        ``follow``, a symlink there is followed (within the workspace) to what it names."""
        parts = self.parts(raw)
        shown = "/".join(parts)
        if not parts:
            raise _invalid("the path names the workspace itself, not a file in it", shown)
        hops = 0
        current = list(parts)
        while True:
            walk = self._walk(current[:-1], shown, create=create)
            name = current[-1]
            if name == "..":  # a symlink's target ended in '..': a directory
                walk.up(shown)
                return walk, "."
            target = _readlink(name, walk.fd) if follow else None
            if target is None:
                return walk, name
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                walk.close()
                raise _invalid(f"{shown}: too many levels of symlinks", shown)
            try:
                from_root, more = self._link_parts(target, shown)
            except FileRefused:
                walk.close()
                raise
            base = [] if from_root else walk.names
            walk.close()
            current = [*base, *more]
            if not current:
                return self._walk([], shown), "."

    # --- Operations --------------------------------------------------------------------------

    def listing(self, raw: str) -> dict[str, Any]:
        """The directory ``raw`` names: its entries (directories first, then by name; at most
        ``MAX_LIST_ENTRIES``), and the workspace's size in bytes."""
        parts = self.parts(raw)
        shown = "/".join(parts)
        walk = self._walk(list(parts), shown)
        try:
            where = walk.path
            entries = []
            with os.scandir(walk.fd) as found:
                for entry in found:
                    if len(entries) > MAX_LIST_ENTRIES:
                        break
                    entries.append(_entry(entry, where, walk.fd))
        finally:
            walk.close()
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"]))
        truncated = len(entries) > MAX_LIST_ENTRIES
        return {
            "path": where,
            "entries": entries[:MAX_LIST_ENTRIES],
            "truncated": truncated,
            "workspace_bytes": self.size(),
        }

    def open_read(self, raw: str) -> Opened:
        """The regular file ``raw`` names, opened for reading."""
        for _ in range(MAX_SYMLINK_HOPS):
            walk, name = self._parent(raw, follow=True)
            try:
                if name == ".":
                    raise FileRefused(
                        409, "is_a_directory", f"{walk.path or '.'} is a directory", {"path": raw}
                    )
                try:
                    # O_NONBLOCK: a FIFO must not hold the runtime up; it is refused below.
                    fd = os.open(
                        name,
                        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                        dir_fd=walk.fd,
                    )
                except FileNotFoundError:
                    raise _not_found(raw) from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # made a symlink since: resolve it again
                        continue
                    raise
                path = "/".join([*walk.names, name])
            finally:
                walk.close()
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                os.set_blocking(fd, True)
                return Opened(fd, info.st_size, path)
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FileRefused(409, "is_a_directory", f"{path} is a directory", {"path": path})
            raise FileRefused(409, "not_a_file", f"{path} is not a regular file", {"path": path})
        raise _invalid(f"{raw}: too many levels of symlinks", raw)

    def directory(self, raw: str) -> Path:
        """The directory ``raw`` names, as a path (for a command's working directory)."""
        parts = self.parts(raw)
        walk = self._walk(list(parts), "/".join(parts))
        try:
            return self.root.joinpath(*walk.names)
        finally:
            walk.close()

    def upload(
        self, raw: str, *, length: int | None, file_limit: int, workspace_limit: int
    ) -> Upload:
        """Begin writing the file ``raw`` names (making missing directories), to replace what
        is there once complete: refused (413) past ``file_limit`` bytes, or when the workspace
        would hold more than ``workspace_limit``. ``length`` is the body's, when announced."""
        walk, name = self._parent(raw, follow=False, create=True)
        path = "/".join([*walk.names, name])
        try:
            try:
                existing = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise FileRefused(409, "is_a_directory", f"{path} is a directory", {"path": path})
            replaced = existing.st_size if existing and stat.S_ISREG(existing.st_mode) else 0
            limits = _Limits(path, file_limit, workspace_limit, self.size() - replaced)
            if length is not None:
                limits.check(length)
            part = f"{_PART_PREFIX}{uuid.uuid4().hex}.part"
            try:
                fd = os.open(
                    part,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=walk.fd,
                )
            except OSError as exc:
                raise _os_refusal(exc, path) from exc
        except BaseException:
            walk.close()
            raise
        return Upload(walk, name, part, fd, limits, replaced=existing is not None)

    def delete(self, raw: str, *, recursive: bool) -> dict[str, Any]:
        """Delete the file, symlink or directory ``raw`` names (a directory that is not empty
        only when ``recursive``); a symlink is removed, not what it leads to."""
        walk, name = self._parent(raw, follow=False)
        path = "/".join([*walk.names, name])
        try:
            try:
                info = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
            except FileNotFoundError:
                raise _not_found(path) from None
            kind = _kind(info.st_mode)
            if kind != "directory":
                os.unlink(name, dir_fd=walk.fd)
            elif recursive:
                # The fd-based walk, which does not follow symlinks, races included.
                shutil.rmtree(name, dir_fd=walk.fd)
            else:
                try:
                    os.rmdir(name, dir_fd=walk.fd)
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                    raise FileRefused(
                        409,
                        "directory_not_empty",
                        f"{path} is a directory that is not empty: delete it with recursive=true",
                        {"path": path},
                    ) from None
        finally:
            walk.close()
        return {"path": path, "type": kind, "deleted": True}

    def size(self) -> int:
        """The bytes of every regular file under the workspace (symlinks not followed)."""
        total = 0
        pending = [os.open(self.root, _DIR_FLAGS)]
        try:
            while pending:
                fd = pending.pop()
                try:
                    with os.scandir(fd) as found:
                        for entry in found:
                            try:
                                if entry.is_dir(follow_symlinks=False):
                                    pending.append(os.open(entry.name, _DIR_FLAGS, dir_fd=fd))
                                elif entry.is_file(follow_symlinks=False):
                                    total += entry.stat(follow_symlinks=False).st_size
                            except OSError:  # gone meanwhile, or unreadable: not counted
                                continue
                finally:
                    os.close(fd)
        finally:
            for fd in pending:
                os.close(fd)
        return total


@dataclass
class _Limits:
    path: str
    file_limit: int
    workspace_limit: int
    others: int  # what the workspace holds besides the file being replaced

    def check(self, size: int) -> None:
        if size > self.file_limit:
            raise FileRefused(
                413,
                "file_too_large",
                f"a file may hold at most {self.file_limit} bytes",
                {"path": self.path, "limit": "max_file_bytes", "limit_bytes": self.file_limit},
            )
        if self.others + size > self.workspace_limit:
            raise FileRefused(
                413,
                "workspace_full",
                f"the workspace may hold at most {self.workspace_limit} bytes; "
                f"{self.others} are in use besides this file",
                {
                    "path": self.path,
                    "limit": "max_workspace_bytes",
                    "limit_bytes": self.workspace_limit,
                    "used_bytes": self.others,
                },
            )


def _os_refusal(exc: OSError, path: str) -> FileRefused | OSError:
    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY):
        return FileRefused(409, "is_a_directory", f"{path} is a directory", {"path": path})
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FileRefused(507, "no_space", "the sandbox's disk is full", {"path": path})
    if exc.errno == errno.ENOENT:  # its directory was removed while the upload went on
        return FileRefused(
            409, "changed_meanwhile", f"{path}'s directory was removed meanwhile", {"path": path}
        )
    return exc


class Upload:
    """A file being written to a temporary name beside its target, renamed over it by
    ``finish``; ``abort`` (or a refusal) removes it, leaving the target as it was."""

    def __init__(
        self, walk: _Walk, name: str, part: str, fd: int, limits: _Limits, *, replaced: bool
    ) -> None:
        self.walk, self.name, self.part, self.fd = walk, name, part, fd
        self.limits, self.replaced, self.written = limits, replaced, 0

    @property
    def path(self) -> str:
        return self.limits.path

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        self.limits.check(self.written)
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise _os_refusal(exc, self.path) from exc

    def finish(self) -> dict[str, Any]:
        try:
            os.close(self.fd)
            self.fd = -1
            os.rename(self.part, self.name, src_dir_fd=self.walk.fd, dst_dir_fd=self.walk.fd)
            self.part = ""
        except OSError as exc:
            raise _os_refusal(exc, self.path) from exc
        finally:
            self.abort()
        return {"path": self.path, "size": self.written, "replaced": self.replaced}

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.part:
            with contextlib.suppress(OSError):
                os.unlink(self.part, dir_fd=self.walk.fd)
            self.part = ""
        self.walk.close()


def _readlink(name: str, dir_fd: int) -> str | None:
    """The target of the symlink ``name`` in ``dir_fd``; None when it is not a symlink."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(entry: os.DirEntry[str], where: str, dir_fd: int) -> dict[str, Any]:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return {"name": entry.name, "path": _join(where, entry.name), "type": "other"}
    kind = _kind(info.st_mode)
    found: dict[str, Any] = {
        "name": entry.name,
        "path": _join(where, entry.name),
        "type": kind,
        "size": info.st_size if kind == "file" else None,
        "modified": datetime.fromtimestamp(info.st_mtime, UTC).isoformat(timespec="seconds"),
    }
    if kind == "symlink":
        found["target"] = _readlink(entry.name, dir_fd) or ""
    return found


def _join(where: str, name: str) -> str:
    return f"{where}/{name}" if where else name
