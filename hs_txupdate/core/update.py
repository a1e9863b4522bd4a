"""`hs-tx update`: fetch the source, then phases 1, 2 and 3 inside one transaction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..modules.discovery import discover
from ..net import guard as netguard
from . import phase3
from .config import require_modules_dir
from .context import Context, who
from .errors import EXIT_DAMAGED, EXIT_OK, Interrupted, ScopeError
from .lock import StateLock
from .phase1 import Phase1Plan, apply_change
from .phase2 import run_phase2
from .phase3 import SelfUpdate
from .recovery import recover_all
from .scope import check_scope, plan_paths
from .signals import SignalGuard
from .snapshots import capture_scope
from .source import fetch_source, plan_schema_updates
from .transaction import commit, roll_back, run_transaction


@dataclass(frozen=True)
class UpdateOptions:
    """The switches of `hs-tx update`."""

    wait: bool = False
    allow_downgrade: bool = False
    accept_rewritten_source: bool = False


@dataclass
class _Plan:
    """What a run will do once its scope is snapshotted."""

    schema: Phase1Plan | None = None
    self_update: SelfUpdate | None = None
    scope: frozenset[str] = frozenset()


def update(ctx: Context, options: UpdateOptions | None = None) -> int:
    """`hs-tx update`: run the phases in one transaction; return the exit code."""
    options = options or UpdateOptions()
    resumed = os.environ.pop(phase3.RESUME_ENV, None)
    if resumed is not None:
        return _resume(ctx, int(resumed))
    require_modules_dir(ctx.config)  # before the lock: a refusal writes nothing
    with ctx.lock(options.wait) as lock:
        if recover_all(ctx) != EXIT_OK:
            ctx.log("hs-tx: an earlier transaction could not be repaired; not starting a new one")
            return EXIT_DAMAGED
        user, host = who()
        tx_id = ctx.journal.begin("update", ctx.argv, user, host)
        lock.set_holder(tx_id)
        ctx.log(f"hs-tx: transaction {tx_id} opened")

        def body(plan: _Plan) -> str | None:
            failure = _run_phases(ctx, tx_id, plan) or netguard.gate(ctx, tx_id)
            if failure is None and plan.self_update is not None:
                _self_update(ctx, tx_id, plan, lock)  # returns only by raising
            return failure

        return run_transaction(
            ctx,
            tx_id,
            lambda: _plan_and_snapshot(ctx, tx_id, options),
            body,
            lambda failure: _roll_back(ctx, tx_id, failure),
        )


def _roll_back(ctx: Context, tx_id: int, failure: str) -> int:
    """Roll the files back; then the network guard brings the network back (or says how)."""
    return roll_back(ctx, tx_id, failure, after_restore=lambda: netguard.repair(ctx, tx_id))


def _plan_and_snapshot(ctx: Context, tx_id: int, options: UpdateOptions) -> _Plan:
    """Capture the network, fetch, plan the phases and the scope, snapshot it.

    Changes nothing on the system.
    """
    installed = {m.name: m for m in discover(require_modules_dir(ctx.config))}
    plan = _Plan()
    netguard.capture_before(ctx, tx_id)
    if ctx.config.source is not None:
        netguard.preflight(ctx, tx_id)
        state = fetch_source(ctx, tx_id, options.accept_rewritten_source)
        plan.schema = plan_schema_updates(ctx, state, installed, options.allow_downgrade)
        plan.self_update, note = phase3.plan(state)
        if note:
            ctx.log(f"hs-tx: note: {note}")
    future = plan.schema.future(installed) if plan.schema else installed
    own = [plan.self_update.install_dir] if plan.self_update else []
    paths = plan_paths(ctx.config, installed.values(), future.values(), own)
    ctx.journal.event(
        tx_id,
        "plan",
        "scope",
        "done",
        {
            "paths": [str(p) for p in paths],
            "modules": [m.name for m in future.values() if m.enabled],
            "self_update": plan.self_update.version_to if plan.self_update else None,
        },
    )
    capture_scope(ctx.config, ctx.journal, tx_id, check_scope(ctx.config, paths))
    ctx.journal.set_state(tx_id, "snapshotted")
    plan.scope = frozenset(str(p) for p in paths)
    return plan


def _run_phases(ctx: Context, tx_id: int, plan: _Plan) -> str | None:
    """Phase 1 (when there is a source) and phase 2; return why they failed, or None."""
    versions_from: dict[str, str] = {}
    if plan.schema is not None:
        versions_from = _run_phase1(ctx, tx_id, plan.schema)
    modules = [m for m in discover(ctx.config.modules_dir) if m.enabled]
    for module in modules:
        outside = [p for p in module.backup_paths if not _covered(p, plan.scope)]
        if outside:
            raise ScopeError(
                f"module {module.name} declares {outside[0]}, which was not snapshotted",
                "a module's backup_paths must not change while it runs",
            )
    return run_phase2(ctx, tx_id, modules, versions_from)


def _run_phase1(ctx: Context, tx_id: int, schema: Phase1Plan) -> dict[str, str]:
    """Install or replace every module of the plan; return their previous versions."""
    versions_from = {}
    for change in schema.changes:
        detail = {"module": change.name, "from": change.version_from, "to": change.version_to}
        ctx.journal.event(tx_id, "schema", "replace", "intent", detail)
        verb = f"replacing module {change.name} {change.version_from} ->"
        if change.version_from is None:
            verb = f"installing module {change.name}"
        ctx.log(f"hs-tx: {verb} {change.version_to}")
        apply_change(schema.state, ctx.config.modules_dir, change, f"{tx_id}-m-{change.name}")
        ctx.journal.event(tx_id, "schema", "replace", "done", detail)
        if change.version_from:
            versions_from[change.name] = change.version_from
    return versions_from


def _self_update(ctx: Context, tx_id: int, plan: _Plan, lock: StateLock) -> None:
    """Install the new hs-tx and re-execute it; returns only by raising."""
    update = plan.self_update
    assert update is not None and plan.schema is not None
    detail = {"from": update.version_from, "to": update.version_to, "dir": str(update.install_dir)}
    ctx.log(f"hs-tx: updating hs-tx itself {update.version_from} -> {update.version_to}")
    phase3.preload()
    ctx.journal.event(tx_id, "self-update", "install", "intent", detail)
    phase3.install(plan.schema.state, update, ctx.config.state_dir / f"selfupdate-{tx_id}")
    ctx.journal.event(tx_id, "self-update", "install", "done", detail)
    ctx.journal.event(tx_id, "self-update", "exec", "intent", detail)
    phase3.reexec(update, ctx.argv, tx_id, lock.fd)


def _resume(ctx: Context, tx_id: int) -> int:
    """In the newly installed hs-tx: finish transaction `tx_id` that the old one began."""
    fd = int(os.environ.pop(phase3.LOCK_FD_ENV))
    lock = StateLock.adopt(ctx.config.lock_path, fd)
    with lock, SignalGuard() as guard:
        lock.set_holder(tx_id)
        ctx.journal.event(
            tx_id, "self-update", "exec", "done", {"version": __version__, "pid": os.getpid()}
        )
        ctx.log(f"hs-tx: hs-tx {__version__} resumed transaction {tx_id}")
        try:
            failure = netguard.gate(ctx, tx_id)
        except Interrupted as exc:
            failure = str(exc)
        guard.disarm()
        if failure is not None:
            phase3.preload()  # the rollback replaces this code on disk: keep running this one
            return _roll_back(ctx, tx_id, failure)
        return commit(ctx, tx_id)


def _covered(path: Path, scope: frozenset[str]) -> bool:
    text = str(path)
    return any(text == s or text.startswith(s.rstrip("/") + "/") for s in scope)
