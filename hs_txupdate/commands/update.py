"""`hs-tx update`: fetch the source, then phases 1, 2 and 3 inside one transaction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..base.errors import EXIT_DAMAGED, EXIT_FAILED, Interrupted, ScopeError
from ..core import netguard, phase3
from ..core.audit import RunAudit, describe
from ..core.config import require_modules_dir
from ..core.context import Context
from ..core.lock import StateLock
from ..core.phase1 import run_phase1
from ..core.phase2 import ModuleRuns, run_phase2, start_forks, stop_forks
from ..core.planning import RunPlan, plan_run
from ..core.runtime import build_runtime, module_runtime
from ..core.scope import Planned
from ..core.services import record_services, unit_files
from ..core.signals import SignalGuard
from ..core.source import fetch_source
from ..core.space import release_for_space
from ..core.start import open_transaction, recover_first, snapshot_scope
from ..core.system import system_units
from ..core.transaction import commit, roll_back, run_transaction
from ..journal import EventHook, Kind, Origin, Phase, Status, Step
from ..modules import cgroup
from ..modules.discovery import Listed, discover_usable


@dataclass(frozen=True)
class UpdateOptions:
    """The switches of `hs-tx update`."""

    wait: bool = False
    allow_downgrade: bool = False
    accept_rewritten_source: bool = False
    progress: EventHook | None = None  # told of every step as it is journaled


def update(ctx: Context, options: UpdateOptions | None = None) -> int:
    """`hs-tx update`: run the phases in one transaction; return the exit code.

    0 committed, 1 rolled back or aborted, 3 damaged (see the exit codes);
    raises ConfigError before anything is written when the modules dir is
    missing, and LockedError when another run holds the lock.
    """
    options = options or UpdateOptions()
    if options.progress is not None:
        ctx.journal.on_event = options.progress
    resumed = os.environ.pop(phase3.RESUME_ENV, None)
    if resumed is not None:
        return _resume(ctx, int(resumed))
    require_modules_dir(ctx.config)  # before the lock: a refusal writes nothing
    with ctx.lock(options.wait) as lock:
        if not recover_first(ctx, "starting a new one"):
            return EXIT_DAMAGED
        tx_id = open_transaction(ctx, lock, Kind.UPDATE)
        ctx.log(f"hs-tx: transaction {tx_id} opened")

        def body(plan: RunPlan) -> str | None:
            failure = _run_audited(ctx, tx_id, plan) or netguard.gate(ctx, tx_id)
            if failure is None and plan.self_update is not None:
                assert plan.schema is not None
                # returns only by raising
                phase3.self_update(ctx, tx_id, plan.self_update, plan.schema.state, lock)
            return failure

        return run_transaction(
            ctx,
            tx_id,
            lambda: _plan_and_snapshot(ctx, tx_id, options),
            body,
            lambda failure, code: _roll_back(ctx, tx_id, failure, code),
        )


def _roll_back(ctx: Context, tx_id: int, failure: str, code: int) -> int:
    """Roll the files back; then the network guard brings the network back (or says how)."""
    return roll_back(ctx, tx_id, failure, code, after_restore=lambda: netguard.repair(ctx, tx_id))


def _plan_and_snapshot(ctx: Context, tx_id: int, options: UpdateOptions) -> RunPlan:
    """Capture the network, fetch, plan the phases and the scope, snapshot it.

    Changes nothing on the system.
    """
    usable, broken = discover_usable(require_modules_dir(ctx.config))
    installed = {m.name: m for m in usable}
    netguard.capture_before(ctx, tx_id)
    state = None
    if ctx.config.source is not None:
        netguard.preflight(ctx, tx_id)
        state = fetch_source(ctx, tx_id, options.accept_rewritten_source)
    learned = [(m, p) for m, p, _tx in ctx.journal.footprints()]
    plan = plan_run(ctx.config, installed, state, options.allow_downgrade, learned)
    for note in plan.notes:
        ctx.log(f"hs-tx: note: {note}")
    _report_broken(ctx, tx_id, broken, plan)
    detail = {
        "modules": [m.name for m in plan.future.values() if m.enabled],
        "self_update": plan.self_update.version_to if plan.self_update else None,
    }
    release_for_space(ctx, tx_id)
    if detail["modules"]:
        cgroup.warm_up_detached()
    snapshot_scope(ctx, tx_id, plan.paths, detail)
    modules = [m for m in plan.future.values() if m.enabled]
    record_services(ctx, tx_id, [m.service_name for m in modules if m.service_name], "module")
    units = unit_files([p.path for p in plan.paths if p.origin != Origin.SYSTEM])
    units += system_units([p.path for p in plan.paths if p.origin == Origin.SYSTEM])
    record_services(ctx, tx_id, units, "unit-file")
    return plan


def _run_audited(ctx: Context, tx_id: int, plan: RunPlan) -> str | None:
    """Phases 1 and 2 under the write audit; return why they failed (or, with
    `outside_writes = "fail"`, that they wrote outside the scope), or None."""
    audit = RunAudit(ctx, tx_id)
    runs = ModuleRuns(ctx, tx_id, audit=audit)
    audit.start(meanwhile=lambda: _start_forks_early(runs, plan))
    try:
        failure = _run_phases(runs, plan)
    except BaseException:
        audit.finish_anyway()  # the rollback must know what the run wrote outside its scope
        raise
    finally:
        stop_forks(runs)  # phase 2 ends it; this is for a run that never got there
    outside = audit.finish()
    if outside and failure is None and ctx.config.outside_writes == "fail":
        failure = f"the run changed {len(outside)} path(s) outside its scope: {describe(outside)}"
    elif outside:
        ctx.log(
            f"hs-tx: warning: the run changed {len(outside)} path(s) outside its scope:"
            f" {describe(outside)} (hs-tx show {tx_id}); what a module changed there is in"
            " its scope from its next run on"
        )
    return failure


def _start_forks_early(runs: ModuleRuns, plan: RunPlan) -> None:
    """Start the fork server as soon as the audit's reader made the run's pid namespace
    (it starts up while phase 1 runs), when modules will run on the runtime as it is
    now: a runtime that this run builds would replace the interpreter under it."""
    if plan.runtime is None and any(m.enabled for m in plan.future.values()):
        runs.runtime = module_runtime(runs.ctx.config)
        start_forks(runs)


def _report_broken(ctx: Context, tx_id: int, broken: list[Listed], plan: RunPlan) -> None:
    """One line per installed module whose index.json is unusable: it does not run
    (phase 1 replaces it when the source has a usable version); journaled."""
    replaced = {c.name for c in plan.schema.changes} if plan.schema else set()
    rows = []
    for item in broken:
        fate = "phase 1 replaces it" if item.name in replaced else "it does not run"
        ctx.log(f"hs-tx: warning: {item.problem}; {fate}")
        rows.append(
            {"module": item.name, "problem": item.problem, "replaced": item.name in replaced}
        )
    if rows:
        ctx.journal.event(tx_id, Phase.PLAN, Step.BROKEN, Status.DONE, {"modules": rows})


def _run_phases(runs: ModuleRuns, plan: RunPlan) -> str | None:
    """Phase 1 (when there is a source), the module runtime, phase 2; return why they
    failed, or None."""
    ctx, tx_id = runs.ctx, runs.tx_id
    if plan.schema is not None:
        runs.versions_from = run_phase1(ctx, tx_id, plan.schema)
    if plan.runtime is not None:
        build_runtime(ctx, tx_id, plan.runtime)
    runs.runtime = module_runtime(ctx.config)
    modules = [m for m in discover_usable(ctx.config.modules_dir)[0] if m.enabled]
    for module in modules:
        outside = [p for p in module.backup_paths if not _covered(p, plan.paths)]
        if outside:
            raise ScopeError(
                f"module {module.name} declares {outside[0]}, which was not snapshotted",
                "a module's backup_paths must not change while it runs",
            )
    return run_phase2(runs, modules)


def _resume(ctx: Context, tx_id: int) -> int:
    """In the newly installed hs-tx: finish transaction `tx_id` that the old one began."""
    fd = int(os.environ.pop(phase3.LOCK_FD_ENV))
    lock = StateLock.adopt(ctx.config.lock_path, fd)
    with lock, SignalGuard() as guard:
        lock.set_holder(tx_id)
        ctx.journal.event(
            tx_id,
            Phase.SELF_UPDATE,
            Step.EXEC,
            Status.DONE,
            {"version": __version__, "pid": os.getpid()},
        )
        ctx.log(f"hs-tx: hs-tx {__version__} resumed transaction {tx_id}")
        try:
            failure = netguard.gate(ctx, tx_id)
        except Interrupted as exc:
            failure = str(exc)
        guard.disarm()
        if failure is not None:
            phase3.preload()  # the rollback replaces this code on disk: keep running this one
            return _roll_back(ctx, tx_id, failure, EXIT_FAILED)
        return commit(ctx, tx_id)


def _covered(path: Path, scope: list[Planned]) -> bool:
    """True when `path` is a scope path or lies inside one."""
    return any(path.is_relative_to(s.path) for s in scope)
