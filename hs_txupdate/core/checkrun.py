"""The process that runs every module's `main(["--check"])` where nothing can stick.

Started by `hs-tx update --check` as
`unshare --mount --propagation unchanged -- python -m hs_txupdate.core.checkrun SPEC_JSON`.
In that new mount namespace it makes every mount private, mounts a scratch
tmpfs over the state dir, assembles a throwaway copy of the whole system on it
(modules.checkroot), starts the write audit over the real filesystems, and runs
each module chrooted into the copy. It prints one JSON document on stdout: per
module its outcome, what it would have written (from the overlays) and which
service commands it called (from the recorder); and what, if anything, reached
the real filesystems (the audit's proof).

Where `/` is not a mount point (a chroot), it cannot be made private as a
whole; then the scratch mount is checked against the parent's view of the
mount table, and one that shows there (it propagated) is taken down again and
the check refused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..audit import Audit
from ..base.errors import HsTxError
from ..base.proc import run
from ..modules.checkroot import SERVICES_LOG, IsolationError, assemble, changes
from ..modules.discovery import load_module
from ..modules.runner import Runtime, run_module


def _mount_points(pid: int | str = "self") -> list[Path]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [Path(p.encode().decode("unicode_escape")) for p in points]


def _scratch(state_dir: Path, parent: int) -> None:
    """Make the namespace's mounts private and mount the scratch tmpfs over the state
    dir; raise IsolationError (mount taken down) when it shows in the parent's."""
    run(["mount", "--make-rprivate", "/"], check=False)  # fails only where / is no mount
    before = _mount_points(parent).count(state_dir)
    run(["mount", "-t", "tmpfs", "-o", "mode=0700", "hs-tx-check", str(state_dir)])
    if _mount_points(parent).count(state_dir) > before:
        run(["umount", str(state_dir)], check=False)
        raise IsolationError(
            f"cannot isolate the checks: a mount on {state_dir} would be seen outside",
            "the filesystem is mounted shared and / is not a mount point (a chroot?);"
            " run hs-tx update --check on the host",
        )
    run(["mount", "--make-rprivate", str(state_dir)])


def _services(log: Path, seen: int) -> tuple[list[str], int]:
    """The recorder's lines after the first `seen`, and how many there are now."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    return lines[seen:], len(lines)


def check_all(spec: dict[str, Any]) -> dict[str, Any]:
    """Isolate, audit and run every module's check; return the report.

    Raises IsolationError when the copy of the system cannot be assembled.
    """
    state_dir = Path(spec["state_dir"])
    _scratch(state_dir, os.getppid())
    root, layers = assemble(state_dir, state_dir)
    audit = Audit.start([Path(p) for p in spec["watch"]], [Path(p) for p in spec["ignore"]])
    log = state_dir / "state" / SERVICES_LOG  # the recorder's, as seen from the real root
    results: list[dict[str, Any]] = []
    written: dict[str, str] = {}
    seen = 0
    runtime = Runtime(*spec["runtime"])
    real_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    with audit:
        for name in spec["modules"]:
            audit.window(name)
            outcome = _in_root(root, real_root, _run_one, spec, name, runtime)
            calls, seen = _services(log, seen)
            now = changes(layers)
            would = {p: c for p, c in now.items() if written.get(p) != c}
            written.update(now)
            results.append(
                {
                    **outcome,
                    "would_write": [{"path": p, "change": c} for p, c in would.items()],
                    "services": calls,
                }
            )
        audit.window(None)
        proof = audit.finish()
    leaked = [{"path": c.path, "change": c.change, "module": c.module} for c in proof.changes]
    return {
        "modules": results,
        "audit": {"method": proof.method, "reason": proof.reason, "leaked": leaked},
    }


def _run_one(spec: dict[str, Any], name: str, runtime: Runtime) -> dict[str, Any]:
    """Run module `name`'s check (inside the copy); return its outcome."""
    module = load_module(Path(spec["modules_dir"]) / name)
    outcome = run_module(
        module, ["--check"], echo=_to_stderr, extra_env=spec["env"], runtime=runtime
    )
    return {
        "name": name,
        "status": outcome.status,
        "error": outcome.error,
        "result": outcome.result,
    }


def _in_root(root: Path, real_root: int, work: Any, *args: Any) -> Any:
    """Run `work(*args)` chrooted into the copy of the system at `root`, then return to
    the real root (open as `real_root`), whatever happens."""
    os.chroot(root)
    os.chdir("/")
    try:
        return work(*args)
    finally:
        os.fchdir(real_root)
        os.chroot(".")


def _to_stderr(line: str) -> None:
    sys.stderr.write(line)


def main(argv: list[str]) -> int:
    """Entry point: run the checks, print the report as JSON on stdout."""
    try:
        report = check_all(json.loads(argv[0]))
    except HsTxError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv[1:]))
