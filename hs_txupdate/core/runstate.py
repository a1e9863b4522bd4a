"""One-time steps never run twice: a module's run state survives a rollback that leaves
its outside-scope changes in place.

A module records what it has done in its own index.json (`has_run` flags of
migrations and hotfixes, component flags, ...), which lies in its module dir, in
scope. When the run changed paths outside the scope that a rollback cannot put
back, rolling the module dir back would make the next run apply those steps a
second time over effects that stayed. So the run state of each such module is
read before the restore and merged, the way phase 1 keeps local state across
module updates, into the restored index.json after it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..base.fsio import durable_write
from ..journal import Phase, Step, TxInfo
from ..modules.merge import merge_local_state
from .context import Context


def read_run_states(ctx: Context, info: TxInfo) -> dict[str, dict[str, Any]]:
    """The index.json, as the run left it, of every module that changed paths outside
    the scope of `info` (unreadable ones are left out)."""
    states = {}
    for name in sorted({o.module for o in info.outside if o.module}):
        index = _read(ctx.config.modules_dir / name / "index.json")
        if index is not None:
            states[name] = index
    return states


def keep_run_states(ctx: Context, tx_id: int, states: dict[str, dict[str, Any]]) -> None:
    """After the restore: merge each module's run state back into its index.json."""
    for name, left in states.items():
        path = ctx.config.modules_dir / name / "index.json"
        restored = _read(path)
        if restored is None:
            continue
        merged = merge_local_state(left, restored)
        if merged == restored:
            continue
        with ctx.journal.step(tx_id, Phase.ROLLBACK, Step.KEEP_RUN_STATE, {"module": name}):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            durable_write(path, (json.dumps(merged, indent=2) + "\n").encode(), mode)
        ctx.log(f"hs-tx: kept the run state of module {name} (its changes outside the scope stay)")


def _read(path: os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
