"""Phase 2, universal execution: maintenance tasks, group selection, every enabled module.

Each module runs in its own worker process (see modules.runner); the first
failure stops the phase so the transaction can roll back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import Interrupted
from ..base.proc import child_env
from ..journal import Phase, RunStatus, Status, Step
from ..modules import cgroup
from ..modules.discovery import Module
from ..modules.forkserver import FORBIDDEN, ForkServer, ForkServerError
from ..modules.runner import Outcome, Runtime, run_module
from .audit import RunAudit
from .context import Context
from .statemanager import BackupServer

DEFAULT_GROUP_ORDER = 99


def select_group_winners(
    modules: list[Module], is_active: Callable[[str], bool]
) -> tuple[list[Module], list[str]]:
    """Keep, of the modules sharing a `metadata.group`, only the first in `group_order`
    (then name) whose service is active; none of a group where none is active.

    Returns the modules to run, in their original order, and one note per group.
    """
    groups: dict[str, list[Module]] = {}
    for module in modules:
        if module.group:
            groups.setdefault(module.group, []).append(module)
    losers: set[str] = set()
    notes = []
    for group, members in sorted(groups.items()):
        ordered = sorted(members, key=lambda m: (_order(m), m.name))
        winner = next((m for m in ordered if is_active(m.service_name or m.name)), None)
        losers.update(m.name for m in ordered if m is not winner)
        chosen = winner.name if winner else "none (no member's service is active)"
        notes.append(f"group {group}: runs {chosen}")
    return [m for m in modules if m.name not in losers], notes


def _order(module: Module) -> int:
    return DEFAULT_GROUP_ORDER if module.group_order is None else module.group_order


@dataclass
class ModuleRuns:
    """How the modules of one transaction run: on which runtime, under which audit,
    and the versions phase 1 replaced (by module name)."""

    ctx: Context
    tx_id: int
    runtime: Runtime = field(default_factory=Runtime)
    audit: RunAudit | None = None
    versions_from: dict[str, str] = field(default_factory=dict)
    forks: ForkServer | None = None  # while phase 2 runs


def run_phase2(runs: ModuleRuns, modules: list[Module]) -> str | None:
    """Run maintenance tasks, then every enabled module that its group lets run, each
    worker forked by one fork server on the runtime (ended with the phase, so no
    process of it outlives the transaction).

    Returns why the phase failed, or None when everything succeeded.
    """
    if not modules:
        return None
    if runs.forks is not None and runs.forks.proc.poll() is not None:
        stop_forks(runs)  # started early, and ended with an audit that gave up
    if runs.forks is None:
        start_forks(runs)
    try:
        failure = _run_all(runs, modules)
    finally:
        # a module's window lasts until the next one's opens: between two modules no
        # process of the run writes (the fork server forks its next spare), only hs-tx,
        # whose writes are never attributed (it is outside the run's pid namespace)
        if runs.audit is not None:
            runs.audit.window(None)
        stop_forks(runs)
    # the last module's outcome (on the way out of an error, the next write takes it)
    runs.ctx.journal.flush()
    return failure


def start_forks(runs: ModuleRuns) -> None:
    """Start the run's fork server on the runtime: forked from hs-tx when workers run
    on hs-tx's own interpreter and hs-tx holds nothing a worker must not, else a new
    interpreter (when it cannot start, each module starts on its own, and the run
    says so)."""
    try:
        if runs.runtime == Runtime() and not any(m in sys.modules for m in FORBIDDEN):
            runs.forks = ForkServer.fork(child_env())
        else:
            runs.forks = ForkServer.spawn(runs.runtime.python, runs.runtime.pythonpath, child_env())
    except ForkServerError as exc:
        runs.ctx.log(f"hs-tx: note: {exc}; each module starts on its own")


def stop_forks(runs: ModuleRuns) -> None:
    """End the run's fork server, if it has one."""
    if runs.forks is not None:
        runs.forks.close()
        runs.forks = None


