"""Asking a module's own app repository which branches it has, before hs-tx points the
module at one of them (`hs-tx modules branch`)."""

from __future__ import annotations

from ..base.proc import CommandError, run, run_watched
from .git import QUIET_ENV, SourceError

LS_REMOTE_TIMEOUT_S = 60


def check_branch_name(branch: str) -> bool:
    """True when `branch` is a valid git branch name (git check-ref-format's rules, and
    no leading '-', which a command would read as an option)."""
    if not branch or branch.startswith("-"):
        return False
    result = run(["git", "check-ref-format", f"refs/heads/{branch}"], check=False)
    return result.returncode == 0


def remote_branches(url: str) -> list[str]:
    """The branches of the repository at `url`, sorted, read with `git ls-remote` (never
    a prompt; no `ext::` transport; its session killed whole at the timeout).

    Raises SourceError naming `url` when it cannot be reached or read.
    """
    argv = ["git", "-c", "protocol.ext.allow=never", "ls-remote", "--heads", "--", url]
    try:
        result = run_watched(argv, timeout=LS_REMOTE_TIMEOUT_S, env=QUIET_ENV, keep_stdout=True)
    except CommandError as exc:
        raise SourceError(
            f"cannot reach the repository {url}: {exc.message}",
            "check the module's repository url and this box's network; nothing was changed",
        ) from exc
    prefix = "refs/heads/"
    names = []
    for line in result.stdout.splitlines():
        _sha, _, ref = line.partition("\t")
        if ref.startswith(prefix):
            names.append(ref[len(prefix) :])
    return sorted(names)
