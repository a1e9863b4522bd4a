"""Reading a git repository's objects through one `git cat-file --batch` process.

hs-tx reads the source from commit objects only (no work tree): a commit's tree, the
trees under it and their blobs, by object id. One long-lived `git cat-file` answers
every read of a run, so a read costs a pipe round trip, not a process; and nothing
heavier than the one subprocess runner is imported (an update that has nothing to do
spends most of its time starting up).
"""

from __future__ import annotations

import contextlib
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..base.proc import CommandError, start_coprocess

_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}|refs/[A-Za-z0-9/._-]+")
_HEADER = re.compile(rb"([0-9a-f]{40}|[0-9a-f]{64}) (\S+) (\d+)\n")
_COMMITTER = re.compile(rb"^committer .* (\d+) [+-]\d{4}$", re.MULTILINE)
_TREE = re.compile(rb"^tree ([0-9a-f]+)$", re.MULTILINE)
_CACHED_TREES = 1024  # the trees a reader keeps (a modules repository has a few dozen)


class ObjectError(CommandError):
    """An object could not be read (the repository is damaged, or git went away)."""


@dataclass(frozen=True)
class GitObject:
    """One object: its id, its type (commit, tree, blob, tag) and its bytes."""

    oid: str
    kind: str
    data: bytes


@dataclass(frozen=True)
class Entry:
    """One entry of a tree: its mode as git records it, its name, its object id, and
    its path from the tree a walk started at."""

    mode: int
    name: str
    oid: str
    path: str

    @property
    def is_tree(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_submodule(self) -> bool:
        """A gitlink: a commit of another repository, which no export can hold."""
        return self.mode & 0o170000 == 0o160000


class ObjectReader:
    """The objects of the repository at `git_dir`. The `git cat-file --batch` process is
    started by the first read (again after it went away) and ended by `close`."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self._proc: subprocess.Popen[bytes] | None = None
        # trees looked up (entries at the top) and commit roots, by object id: an object
        # never changes, and a path is looked up from the root tree each time (a run
        # reads each module's index.json)
        self._trees: dict[str, list[Entry]] = {}
        self._roots: dict[str, str] = {}

    def read(self, name: str) -> GitObject | None:
        """The object `name` (an object id or a full ref name), or None when the
        repository has none such. Raises ObjectError when it cannot be read."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not an object id or ref name: {name!r}")
        for attempt in (1, 2):
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(name.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline()
                if header.endswith((b" missing\n", b" ambiguous\n")):
                    return None
                found = _HEADER.fullmatch(header)
                if found is None:
                    raise OSError(f"git cat-file answered {header[:80]!r}")
                size = int(found.group(3))
                data = proc.stdout.read(size + 1)
                if len(data) != size + 1:
                    raise OSError("git cat-file ended in the middle of an object")
            except OSError as exc:  # gone (e.g. killed with a pid namespace): start again
                self.close()
                if attempt == 2:
                    raise ObjectError(f"cannot read {name} from {self.git_dir}: {exc}", "") from exc
                continue
            return GitObject(found.group(1).decode(), found.group(2).decode(), data[:-1])
        raise AssertionError("unreachable")

    def resolve(self, ref: str) -> str | None:
        """The id of the object `ref` names, or None."""
        found = self.read(ref)
        return found.oid if found is not None else None

    def commit_tree(self, commit: str) -> str:
        """The id of commit `commit`'s root tree. Raises ObjectError when it is no commit."""
        if commit not in self._roots:
            self._roots[commit] = self._commit_field(commit, _TREE).decode()
        return self._roots[commit]

    def committed_at(self, commit: str) -> int:
        """The committer time of commit `commit`, in seconds since the epoch."""
        return int(self._commit_field(commit, _COMMITTER))

    def _commit_field(self, commit: str, field: re.Pattern[bytes]) -> bytes:
        """What `field` (one group) finds in commit `commit`'s header. Raises
        ObjectError when it is no commit or has no such line."""
        found = self.read(commit)
        match = field.search(found.data) if found is not None and found.kind == "commit" else None
        if match is None:
            raise ObjectError(f"{commit} is not a commit of {self.git_dir} with that line", "")
        return match.group(1)

    def entries(self, tree: str, path: str = "") -> list[Entry]:
        """The entries of tree `tree`, in its order, their paths under `path`.
        Raises ObjectError when `tree` is no tree, ValueError when it is malformed."""
        cached = self._trees.get(tree) if not path else None
        if cached is not None:
            return list(cached)
        found = self.read(tree)
        if found is None or found.kind != "tree":
            raise ObjectError(f"{tree} is not a tree of {self.git_dir}", "")
        entries = parse_tree(found.data, len(tree) // 2, path)
        if not path and len(self._trees) < _CACHED_TREES:
            self._trees[tree] = entries
        return list(entries)

    def close(self) -> None:
        """End the cat-file process, if one runs (it exits when its input closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe to a git already gone
                    pipe.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            argv = ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"]
            self._proc = start_coprocess(argv)
        return self._proc


def parse_tree(data: bytes, hash_size: int, path: str = "") -> list[Entry]:
    """The entries of a tree object's bytes `data` (object ids of `hash_size` bytes),
    their paths under `path`. Raises ValueError when `data` is no well-formed tree."""
    entries = []
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        end = data.index(b"\0", space)
        oid = data[end + 1 : end + 1 + hash_size]
        if len(oid) != hash_size:
            raise ValueError("a tree object ends in the middle of an entry")
        name = data[space + 1 : end].decode("utf-8", "surrogateescape")
        mode = int(data[pos:space], 8)
        entries.append(Entry(mode, name, oid.hex(), f"{path}/{name}" if path else name))
        pos = end + 1 + hash_size
    return entries
