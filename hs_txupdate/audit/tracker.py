"""Applying fanotify events to the audit's aggregate: naming each event's path,
attributing it (pid 0: a writer outside the run), following directory renames,
and holding events of directories deleted before they could be named."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .events import (
    FAN_ATTRIB,
    FAN_CREATE,
    FAN_DELETE,
    FAN_MOVED_FROM,
    FAN_MOVED_TO,
    FAN_ONDIR,
    FAN_Q_OVERFLOW,
    VANISHED,
    Event,
)
from .fold import Aggregator
from .paths import join, keep
from .resolve import OUTSIDE, Resolver

_NO_TARGET = b""  # rename pairing slot when the kernel gives no target fids


@dataclass
class Pending:
    """Events in a directory that could not be named yet (deleted before its
    events were read): how many entries vanished in it, by the run and by
    others, the first module, and its subdirectories (key -> name)."""

    run: int = 0
    others: int = 0
    module: str | None = None
    subdirs: dict[bytes, str] = field(default_factory=dict)


class Tracker:
    """Feeds events into an Aggregator. `module` is the current window's module."""

    def __init__(
        self,
        resolver: Resolver,
        roots: Sequence[str],
        ignores: Sequence[str],
        exists: Callable[[str], bool],
    ) -> None:
        self.resolver = resolver
        self.agg = Aggregator(exists)
        self.roots = list(roots)
        self.ignores = list(ignores)
        self.module: str | None = None
        self.others = 0
        self.lost: list[str] = []
        self._pending: dict[bytes, Pending] = {}
        self._moving: dict[bytes, tuple[str, bytes, str]] = {}
        self._moved_to: dict[int, str] = {}  # pid -> path of its last MOVED_TO

    def handle(self, event: Event) -> None:
        """Apply one event."""
        if event.mask & FAN_Q_OVERFLOW:
            self.lose("the fanotify queue overflowed")
            return
        if event.dir_key is None:
            self._nameless(event)
            return
        self._moved_to.pop(event.pid, None)
        directory = self.resolver.path(event.dir_key)
        if directory is None:
            self._defer(event)
            return
        path = join(directory, event.name) if directory != OUTSIDE else OUTSIDE
        wanted = path != OUTSIDE and keep(path, self.roots, self.ignores)
        if wanted:
            self._record(path, event)
        if event.mask & FAN_ONDIR and event.name not in ("", "."):
            self._track_dir(event, path, wanted)

    def lose(self, why: str) -> None:
        """Note that events were lost (the result cannot be trusted)."""
        if why not in self.lost:
            self.lost.append(why)

    def export(self) -> dict[str, Any]:
        """Return the aggregate, the count of others' events and what was lost."""
        stuck = sum(p.run for p in self._pending.values())
        if stuck:
            self.lose(f"{stuck} events in deleted directories could not be named")
        return {**self.agg.export(), "others": self.others, "lost": self.lost}

    def _record(self, path: str, event: Event) -> None:
        """Count an event of a writer outside the run, or aggregate a run's event."""
        if event.pid == 0:
            self.others += 1
            return
        self.agg.add(path, event.mask, self.module)
        if event.mask & FAN_MOVED_TO and not event.mask & FAN_ONDIR:
            self._moved_to[event.pid] = path

    def _nameless(self, event: Event) -> None:
        """An event without a name (the nlink change of a replaced or linked
        file): right after a MOVED_TO by the same process, the target existed."""
        path = self._moved_to.pop(event.pid, None)
        if path is not None and event.mask & FAN_ATTRIB:
            self.agg.replaced(path)

    def _track_dir(self, event: Event, path: str, wanted: bool) -> None:
        """Keep the directory cache and the aggregate right for an entry event on
        a subdirectory: renames, creations, deletions, held events."""
        assert event.dir_key is not None
        child = event.obj_key or _NO_TARGET
        if event.mask & FAN_MOVED_FROM:
            self._moving[child] = (path, event.dir_key, event.name)
        if event.mask & (FAN_CREATE | FAN_MOVED_TO):
            moved = self._moving.pop(child, None)
            if moved is not None:
                self._renamed(moved, path, event)
            if event.obj_key:
                self.resolver.learn(event.obj_key, event.dir_key, event.name)
        if event.mask & FAN_DELETE and event.obj_key:
            self.resolver.learn(event.obj_key, event.dir_key, event.name)
        if event.obj_key and event.obj_key in self._pending:
            self._release(event.obj_key, path, wanted)

    def _renamed(self, moved: tuple[str, bytes, str], path: str, event: Event) -> None:
        """A directory moved from `moved` (path, parent key, name) to `path`."""
        old, old_dir, old_name = moved
        if old == path:
            return
        assert event.dir_key is not None
        if not event.obj_key:
            self.resolver.rebind((old_dir, old_name), (event.dir_key, event.name))
        if OUTSIDE not in (old, path):
            self.agg.rename(old, path)

    def _defer(self, event: Event) -> None:
        """Hold an event of a directory that cannot be named (yet)."""
        assert event.dir_key is not None
        held = self._pending.setdefault(event.dir_key, Pending())
        if event.mask & VANISHED:
            if event.pid == 0:
                held.others += 1
            else:
                held.run += 1
                held.module = held.module if held.run > 1 else self.module
        if event.mask & FAN_ONDIR and event.obj_key and event.name not in ("", "."):
            held.subdirs[event.obj_key] = event.name
            if not self.resolver.known(event.obj_key):
                self.resolver.learn(event.obj_key, event.dir_key, event.name)

    def _release(self, key: bytes, path: str, wanted: bool) -> None:
        """The held directory `key` turned out to be `path`: fold what vanished in
        it (and in its held subdirectories) into `path`."""
        run, others, module = self._collect(key)
        if not wanted:
            return
        self.others += others
        self.agg.add_count(path, run, module)

    def _collect(self, key: bytes) -> tuple[int, int, str | None]:
        """Remove `key` and its held subdirectories; return their counts and module."""
        run, others, module = 0, 0, None
        stack = [key]
        while stack:
            held = self._pending.pop(stack.pop(), None)
            if held is None:
                continue
            run, others = run + held.run, others + held.others
            module = module if module is not None else held.module
            stack.extend(held.subdirs)
        return run, others, module
