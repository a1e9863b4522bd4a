"""The one place hs-tx runs short helper commands (argument lists, never a shell).

Module workers, which stream output and have timeouts, are started by
`hs_txupdate.modules.runner`, which builds on `child_env` from here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .crashpoints import ENV_NAMES as CRASH_ENV_NAMES
from .errors import HsTxError

# Variables that would redirect git to another repository, work tree or config.
GIT_ENV_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CEILING_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
)
# Never reach a child: the crash points belong to this process alone.
_SCRUBBED_ENV = frozenset((*CRASH_ENV_NAMES, *GIT_ENV_VARS))


@dataclass(frozen=True)
class Result:
    """What a finished command gave back."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(HsTxError):
    """A helper command failed or could not be started."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without the variables children must not see."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    input_text: str | None = None,
    pass_stderr: bool = False,
) -> Result:
    """Run a command given as an argument list and return its Result.

    With `pass_stderr` the command's stderr goes to hs-tx's own (for output an
    operator should see as it comes) and `Result.stderr` is empty.
    Raises CommandError when it cannot start, times out, or (with `check`)
    exits non-zero; the message names the command and its stderr.
    """
    args = tuple(str(a) for a in argv)
    try:
        proc = subprocess.run(
            args,
            input=input_text,
            stdout=subprocess.PIPE,
            stderr=None if pass_stderr else subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=child_env(),
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"command not found: {args[0]}", "install it (scripts/setup.sh)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(args)} timed out after {timeout} s", "") from exc
    result = Result(args, proc.returncode, proc.stdout, proc.stderr or "")
    if check and proc.returncode != 0:
        # the first line usually names the cause; later ones often only summarise
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        first = detail[0] if detail else f"exit {proc.returncode}"
        raise CommandError(f"{args[0]} failed: {first}", f"command was: {' '.join(args)}")
    return result
