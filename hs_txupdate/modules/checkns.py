"""Running every module's `main(["--check"])` where nothing it writes can stick.

Started by `hs-tx update --check` as
`unshare --mount --propagation unchanged -- python -m hs_txupdate.modules.checkns SPEC_JSON`.
In that new mount namespace it makes every mount private, mounts a tmpfs over
the state dir, lays an overlay with a throwaway upper dir (on that tmpfs)
over every scope path, runs the checks, and prints their outcomes as one JSON
document on stdout. When the process ends, the namespace and everything
written into it are gone.

Where `/` is not a mount point (a chroot), it cannot be made private as a
whole; then every mount it makes is checked against the parent's view of the
mount table, and one that shows there (it propagated) is taken down again
and the check refused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..base.errors import HsTxError
from ..base.proc import run
from .discovery import load_module
from .runner import Runtime, run_module


class IsolationError(HsTxError):
    """A scope path cannot be put under an overlay, so its check cannot be isolated."""


def mount_points(pid: int | str = "self") -> list[Path]:
    """Every mount point of the mount namespace of process `pid`."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [Path(p.encode().decode("unicode_escape")) for p in points]


def mount_private(argv: list[str], where: Path, parent: int) -> None:
    """Run a mount command for `where`, then make sure it did not propagate to the
    parent's namespace; if it did, take it down (the unmount propagates as well)
    and raise IsolationError."""
    before = mount_points(parent).count(where)
    run(argv)
    if mount_points(parent).count(where) > before:
        run(["umount", str(where)], check=False)
        raise IsolationError(
            f"cannot isolate the checks: a mount on {where} would be seen outside",
            "the filesystem is mounted shared and / is not a mount point (a chroot?);"
            " run hs-tx update --check on the host",
        )


def overlay_targets(paths: list[Path]) -> list[Path]:
    """The directories to overlay so that every path in `paths` is covered:
    a directory itself, else its nearest existing ancestor; none inside another."""
    targets = set()
    for path in paths:
        target = path
        while not (target.is_dir() and not target.is_symlink()):
            target = target.parent
        targets.add(target)
    folded: list[Path] = []
    for target in sorted(targets, key=lambda p: len(p.parts)):
        if not any(target.is_relative_to(t) for t in folded):
            folded.append(target)
    return folded


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def isolate(state_dir: Path, paths: list[Path], parent: int) -> None:
    """Make mounts private, mount the tmpfs and one overlay per target. Raises
    IsolationError when a mount would propagate, or when a target holds other
    mount points, which an overlay would hide from the checks."""
    run(["mount", "--make-rprivate", "/"], check=False)  # fails only where / is no mount
    tmpfs = ["mount", "-t", "tmpfs", "-o", "mode=0700", "hs-tx-check", str(state_dir)]
    mount_private(tmpfs, state_dir, parent)
    mounts = mount_points()
    for n, target in enumerate(overlay_targets(paths)):
        inner = [m for m in mounts if m != target and m.is_relative_to(target)]
        if inner and not (len(inner) == 1 and inner[0] == state_dir):
            raise IsolationError(
                f"cannot isolate the checks: {target} holds the mount point {inner[0]}",
                "create the missing scope paths, or run the checks without --check",
            )
        upper, work = state_dir / f"upper{n}", state_dir / f"work{n}"
        upper.mkdir()
        work.mkdir()
        options = f"lowerdir={_escape(target)},upperdir={_escape(upper)},workdir={_escape(work)}"
        mount_private(
            ["mount", "-t", "overlay", "-o", options, "hs-tx-check", str(target)], target, parent
        )


def _to_stderr(line: str) -> None:
    sys.stderr.write(line)


def main(argv: list[str]) -> int:
    """Entry point: isolate, run the checks, print the outcomes as JSON on stdout."""
    spec = json.loads(argv[0])
    modules_dir = Path(spec["modules_dir"])
    try:
        isolate(Path(spec["state_dir"]), [Path(p) for p in spec["scope"]], os.getppid())
    except HsTxError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    results = []
    runtime = Runtime(*spec["runtime"])
    for name in spec["modules"]:
        module = load_module(modules_dir / name)
        outcome = run_module(
            module, ["--check"], echo=_to_stderr, extra_env=spec["env"], runtime=runtime
        )
        results.append(
            {
                "name": name,
                "status": outcome.status,
                "error": outcome.error,
                "result": outcome.result,
            }
        )
    sys.stdout.write(json.dumps({"modules": results}) + "\n")
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv[1:]))
