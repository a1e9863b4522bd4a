"""A throwaway copy of the whole system for `hs-tx update --check` to run modules in.

Inside a private mount namespace, a new root is assembled on a scratch tmpfs: one
overlay per writable local mount (stacked in mount order, since overlayfs does
not descend into mounts), its upper and work dirs on the tmpfs; the kernel's own
filesystems, read-only, remote and FUSE mounts are bound as they are. Service
control (`systemctl`, `service`, `invoke-rc.d`) is replaced in it by a recorder
that logs each call and succeeds. What a module would have written is read
back from the upper dirs; when the namespace ends, all of it is gone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HsTxError
from ..base.proc import run

# filesystems with no files of their own to protect: bound into the new root as they are
_BOUND_FSTYPES = frozenset(
    (
        "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
        "tracefs", "bpf", "mqueue", "hugetlbfs", "fusectl", "configfs", "pstore", "autofs",
        "binfmt_misc", "nsfs", "efivarfs", "rpc_pipefs", "selinuxfs",
        "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "sshfs", "fuse", "fuseblk",
    )
)  # fmt: skip
SERVICE_TOOLS = (
    "/usr/bin/systemctl", "/bin/systemctl", "/usr/sbin/service", "/sbin/service",
    "/usr/sbin/invoke-rc.d", "/sbin/invoke-rc.d",
)  # fmt: skip
SERVICES_LOG = "services.log"


class IsolationError(HsTxError):
    """The new root cannot be assembled, so the checks cannot be isolated."""


@dataclass(frozen=True)
class Mount:
    """One mount of the namespace: where, its type, and whether it is read-only."""

    point: Path
    fstype: str
    readonly: bool


@dataclass(frozen=True)
class Layer:
    """One overlay of the new root: the real mount below it and its upper dir."""

    point: Path
    upper: Path


def read_mounts() -> list[Mount]:
    """The mounts of this process's namespace, in mount order."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            point = Path(fields[4].encode().decode("unicode_escape"))
            readonly = "ro" in fields[5].split(",")
            mounts.append(Mount(point, tail[0] if tail else "", readonly))
    return mounts


def assemble(scratch: Path, hidden: Path) -> tuple[Path, list[Layer]]:
    """Build the new root under the tmpfs `scratch` (already mounted, private) from
    every mount of this namespace except those at or below `scratch`; mount an empty
    dir of the scratch over `hidden` (the state dir) in it; put the service recorder
    in place. Returns (the new root, its overlays). Raises IsolationError."""
    root = scratch / "root"
    root.mkdir()
    layers: list[Layer] = []
    mounts = read_mounts()
    if not any(m.point == Path("/") for m in mounts):  # a chroot: its / is no mount here
        mounts.insert(0, Mount(Path("/"), "", False))
    for n, mount in enumerate(mounts):
        if mount.point.is_relative_to(scratch) or mount.point.is_relative_to(root):
            continue
        target = root / mount.point.relative_to("/")
        if not target.is_dir() and mount.point != Path("/"):
            continue  # hidden under a later mount of its parent, or a file mount
        if mount.readonly or mount.fstype in _BOUND_FSTYPES or mount.fstype.startswith("fuse."):
            _mount(["mount", "--bind", str(mount.point), str(target)])
            if mount.readonly:
                _mount(["mount", "-o", "remount,bind,ro", str(target)])
            continue
        upper, work = scratch / f"upper{n}", scratch / f"work{n}"
        upper.mkdir()
        work.mkdir()
        lower = _escape(mount.point)
        options = f"lowerdir={lower},upperdir={_escape(upper)},workdir={_escape(work)}"
        _mount(["mount", "-t", "overlay", "-o", options, "hs-tx-check", str(target)])
        layers.append(Layer(mount.point, upper))
    inner = scratch / "state"
    inner.mkdir(mode=0o700)
    _mount(["mount", "--bind", str(inner), str(root / hidden.relative_to("/"))])
    _install_recorder(scratch, root, hidden)
    return root, layers


def _install_recorder(scratch: Path, root: Path, hidden: Path) -> None:
    """Bind a recorder over each service tool the new root has: it appends its name
    and arguments to `hidden/services.log` (as the modules see it) and exits 0."""
    recorder = scratch / "recorder"
    log = hidden / SERVICES_LOG
    recorder.write_text(f'#!/bin/sh\necho "${{0##*/}} $*" >> "{log}"\nexit 0\n')
    recorder.chmod(0o755)
    for tool in SERVICE_TOOLS:
        target = root / tool.lstrip("/")
        if target.is_file() and not target.is_symlink():
            _mount(["mount", "--bind", str(recorder), str(target)])


def _mount(argv: list[str]) -> None:
    try:
        run(argv)
    except HsTxError as exc:
        raise IsolationError(
            f"cannot isolate the checks: {exc}", "run hs-tx update --check on the host, as root"
        ) from exc


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def changes(layers: list[Layer]) -> dict[str, str]:
    """What the upper dirs hold, as {path: change}: `created`, `modified` (content
    or type), `metadata` (mode, owner or times only), `deleted`, `replaced` (a
    directory whose old contents are hidden). Directories copied up only because
    something below them changed are left out."""
    found: dict[str, str] = {}
    for layer in layers:
        for top, dirs, files in os.walk(layer.upper):
            for name in dirs + files:
                upper = Path(top) / name
                rel = upper.relative_to(layer.upper)
                change = _change(upper, layer.point / rel)
                if change is not None:
                    found[str(layer.point / rel)] = change
    return dict(sorted(found.items()))


def _change(upper: Path, lower: Path) -> str | None:
    st = os.lstat(upper)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "deleted"  # an overlay whiteout
    try:
        old = os.lstat(lower)
    except FileNotFoundError:
        return "created"
    if stat.S_ISDIR(st.st_mode):
        if _opaque(upper):
            return "replaced"
        if stat.S_ISDIR(old.st_mode) and _same_meta(st, old):
            return None  # copied up for a child
        return "metadata" if stat.S_ISDIR(old.st_mode) else "modified"
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(old.st_mode):
        return "modified"
    if stat.S_ISREG(st.st_mode) and not _same_content(upper, lower, st, old):
        return "modified"
    if stat.S_ISLNK(st.st_mode) and os.readlink(upper) != os.readlink(lower):
        return "modified"
    return "metadata"


def _same_meta(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid)


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _same_content(a: Path, b: Path, sa: os.stat_result, sb: os.stat_result) -> bool:
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while chunk := fa.read(1 << 20):
            if chunk != fb.read(len(chunk)):
                return False
    return True
