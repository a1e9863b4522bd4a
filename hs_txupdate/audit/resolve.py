"""From fanotify file ids to paths: a cache of directories as (parent, name)
nodes, filled by open_by_handle_at and kept right across renames, and the map
from the mount a filesystem is marked through to the mounts that are watched."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from . import kernel
from .events import fs_of, handle_of
from .paths import join, parent_and_name, rebase, under

MAX_NODES = 200_000  # directories learned from events; beyond this, looked up on demand
_MAX_DEPTH = 4096

OUTSIDE = ""  # the path of a directory no watched mount shows
Node = tuple[bytes | None, str]  # (parent key, name) or (None, absolute path)


@dataclass
class MarkedFs:
    """A marked filesystem as the reader sees it: its fsid, an fd of the mount it
    is decoded through (`point`, showing the filesystem's directory `root`; for a
    `detached` mount, which has no mount point, paths are relative to `mount_fd`),
    and the (root, point) views of the watched mounts, most specific first."""

    fsid: bytes
    mount_fd: int
    point: str
    root: str
    views: list[tuple[str, str]] = field(default_factory=list)
    detached: bool = False

    def handle_of(self, path: str) -> bytes:
        """The file handle of `path` as seen through `point`. Raises OSError."""
        if self.detached:
            return kernel.handle_of_path(path.lstrip("/") or ".", self.mount_fd)
        return kernel.handle_of_path(path)

    @property
    def direct(self) -> bool:
        """True when paths through `point` need no mapping (the usual case)."""
        return self.views == [(self.root, self.point)]

    def to_view(self, path: str) -> str | None:
        """Map a path seen through `point` to a watched mount, or None."""
        if self.direct:
            return path
        if not under(path, self.point):
            return None
        inside = rebase(path, self.point, self.root)
        for root, point in self.views:
            if under(inside, root):
                return rebase(inside, root, point)
        return None


class Resolver:
    """Directory file ids to paths. Directories are nodes (parent key, name), so
    a rename is one update and a deleted directory (whose handle is stale) keeps
    its last path."""

    def __init__(self, filesystems: list[MarkedFs]) -> None:
        self._fs = {fs.fsid: fs for fs in filesystems}
        self._nodes: dict[bytes, Node] = {}

    def path(self, key: bytes) -> str | None:
        """Return the path of the directory `key` through the watched mounts, ""
        when no watched mount shows it, or None when it is unknown and cannot be
        opened any more (deleted before it was seen)."""
        fs = self._fs.get(fs_of(key))
        if fs is None:
            return None
        parts: list[str] = []
        current: bytes | None = key
        while current is not None and len(parts) < _MAX_DEPTH:
            node = self._nodes.get(current) or self._load(fs, current)
            if node is None:
                return None
            current, name = node
            parts.append(name)
        if current is not None:
            return None  # a cycle: never expected
        path = parts.pop()
        for name in reversed(parts):
            path = join(path, name)
        return fs.to_view(path) or OUTSIDE

    def known(self, key: bytes) -> bool:
        """True when `key` is cached (no kernel call needed to name it)."""
        return key in self._nodes

    def learn(self, key: bytes, parent: bytes, name: str) -> None:
        """Record that directory `key` is now entry `name` of directory `parent`."""
        if key in self._nodes or len(self._nodes) < MAX_NODES:
            self._nodes[key] = (parent, name)

    def rebind(self, old: Node, new: Node) -> None:
        """Without target fids: the directory that was entry `old` is now `new`."""
        for key, node in self._nodes.items():
            if node == old:
                self._nodes[key] = new
                return

    def _load(self, fs: MarkedFs, key: bytes) -> Node | None:
        """Name an uncached directory by its handle and cache it and its ancestors."""
        try:
            fd = kernel.open_by_handle(fs.mount_fd, handle_of(key))
        except OSError:
            return None  # ESTALE: deleted
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if path.endswith(" (deleted)") or not path.startswith("/"):
            return None
        self._anchor(fs, key, path)
        return self._nodes[key]

    def _anchor(self, fs: MarkedFs, key: bytes, path: str) -> None:
        """Cache `key` at `path`, linking it to its parent's node (and the parent's
        to its own, up to a cached node or the mount), so renames above stay right."""
        while True:
            if path == fs.point or not under(path, fs.point):
                self._nodes[key] = (None, path)
                return
            parent_path, name = parent_and_name(path)
            parent_key = None
            with contextlib.suppress(OSError):
                parent_key = fs.fsid + fs.handle_of(parent_path)
            if parent_key is None or parent_key == key:
                self._nodes[key] = (None, path)
                return
            self._nodes[key] = (parent_key, name)
            if parent_key in self._nodes:
                return
            key, path = parent_key, parent_path
