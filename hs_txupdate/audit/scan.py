"""The audit's fallback: one walk of the watched roots for entries whose ctime
is not older than the audit's start (lstat, no symlink followed, ignored and
hs-tx's own paths and unaudited mounts left out). It sees no deletions."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence

from .events import FAN_ATTRIB, FAN_MODIFY
from .fold import Aggregator, Change, classify
from .paths import Mount, is_own, is_watched, skipped

SCAN_NOTE = (
    "entries changed since the start were found by a scan: writers are not known and "
    "deletions are not seen (a directory whose entries were deleted shows as modified)"
)


def changed_since(
    roots: Sequence[str], ignores: Sequence[str], since_ns: int, mounts: Sequence[Mount]
) -> list[Change]:
    """Return the entries below `roots` whose ctime >= `since_ns`, folded and
    sorted by path, each with module None ("modified" when its content or
    entries changed, else "metadata")."""
    skip = {m.point for m in mounts if skipped(m.fstype)}
    agg = Aggregator(os.path.lexists)
    seen: set[str] = set()
    for root in roots:
        for path, st in _walk(root, roots, ignores, skip):
            if path in seen or st.st_ctime_ns < since_ns:
                continue
            seen.add(path)
            agg.add(path, FAN_MODIFY if st.st_mtime_ns >= since_ns else FAN_ATTRIB, None)
    return classify(agg.export(), os.path.lexists, count_tree)


def _walk(
    root: str, roots: Sequence[str], ignores: Sequence[str], skip: set[str]
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (path, lstat) of `root` and every entry below it that the audit watches."""
    try:
        yield root, os.lstat(root)
    except OSError:
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            path = entry.path
            if is_own(path) or not is_watched(path, roots, ignores) or path in skip:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)


def count_tree(path: str) -> int:
    """Return how many entries lie below the directory `path` now (not following
    symlinks); 0 when it cannot be read."""
    count = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return count
