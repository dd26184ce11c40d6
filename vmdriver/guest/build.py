"""``python -m vmdriver.guest.build --out DIR [--runtime-src PATH]``: builds the qemu guest.

The guest is Debian's cloud kernel and an initramfs made of Debian packages (busybox for init,
Python 3.11 and the libraries it loads), the runtime's PyPI dependencies (``pip install
--target``), and the agent runtime's source, copied by path (``agents/runtime/*.py``,
``wire/*.py`` and a Django-free ``agents/__init__.py``). Packages come from apt
(``apt-get download``, unpacked with ``dpkg-deb -x``: nothing is installed on the host, nothing
runs as root).

The result lands in ``DIR/<hash>/``, where the hash covers the recipe (this package's files and
the runtime's sources), and ``DIR/current`` points at it. A build whose recipe is unchanged does
nothing; a changed recipe builds anew and removes the older builds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmdriver.guest import INITRD, KERNEL, MANIFEST, PROBE_INITRD, PROBE_MARKER
from vmdriver.guest.cpio import CharDevice, write_cpio

__all__ = ["DEFAULT_RUNTIME_SRC", "BuildError", "build_guest", "main", "recipe_hash"]

HERE = Path(__file__).resolve().parent
DEFAULT_RUNTIME_SRC = HERE.parents[1] / "agents" / "runtime"
WIRE_SRC = HERE.parents[1] / "wire"  # the framework-free modules the runtime imports
RECIPE_FILES = (
    "__init__.py",
    "build.py",
    "cpio.py",
    "init.sh",
    "probe-init.sh",
    "boot.py",
    "packages.txt",
    "requirements.txt",
)
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# The drivers for what QEMU's microvm gives the guest: virtio-mmio devices, a network card, an
# entropy source, and fw_cfg (which carries the environment). Their dependencies follow.
KERNEL_MODULES = ("virtio_mmio", "virtio_net", "virtio-rng", "qemu_fw_cfg")
PIP_TARGET = (
    "--only-binary=:all:",
    "--platform=manylinux_2_36_x86_64",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
)
# Parts of the unpacked packages the guest never uses: docs, locales, iconv modules, and the
# standard library's tests, GUI, packaging and teaching tools.
PRUNE = (
    "usr/share",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/binfmt.d",
    "etc/ld.so.conf.d",
)
STDLIB_PRUNE = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "venv",
    "distutils",
    "config-3.11-x86_64-linux-gnu",
    "__phello__",
)
AGENTS_SHIM = '"""The agent runtime, alone: the console\'s ``agents`` app is not in the guest."""\n'
AGENT_UID = 1000
WORKSPACE_DIR = "workspace"
_CONSOLE = CharDevice("dev/console", 5, 1)


class BuildError(RuntimeError):
    """The guest could not be built (a tool is missing, or a download or unpack failed)."""


def _say(message: str) -> None:
    print(f"guest build: {message}", file=sys.stderr, flush=True)


def _runtime_sources(runtime_src: Path) -> list[Path]:
    sources = sorted(runtime_src.glob("*.py"))
    if not any(path.name == "server.py" for path in sources):
        raise BuildError(f"no agent runtime in {runtime_src} (server.py is missing)")
    return sources


def recipe_hash(runtime_src: Path = DEFAULT_RUNTIME_SRC) -> str:
    """The build's cache key: a hash of the recipe files and of the runtime's sources."""
    digest = hashlib.sha256()
    named = [(f"recipe/{name}", HERE / name) for name in RECIPE_FILES]
    named += [(f"runtime/{path.name}", path) for path in _runtime_sources(runtime_src)]
    named += [(f"wire/{path.name}", path) for path in sorted(WIRE_SRC.glob("*.py"))]
    for name, path in named:
        content = path.read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{argv[0]} could not run: {exc}") from exc
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv[:3])}… failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