def _run_all(runs: ModuleRuns, modules: list[Module]) -> str | None:
    ctx, tx_id = runs.ctx, runs.tx_id
    maintained = [m for m in modules if (m.path / "maintenance.py").is_file()]
    for module in maintained:
        failure = _run(runs, module, "maintenance")
        if failure:
            return failure
    if maintained and runs.audit is not None:
        runs.audit.window(None)  # the service checks below start processes of the run's own
    selected, notes = select_group_winners(modules, ctx.services.is_active)
    for note in notes:
        ctx.log(f"hs-tx: {note}")
        ctx.journal.event(tx_id, Phase.MODULES, Step.GROUP, Status.DONE, {"note": note})
    for module in selected:
        failure = _run(runs, module, "main")
        if failure:
            return failure
    return None


def _run(runs: ModuleRuns, module: Module, mode: str) -> str | None:
    """Run one module (or its maintenance task), journaled and audited as its own;
    return why it failed."""
    ctx, tx_id, journal = runs.ctx, runs.tx_id, runs.ctx.journal
    step = Step.RUN if mode == "main" else Step.MAINTENANCE
    # the journal's identity in the name: another state dir's runs on this box have
    # transactions of the same numbers, and creating a cgroup kills what is in it
    name = f"hs-tx-{journal.uuid[:8]}-{tx_id}-{module.name}-{mode}"
    group, no_group = cgroup.create(name)
    detail = {
        "module": module.name,
        "service": module.service_name,
        # journaled before the module starts: recovery kills what is left in it
        "cgroup": str(group) if group else None,
    }
    if no_group:
        detail["contained_by"] = f"its session ({no_group})"
        ctx.log(f"hs-tx: note: {module.name} is contained by its session only: {no_group}")
    what = "maintenance of" if mode == "maintenance" else "module"

    def start() -> int:
        return journal.start_module_run(
            tx_id,
            module.name,
            module.schema_version,
            version_from=runs.versions_from.get(module.name),
            kind=mode,
        )

    # the intent and the run's row in one commit; its outcome and done event in the
    # next (with the next module's intent: the end of a run starts nothing)
    with journal.step(tx_id, Phase.MODULES, step, detail, first=start, defer=True) as record:
        run_id: int = record.started
        ctx.log(f"hs-tx: running {what} {module.name} ({module.schema_version})")
        serve = BackupServer(ctx, tx_id, module, runs.audit)
        try:
            if runs.audit is not None:
                runs.audit.window(module.name)
            outcome = run_module(
                module,
                None,
                echo=ctx.log,
                extra_env=module_env(ctx),
                mode=mode,
                serve=serve,
                runtime=runs.runtime,
                cgroup=group,
                forks=runs.forks,
            )
            if runs.forks is not None and runs.forks.gone:
                ctx.log("hs-tx: note: the fork server ended; the next modules start on their own")
                runs.forks.close()
                runs.forks = None
        except Interrupted as exc:
            journal.finish_module_run(run_id, RunStatus.INTERRUPTED, error=str(exc))
            record.detail["status"] = RunStatus.INTERRUPTED
            raise
        finally:
            record.detail["killed"] = cgroup.kill(group) if group else 0
        record.join(lambda: _journal_outcome(ctx, run_id, outcome))
        record.detail.update(status=outcome.status, error=outcome.error)
        if outcome.status != RunStatus.SUCCESS:
            record.fail()
    return None if not record.failed else f"{what} {module.name} {outcome.status}: {outcome.error}"


def _journal_outcome(ctx: Context, run_id: int, outcome: Outcome) -> None:
    ctx.journal.finish_module_run(
        run_id,
        RunStatus(outcome.status),
        duration_s=round(outcome.duration_s, 3),
        exit_status=outcome.exit_status,
        output_tail=outcome.output_tail,
        error=outcome.error or None,
    )


def module_env(ctx: Context) -> dict[str, str]:
    """What a module's worker learns about this run (the compat shim reads it)."""
    return {"HS_TX_STATE_DIR": str(Path(ctx.config.state_dir))}
