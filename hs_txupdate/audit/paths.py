"""Which paths the audit looks at: the watch/ignore rule, hs-tx's own names, and
the filesystems (from /proc/self/mountinfo) that hold the watched roots."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

OWN_DIR = ".hs-tx-snapshots"
OWN_PREFIXES = (".hs-tx-stage-", ".hs-tx-tmp-")

# filesystems that are never audited: network and FUSE filesystems (not local:
# reported as not audited), pseudo filesystems (nothing to audit) and overlayfs
# (refuses fid marks; its upper directory lies on a filesystem that is audited)
REMOTE_FSTYPES = frozenset(
    ("nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "sshfs", "fuse", "fuseblk")
)
# the kernel's own views (no files to keep): never audited, never snapshotted
KERNEL_FSTYPES = frozenset(
    (
        "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs",
        "debugfs", "tracefs", "bpf", "mqueue", "hugetlbfs", "fusectl", "configfs", "pstore",
        "autofs", "binfmt_misc", "nsfs", "efivarfs", "rpc_pipefs", "selinuxfs",
    )
)  # fmt: skip
SKIPPED_FSTYPES = REMOTE_FSTYPES | KERNEL_FSTYPES | frozenset(("overlay", "ramfs"))


def skipped(fstype: str) -> bool:
    """True for a filesystem type the audit never marks."""
    return fstype in SKIPPED_FSTYPES or fstype.startswith("fuse.")


def unaudited(roots: Sequence[str], ignores: Sequence[str], mounts: Sequence[Mount]) -> list[str]:
    """Return "point (type)" of each watched network or FUSE mount below a root:
    changes there are not seen."""
    return [
        f"{m.point} ({m.fstype})"
        for m in mounts
        if (m.fstype in REMOTE_FSTYPES or m.fstype.startswith("fuse."))
        and any(under(m.point, r) for r in roots)
        and is_watched(m.point, roots, ignores)
    ]


def under(path: str, top: str) -> bool:
    """True when `path` is `top` or lies below it (both absolute, normalised)."""
    if top == "/":
        return path.startswith("/")
    return path == top or path.startswith(top + "/")


def is_watched(path: str, roots: Sequence[str], ignores: Sequence[str]) -> bool:
    """The one watch/ignore rule: True when `path` lies in a watched root and no
    ignore that lies inside that same root covers it. An ignore outside a root
    (e.g. `/tmp` for the root `/tmp/sbx`) does not cut into the root."""
    for root in roots:
        if under(path, root) and not any(under(ig, root) and under(path, ig) for ig in ignores):
            return True
    return False


def is_own(path: str) -> bool:
    """True when a component of `path` is one of hs-tx's own names (snapshot
    store, stage and temp dirs), whose changes the audit never reports."""
    if ".hs-tx-" not in path:
        return False
    return any(part == OWN_DIR or part.startswith(OWN_PREFIXES) for part in path.split("/"))


def keep(path: str, roots: Sequence[str], ignores: Sequence[str]) -> bool:
    """True when a change of `path` belongs in the audit: watched and not hs-tx's own."""
    return is_watched(path, roots, ignores) and not is_own(path)


def parent_and_name(path: str) -> tuple[str, str]:
    """Split an absolute path into its directory and last component."""
    cut = path.rfind("/")
    return (path[:cut] or "/"), path[cut + 1 :]


def join(directory: str, name: str) -> str:
    """Given a directory and an entry name ("" or "." for the directory itself), return the path."""
    if name in ("", "."):
        return directory
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def rebase(path: str, old: str, new: str) -> str:
    """Given `path` under `old`, return the same place under `new`."""
    rest = path[len(old) :] if old != "/" else (path if path != "/" else "")
    if new == "/":
        return rest or "/"
    return new + rest


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    dev: str  # major:minor of the filesystem
    root: str  # the directory of the filesystem mounted here
    point: str  # where it is mounted
    fstype: str
    source: str = ""  # the device (or what stands for it)


@dataclass
class Filesystem:
    """One filesystem to mark: marked and decoded through `point` (showing its
    directory `root`); `views` are (root, point) of the mounts that matter;
    `source` the device, for a private mount of the whole filesystem."""

    dev: str
    fstype: str
    point: str
    root: str
    views: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    @property
    def needs_top_level(self) -> bool:
        """True for btrfs seen only through subvolumes (e.g. a root mounted with
        `subvol=@`): the kernel refuses a filesystem mark through those (EXDEV)."""
        return self.fstype == "btrfs" and self.root != "/"


class Unwatchable(OSError):
    """A watched root lies on a filesystem fanotify cannot watch."""


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    """Decode mountinfo's octal escapes (a space is \\040)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def read_mounts(text: str | None = None) -> list[Mount]:
    """Parse mountinfo (this process's when `text` is None), in mount order."""
    if text is None:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and tail:
            source = _unescape(tail[1]) if len(tail) > 1 else ""
            mounts.append(
                Mount(fields[2], _unescape(fields[3]), _unescape(fields[4]), tail[0], source)
            )
    return mounts


def fstype_at(path: str, mounts: Sequence[Mount] | None = None) -> str | None:
    """The type of the filesystem mounted where `path` (absolute, links resolved) lies:
    the last-mounted of the deepest mount points above it."""
    best: Mount | None = None
    for mount in read_mounts() if mounts is None else mounts:
        if under(path, mount.point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best.fstype if best is not None else None


def plan_filesystems(
    roots: Sequence[str], ignores: Sequence[str], mounts: Sequence[Mount]
) -> list[Filesystem]:
    """Return the filesystems to mark so every watched root is covered: the one
    holding each root and every watched mount below a root, pseudo and network
    filesystems left out. Each is marked through a mount of its top directory
    when there is one (btrfs: the top-level subvolume), else through its view.
    Raises Unwatchable when a root itself lies on a filesystem that is left out.
    """
    relevant: list[Mount] = []
    for root in roots:
        holder = _holder(root, mounts)
        if skipped(holder.fstype):
            raise Unwatchable(f"{root} is on {holder.fstype}, which fanotify cannot watch")
        relevant.append(holder)
        relevant += [
            m
            for m in mounts
            if under(m.point, root)
            and m.point != root
            and is_watched(m.point, roots, ignores)
            and not skipped(m.fstype)
        ]
    return _group(relevant, mounts)


def _holder(path: str, mounts: Sequence[Mount]) -> Mount:
    """The mount `path` lies in: the last-mounted one with the longest mount point."""
    best: Mount | None = None
    for m in mounts:
        if under(path, m.point) and (best is None or len(m.point) >= len(best.point)):
            best = m
    if best is None:
        raise Unwatchable(f"no mount holds {path}")
    return best


def _group(relevant: Iterable[Mount], mounts: Sequence[Mount]) -> list[Filesystem]:
    """Group mounts by filesystem and pick the mount to mark each through."""
    by_dev: dict[str, Filesystem] = {}
    for m in relevant:
        fs = by_dev.get(m.dev)
        if fs is None:
            top = next((o for o in mounts if o.dev == m.dev and o.root == "/"), m)
            fs = by_dev[m.dev] = Filesystem(m.dev, m.fstype, top.point, top.root, source=m.source)
        if (m.root, m.point) not in fs.views:
            fs.views.append((m.root, m.point))
    for fs in by_dev.values():
        fs.views.sort(key=lambda v: len(v[0]), reverse=True)  # most specific first
    return list(by_dev.values())
