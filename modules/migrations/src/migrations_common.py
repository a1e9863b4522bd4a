"""Helpers for migration scripts: `import migrations_common`.

The runner starts `python src/<id>.py`, so this directory is `sys.path[0]` of
every migration. A migration must be idempotent: find out whether its change
is already there, and if so say so and exit 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def migration_id() -> str:
    """The id of the running migration (its script's name without `.py`)."""
    return Path(sys.argv[0]).stem


def log(message: str, level: str = "INFO") -> None:
    """Print one line, tagged with the migration id; the orchestrator keeps it."""
    print(f"[migration {migration_id()}] [{level}] {message}", flush=True)


def fail(message: str) -> NoReturn:
    """Log `message` as an error and exit 1 (the migration stays pending)."""
    log(message, "ERROR")
    sys.exit(1)


def require_root() -> None:
    """Fail unless running as root."""
    if os.geteuid() != 0:
        fail("must run as root")


def env_path(name: str) -> Path | None:
    """The absolute path in environment variable `name`, or None when unset or empty.

    Fails (exit 1) on a relative path: the working directory is not a place
    a migration should write to by accident.
    """
    value = os.environ.get(name, "")
    if not value:
        return None
    if not os.path.isabs(value) or "\0" in value:
        fail(f"{name} must be an absolute path, not {value!r}")
    return Path(os.path.normpath(value))


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk, so a new name survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o755) -> bool:
    """Make sure `path` is a directory; return True if it had to be created.

    Missing parents are created too. An existing directory is left as it is
    (its mode included); anything else in the way fails the migration.
    """
    if path.is_dir():
        return False
    if os.path.lexists(path):
        fail(f"{path} exists and is not a directory")
    ensure_dir(path.parent, mode)
    os.mkdir(path, mode)
    os.chmod(path, mode)  # the umask must not decide the mode
    fsync_dir(path.parent)
    return True


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably (temp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)
