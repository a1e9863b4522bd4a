"""`hs-tx update --progress=json|lines`: one line on stdout per step of the run, for a
web UI's progress bar (json) or the Admin UI's log (lines), made from the journal's
events as they are written.

A json line: {"tx", "phase", "step", "status", "module", "percent"}; `percent` is
known while modules run (the share of the planned modules that finished) and at the
decision (100), null elsewhere. A lines line: `Step: PHASE STEP STATUS [MODULE] [(N%)]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, TextIO

from ..journal import Phase, Status, Step

PROGRESS = ("json", "lines")
_ENDS = (Status.DONE, Status.FAILED)


class Progress:
    """Given the form (json or lines) and where to write; `event` is the journal's hook."""

    def __init__(self, form: str, out: TextIO) -> None:
        self.form = form
        self.out = out
        self.planned: int | None = None
        self.finished = 0

    def event(
        self, tx_id: int, phase: Phase, step: Step, status: Status, detail: Mapping[str, Any] | None
    ) -> None:
        """Write the line of one event."""
        detail = detail or {}
        if phase == Phase.PLAN and step == Step.SCOPE and "modules" in detail:
            self.planned = len(detail["modules"])
        if phase == Phase.MODULES and step == Step.RUN and status in _ENDS:
            self.finished += 1
        module = detail.get("module")
        record = {
            "tx": tx_id,
            "phase": str(phase),
            "step": str(step),
            "status": str(status),
            "module": module if isinstance(module, str) else None,
            "percent": self._percent(phase, step),
        }
        try:
            self.out.write(self._line(record) + "\n")
            self.out.flush()
        except BrokenPipeError:
            # the reader went away: what is still buffered goes nowhere, not into an
            # error at exit; the journal stops telling (see Journal._tell)
            with suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            raise

    def _percent(self, phase: Phase, step: Step) -> int | None:
        if step == Step.DECISION:
            return 100
        if phase == Phase.MODULES and self.planned:
            return min(100, round(100 * self.finished / self.planned))
        return None

    def _line(self, record: dict[str, Any]) -> str:
        if self.form == "json":
            return json.dumps(record)
        words = ["Step:", record["phase"], record["step"], record["status"]]
        if record["module"]:
            words.append(record["module"])
        if record["percent"] is not None:
            words.append(f"({record['percent']}%)")
        return " ".join(words)