def _recipe_lines(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _apt_download(packages: Sequence[str], dest: Path) -> list[Path]:
    """Download ``packages`` (the candidate versions) as .debs into ``dest``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed: the guest is built from Debian packages")
    dest.mkdir(parents=True, exist_ok=True)
    # apt drops to the _apt user to download unless told otherwise, and _apt cannot write here.
    argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *packages]
    if os.geteuid() != 0:
        argv = ["apt-get", "download", "-q", *packages]
    try:
        _run(argv, cwd=dest)
    except BuildError:
        if os.geteuid() != 0:
            raise
        _say("apt-get download failed; refreshing the package lists once")
        _run(["apt-get", "update", "-qq"])
        _run(argv, cwd=dest)
    found = []
    for package in packages:
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise BuildError(f"apt-get download did not fetch {package}")
        found.append(debs[-1])
    return found


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


def _kernel_package(meta: Path) -> str:
    """The versioned image package the cloud kernel metapackage depends on."""
    for dependency in _deb_field(meta, "Depends").split(","):
        name = dependency.split()[0]
        if name.startswith("linux-image-"):
            return name
    raise BuildError(f"{meta.name} names no linux-image package")


def _module_depends(module: Path) -> list[str]:
    """The ``depends=`` of a kernel module, read from its ``.modinfo`` strings."""
    for chunk in module.read_bytes().split(b"\0"):
        if chunk.startswith(b"depends="):
            return [name for name in chunk[8:].decode().split(",") if name]
    return []


def _install_modules(kernel_root: Path, root: Path) -> tuple[str, list[str]]:
    """Copy the wanted modules and their dependencies, and list them in load order."""
    releases = sorted((kernel_root / "lib" / "modules").iterdir())
    if len(releases) != 1:
        raise BuildError(f"expected one kernel release in the image package, found {releases}")
    release = releases[0]
    by_name = {path.stem.replace("-", "_"): path for path in release.rglob("*.ko")}
    ordered: list[str] = []

    def add(name: str) -> None:
        key = name.replace("-", "_")
        if key in ordered:
            return
        if key not in by_name:
            raise BuildError(f"kernel module {name} is not in {release.name}")
        for dependency in _module_depends(by_name[key]):
            add(dependency)
        ordered.append(key)

    for module in KERNEL_MODULES:
        add(module)
    target = root / "lib" / "modules"
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for key in ordered:
        shutil.copy2(by_name[key], target / by_name[key].name)
        files.append(by_name[key].name)
    (root / "etc" / "guest-modules").write_text("".join(f"{name}\n" for name in files))
    return release.name, files


def _busybox_links(root: Path) -> None:
    """Point /bin/<applet> at busybox for every applet it has (it is static: it runs here)."""
    busybox = root / "bin" / "busybox"
    applets = _run([str(busybox), "--list"]).split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")


def _prune(root: Path) -> None:
    for relative in PRUNE:
        shutil.rmtree(root / relative, ignore_errors=True)
    stdlib = root / "usr" / "lib" / "python3.11"
    for name in STDLIB_PRUNE:
        shutil.rmtree(stdlib / name, ignore_errors=True)
    for cache in list(root.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _pip_install(target: Path, wheels: Path) -> list[str]:
    requirements = HERE / "requirements.txt"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "download", "-d", str(wheels), *PIP_TARGET, "-r", str(requirements)])
    _run(
        [
            *pip,
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(target),
            "--no-compile",
            *PIP_TARGET,
            "-r",
            str(requirements),
        ]
    )
    for junk in target.glob("*.dist-info"):
        for name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
            (junk / name).unlink(missing_ok=True)
    shutil.rmtree(target / "bin", ignore_errors=True)
    return sorted(path.name.removesuffix(".whl") for path in wheels.glob("*.whl"))


def _copy_runtime(runtime_src: Path, app: Path) -> None:
    package = app / "agents" / "runtime"
    package.mkdir(parents=True)
    (app / "agents" / "__init__.py").write_text(AGENTS_SHIM)
    for source in _runtime_sources(runtime_src):
        shutil.copy2(source, package / source.name)
    wire = app / "wire"
    wire.mkdir()
    for source in sorted(WIRE_SRC.glob("*.py")):
        shutil.copy2(source, wire / source.name)


_COMPILE = """
import compileall, py_compile, sys
root = sys.argv[1]
ok = all(
    compileall.compile_dir(
        f"{root}/{folder}", quiet=2, workers=0, stripdir=root, prependdir="/",
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    for folder in ("usr/lib/python3.11", "opt")
)
sys.exit(0 if ok else 1)
"""


def _precompile(root: Path) -> None:
    """Byte-compile the guest's Python ahead of time, with the guest's own interpreter.

    Compiling at each boot would cost seconds under TCG (and the agent's user cannot write the
    caches). The guest's python3.11 runs here through the guest's own dynamic loader and
    libraries, so the host's Python version does not matter. Unchecked-hash pycs are used
    without looking at the sources' timestamps.
    """
    libs = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    python = root / "usr" / "bin" / "python3.11"
    try:
        _run([str(loader), "--library-path", libs, str(python), "-I", "-c", _COMPILE, str(root)])
    except BuildError as exc:
        raise BuildError(f"the guest's Python could not byte-compile its files: {exc}") from exc


def _layout(root: Path, files: Path) -> None:
    """Init, boot script, the agent's account, and the folders init mounts over."""
    for folder in ("proc", "sys", "dev", "tmp", "run", "opt/guest", "etc", WORKSPACE_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(files / "init.sh", root / "init")
    os.chmod(root / "init", 0o755)
    shutil.copy2(files / "boot.py", root / "opt" / "guest" / "boot.py")
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nagent:x:{AGENT_UID}:{AGENT_UID}:agent:/workspace:/bin/sh\n"
    )
    (root / "etc" / "group").write_text(f"root:x:0:\nagent:x:{AGENT_UID}:\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost sandbox\n")


def _write_initrd(root: Path, path: Path) -> None:
    with path.open("wb") as out:
        write_cpio(out, root, devices=[_CONSOLE], owners={WORKSPACE_DIR: (AGENT_UID, AGENT_UID)})


def _probe_initrd(busybox: Path, work: Path, path: Path) -> None:
    root = work / "probe-root"
    (root / "bin").mkdir(parents=True)
    (root / "dev").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    init = (HERE / "probe-init.sh").read_text()
    if PROBE_MARKER not in init:
        raise BuildError("probe-init.sh does not print the probe marker")
    (root / "init").write_text(init)
    os.chmod(root / "init", 0o755)
    _write_initrd(root, path)


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def _build(work: Path, runtime_src: Path, recipe: str) -> dict[str, object]:
    root = work / "root"
    root.mkdir()
    debs = work / "debs"
    packages = _recipe_lines("packages.txt")
    if KERNEL_METAPACKAGE not in packages:
        raise BuildError(f"packages.txt must name {KERNEL_METAPACKAGE}")
    rest = [name for name in packages if name != KERNEL_METAPACKAGE]
    _say(f"downloading {len(packages) + 1} Debian packages")
    (meta,) = _apt_download([KERNEL_METAPACKAGE], debs)
    kernel_pkg = _kernel_package(meta)
    (kernel_deb,) = _apt_download([kernel_pkg], debs)
    rest_debs = _apt_download(rest, debs)

    kernel_root = work / "kernel"
    _run(["dpkg-deb", "-x", str(kernel_deb), str(kernel_root)])
    for deb in rest_debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    versions = {
        _deb_field(deb, "Package"): _deb_field(deb, "Version") for deb in [kernel_deb, *rest_debs]
    }
    vmlinuz = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise BuildError(f"expected one vmlinuz in {kernel_deb.name}, found {vmlinuz}")
    shutil.copy2(vmlinuz[0], work / KERNEL)

    _prune(root)
    _layout(root, HERE)
    release, modules = _install_modules(kernel_root, root)
    _busybox_links(root)
    _say("installing the runtime's PyPI packages")
    wheels = _pip_install(root / "opt" / "site", work / "wheels")
    _copy_runtime(runtime_src, root / "opt" / "app")
    _precompile(root)
    _write_initrd(root, work / INITRD)
    _probe_initrd(root / "bin" / "busybox", work, work / PROBE_INITRD)
    return {
        "recipe": recipe,
        "kernel_release": release,
        "kernel_modules": modules,
        "debian_packages": versions,
        "wheels": wheels,
        "root_bytes": _size(root),
        "initrd_bytes": (work / INITRD).stat().st_size,
        "kernel_bytes": (work / KERNEL).stat().st_size,
    }


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _point_current(out: Path, recipe: str) -> None:
    link = out / f".current-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(recipe)
    link.replace(out / "current")


def build_guest(out: Path, *, runtime_src: Path = DEFAULT_RUNTIME_SRC, force: bool = False) -> Path:
    """Build the guest into ``out/<recipe hash>/`` unless it is there; return that folder."""
    out = Path(out).resolve()
    recipe = recipe_hash(runtime_src)
    image = out / recipe
    with _locked(out):
        if (image / MANIFEST).is_file() and not force:
            _point_current(out, recipe)
            return image
        started = time.monotonic()
        work = out / f".build-{recipe}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            manifest = _build(work, runtime_src, recipe)
            final = work / "final"
            final.mkdir()
            for name in (KERNEL, INITRD, PROBE_INITRD):
                (work / name).rename(final / name)
            manifest["build_seconds"] = round(time.monotonic() - started, 1)
            (final / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(image, ignore_errors=True)
            final.rename(image)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _point_current(out, recipe)
        for old in out.iterdir():
            stale = old.name != recipe and not old.is_symlink()
            if stale and (old / MANIFEST).is_file():
                shutil.rmtree(old, ignore_errors=True)
        _say(
            f"built {recipe} in {manifest['build_seconds']} s: initrd "
            f"{int(str(manifest['initrd_bytes'])) / 2**20:.1f} MiB"
        )
        return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmdriver.guest.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="the guest folder (var/guest)")
    parser.add_argument(
        "--runtime-src", type=Path, default=DEFAULT_RUNTIME_SRC, help="agents/runtime to copy in"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    try:
        image = build_guest(args.out, runtime_src=args.runtime_src, force=args.force)
    except BuildError as exc:
        print(f"guest build failed: {exc}", file=sys.stderr)
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
