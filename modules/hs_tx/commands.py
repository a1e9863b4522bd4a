"""Running the module's systemctl commands: argument lists, no shell, a timeout."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence

from .definition import log_message

OUTPUT_TAIL_CHARS = 2000


def run_command(argv: Sequence[str], timeout_s: float) -> str:
    """Run `argv` (never through a shell) for at most `timeout_s`; return "" or why it failed.

    The command's output is logged on success and ends the error on failure, so
    the journal shows what systemctl said either way.
    """
    shown = shlex.join(argv)
    log_message(f"hs_tx: running {shown}")
    sys.stdout.flush()
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{shown} timed out after {timeout_s:g} s"
    except OSError as exc:
        return f"{shown} could not be started: {exc}"
    output = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        if output:
            log_message(f"hs_tx: {output[-OUTPUT_TAIL_CHARS:]}")
        return ""
    status = (
        f"killed by signal {-proc.returncode}"
        if proc.returncode < 0
        else f"exit status {proc.returncode}"
    )
    return f"{shown} failed: {status}" + (f": {output[-OUTPUT_TAIL_CHARS:]}" if output else "")
