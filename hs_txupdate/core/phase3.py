"""Phase 3, self-update: install a newer hs-tx from the source and re-execute it.

The orchestrator's version is `metadata.schema_version` of the source's
top-level index.json. When it is higher than the running hs-tx, the source's
code is installed into the environment that runs hs-tx (its install dir is in
the scope, so a rollback brings the old code back), the new code is probed,
and hs-tx re-executes the new entry point to finish the same transaction.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..base.errors import HsTxError
from ..base.proc import CommandError, run
from ..journal import Phase, Status, Step
from ..snapshot.entries import remove_entry
from ..sync.git import SourceState, check_tree, export_tree, read_blob
from ..sync.versions import Version, VersionError
from .context import Context
from .lock import StateLock

RESUME_ENV = "HS_TX_RESUME"
LOCK_FD_ENV = "HS_TX_LOCK_FD"


class SelfUpdateError(HsTxError):
    """The new hs-tx could not be installed or does not start."""


@dataclass(frozen=True)
class SelfUpdate:
    """A planned self-update: from the running version to the source's."""

    version_from: str
    version_to: str
    install_dir: Path

    @property
    def entry_point(self) -> Path:
        """The `hs-tx` command of the environment being updated."""
        return self.install_dir / "bin" / "hs-tx"


def install_dir() -> Path:
    """The virtualenv that runs this hs-tx (the dir phase 3 replaces)."""
    return Path(sys.prefix)


def plan(state: SourceState) -> tuple[SelfUpdate | None, str | None]:
    """Compare the source's orchestrator version with the running one.

    Returns the planned self-update (or None) and a note for the operator. Raises
    BadTreeEntry / SourceError when the source could not be exported (see check_tree).
    """
    data = read_blob(state, "index.json")
    if data is None:
        return None, None
    try:
        raw = json.loads(data).get("metadata", {}).get("schema_version")
        incoming = Version.parse(raw)
    except (ValueError, AttributeError, VersionError, RecursionError):
        return None, "the source's index.json has no valid metadata.schema_version; no self-update"
    if incoming <= Version.parse(__version__):
        return None, None
    if sys.prefix == sys.base_prefix:
        return None, (
            f"hs-tx {incoming} is available but this hs-tx does not run from a virtualenv;"
            " install it by hand"
        )
    check_tree(state, "")  # the whole source is exported mid-run: refuse it now
    return SelfUpdate(__version__, str(incoming), install_dir()), None


def preload() -> None:
    """Import every hs-tx module now: once pip replaces the files on disk, a rollback
    must still run the old code, never a mix of old and new."""
    import pkgutil

    import hs_txupdate

    skip = ("hs_txupdate.compat", "hs_txupdate.migrations", "hs_txupdate.cli.__main__")
    for info in pkgutil.walk_packages(hs_txupdate.__path__, "hs_txupdate."):
        if not info.name.startswith(skip):
            importlib.import_module(info.name)


def install(state: SourceState, update: SelfUpdate, work_dir: Path) -> None:
    """Install the source's hs-tx into `update.install_dir`, then probe that it starts.

    Raises SelfUpdateError when pip fails or the new code does not report
    the expected version.
    """
    source = work_dir / "source"
    if work_dir.exists():
        remove_entry(work_dir)
    work_dir.mkdir(mode=0o700, parents=True)
    try:
        export_tree(state, "", source)
        python = str(update.install_dir / "bin" / "python")
        try:
            run(
                [
                    python,
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--quiet",
                    str(source),
                ],
                timeout=900,
            )
        except CommandError as exc:
            raise SelfUpdateError(f"installing hs-tx {update.version_to} failed: {exc}") from exc
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    probe(update)


def probe(update: SelfUpdate) -> None:
    """Run the new entry point's `--version`; raise SelfUpdateError unless it works."""
    try:
        result = run([str(update.entry_point), "--version"], check=False, timeout=120)
    except CommandError as exc:
        raise SelfUpdateError(f"the new hs-tx does not start: {exc}") from exc
    said = (result.stdout or result.stderr).strip()
    if result.returncode != 0 or said.split()[-1:] != [update.version_to]:
        detail = said.splitlines()[-1] if said else f"exit {result.returncode}"
        raise SelfUpdateError(
            f"the new hs-tx {update.version_to} does not start: {detail}",
            "the transaction is rolled back to the old code",
        )


def reexec(update: SelfUpdate, argv: list[str], tx_id: int, lock_fd: int) -> None:
    """Replace this process with the new entry point, finishing transaction `tx_id`.

    The lock's file descriptor is inherited, so the lock is never released.
    Returns only if execve fails (raising OSError).
    """
    os.set_inheritable(lock_fd, True)
    env = {**os.environ, RESUME_ENV: str(tx_id), LOCK_FD_ENV: str(lock_fd)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(update.entry_point, [str(update.entry_point), *argv[1:]], env)


def self_update(
    ctx: Context, tx_id: int, update: SelfUpdate, state: SourceState, lock: StateLock
) -> None:
    """Install the new hs-tx into its environment and re-execute it to finish
    transaction `tx_id`, journaled. Returns only by raising (SelfUpdateError,
    OSError); on success this process becomes the new hs-tx."""
    detail = {"from": update.version_from, "to": update.version_to, "dir": str(update.install_dir)}
    ctx.log(f"hs-tx: updating hs-tx itself {update.version_from} -> {update.version_to}")
    preload()
    with ctx.journal.step(tx_id, Phase.SELF_UPDATE, Step.INSTALL, detail):
        install(state, update, ctx.config.state_dir / f"selfupdate-{tx_id}")
    # its `done` is written by the new code, once it runs (see commands.update)
    ctx.journal.event(tx_id, Phase.SELF_UPDATE, Step.EXEC, Status.INTENT, detail)
    reexec(update, ctx.argv, tx_id, lock.fd)
