"""Helpers shared by the shipped `migrations` and `hotfix` modules.

Each module is installed, replaced and rolled back on its own, so each carries
its own copy of this file; the two copies are kept byte-identical (a test
checks it). Nothing here imports hs_txupdate: the modules must also run under
the HOMESERVER orchestrator.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from updates.index import log_message
except ImportError:  # run by hand or by a test, outside any orchestrator

    def log_message(message: str, level: str = "INFO") -> None:
        """Print one log line (stand-in for the orchestrator's log_message)."""
        print(f"[{level}] {message}", flush=True)


# Ids name script files, so they must not be able to name anything else.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DefinitionError(ValueError):
    """The module's index.json (or an argument) is not what the module expects."""


@dataclass(frozen=True)
class ScriptResult:
    """How one script run ended: its exit status, or None when it timed out."""

    returncode: int | None
    timeout_s: float

    def error(self) -> str:
        """Why the run failed, or "" when it succeeded."""
        if self.returncode is None:
            return f"timed out after {self.timeout_s:g} s"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return "" if self.returncode == 0 else f"exit status {self.returncode}"


def failure(error: str, **extra: Any) -> dict[str, Any]:
    """A failed result for the orchestrator, logged as an error."""
    log_message(error, "ERROR")
    return {"success": False, "error": error, **extra}


def parse_flags(args: object, known: Iterable[str]) -> set[str]:
    """The flags in `args` (None or a list of strings); DefinitionError for anything else.

    Unknown words are refused: a mistyped `--chek` must not run everything.
    """
    if args is None:
        return set()
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise DefinitionError(f"arguments must be a list of strings, not {args!r}")
    allowed = set(known)
    unknown = [a for a in args if a not in allowed]
    if unknown:
        raise DefinitionError(f"unknown argument(s): {' '.join(unknown)}")
    return set(args)


def check_id(value: object, what: str) -> str:
    """`value` if it can name a script file; DefinitionError otherwise."""
    if not isinstance(value, str) or not _ID.match(value) or ".." in value:
        raise DefinitionError(
            f"{what} has id {value!r}; an id is letters, digits, '_', '-' and '.'"
        )
    return value


def load_index(path: Path) -> dict[str, Any]:
    """The parsed index.json at `path`; DefinitionError when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DefinitionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path} must hold a JSON object")
    return data


def config_section(index: dict[str, Any]) -> dict[str, Any]:
    """`configuration` (hs-tx style) or `config` (older HOMESERVER modules), else {}."""
    section = index.get("configuration", index.get("config", {}))
    if not isinstance(section, dict):
        raise DefinitionError("'configuration' must be an object")
    return section


def script_timeout(index: dict[str, Any], default: float) -> float:
    """configuration.script_timeout in seconds (positive), or `default`."""
    value = config_section(index).get("script_timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError("configuration.script_timeout must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise DefinitionError("configuration.script_timeout must be positive")
    return float(value)


def schema_version(index: dict[str, Any]) -> str:
    """metadata.schema_version as a string ("unknown" when absent)."""
    meta = index.get("metadata")
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    return str(version) if version is not None else "unknown"


def item_list(index: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The top-level list `key` of objects (migrations, targets) with unique valid ids."""
    items = index.get(key)
    if not isinstance(items, list):
        raise DefinitionError(f"index.json has no '{key}' list")
    seen: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise DefinitionError(f"{key}[{n}] must be an object")
        item_id = check_id(item.get("id"), f"{key}[{n}]")
        if item_id in seen:
            raise DefinitionError(f"{key}: id {item_id} is listed twice")
        seen.add(item_id)
        if not isinstance(item.get("has_run", False), bool):
            raise DefinitionError(f"{key}: {item_id} has_run must be true or false")
        if not isinstance(item.get("description", ""), str):
            raise DefinitionError(f"{key}: {item_id} description must be a string")
    return items


# ---------------------------------------------------------------- durable has_run


def json_layout(text: str) -> tuple[int | str | None, bool]:
    """The indentation (spaces count, a tab string, or None for one line) of a JSON
    document, and whether it ends with a newline, so a rewrite keeps its look."""
    for line in text.splitlines()[1:]:
        body = line.lstrip(" \t")
        if body and len(body) != len(line):
            lead = line[: len(line) - len(body)]
            return (lead if "\t" in lead else len(lead)), text.endswith("\n")
    return None, text.endswith("\n")


def write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync dir.

    The temp file gets the old file's mode and owner first, so a crash leaves
    either the old or the new file, and never one with other permissions.
    """
    st = os.stat(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def mark_has_run(index_path: Path, key: str, item_id: str) -> None:
    """Set has_run true for `item_id` in list `key` of `index_path`, durably.

    Re-reads the file first, so whatever a script changed in it is kept; the
    rewrite keeps the file's indentation. Raises DefinitionError or OSError.
    """
    text = index_path.read_text(encoding="utf-8")
    index = json.loads(text)
    items = index.get(key) if isinstance(index, dict) else None
    matches = [i for i in items or [] if isinstance(i, dict) and i.get("id") == item_id]
    if len(matches) != 1:
        raise DefinitionError(f"{item_id} is no longer listed once in {index_path}")
    matches[0]["has_run"] = True
    indent, newline = json_layout(text)
    out = json.dumps(index, indent=indent) + ("\n" if newline else "")
    write_durably(index_path, out.encode("utf-8"))


# ---------------------------------------------------------------- running scripts


def run_script(argv: Sequence[str], cwd: Path, timeout_s: float) -> ScriptResult:
    """Run `argv` (no shell) with its output on this process's stdout, at most `timeout_s`.

    The child stays in our process group, so an orchestrator that kills the
    module's group kills it too; on our own timeout the child and everything
    it started are killed.
    """
    # our own buffered lines must come out before the child's
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        return ScriptResult(proc.wait(timeout=timeout_s), timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        return ScriptResult(None, timeout_s)
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it exited while we looked
        # the command name may hold spaces and ')': fields start after the last ')'
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants. They are stopped first, so none can fork
    a new child between the look at /proc and the kill."""
    frozen: set[int] = set()
    for _ in range(5):
        new = [p for p in _tree(pid) if p not in frozen]
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen.update(new)
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
