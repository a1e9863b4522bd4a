"""`hs-tx update`: fetch the source, then phases 1 and 2 inside one transaction."""

from __future__ import annotations

from dataclasses import dataclass

from ..modules.discovery import Module, discover
from .config import require_modules_dir
from .context import Context, who
from .errors import EXIT_DAMAGED, EXIT_OK, Interrupted, ScopeError
from .phase1 import Phase1Plan, apply_change
from .phase2 import run_phase2
from .recovery import recover_all
from .scope import check_scope, plan_paths
from .signals import SignalGuard
from .snapshots import capture_scope
from .source import fetch_source, plan_schema_updates
from .transaction import abort, commit, roll_back


@dataclass(frozen=True)
class UpdateOptions:
    """The switches of `hs-tx update`."""

    wait: bool = False
    allow_downgrade: bool = False
    accept_rewritten_source: bool = False


def update(ctx: Context, options: UpdateOptions | None = None) -> int:
    """`hs-tx update`: run phases 1 and 2 in one transaction; return the exit code."""
    options = options or UpdateOptions()
    require_modules_dir(ctx.config)  # before the lock: a refusal writes nothing
    with ctx.lock(options.wait) as lock:
        if recover_all(ctx) != EXIT_OK:
            ctx.log("hs-tx: an earlier transaction could not be repaired; not starting a new one")
            return EXIT_DAMAGED
        user, host = who()
        tx_id = ctx.journal.begin("update", ctx.argv, user, host)
        lock.set_holder(tx_id)
        ctx.log(f"hs-tx: transaction {tx_id} opened")
        with SignalGuard() as guard:
            return _run_update(ctx, tx_id, guard, options)


def _run_update(ctx: Context, tx_id: int, guard: SignalGuard, options: UpdateOptions) -> int:
    journal = ctx.journal
    try:
        installed = {m.name: m for m in discover(require_modules_dir(ctx.config))}
        schema = None
        if ctx.config.source is not None:
            state = fetch_source(ctx, tx_id, options.accept_rewritten_source)
            schema = plan_schema_updates(ctx, state, installed, options.allow_downgrade)
        planned = _future_modules(installed, schema)
        paths = plan_paths(
            ctx.config,
            [m.path for m in planned.values()],
            [
                p
                for m in [*installed.values(), *planned.values()]
                if m.enabled
                for p in m.backup_paths
            ],
        )
        journal.event(
            tx_id,
            "plan",
            "scope",
            "done",
            {
                "paths": [str(p) for p in paths],
                "modules": [m.name for m in planned.values() if m.enabled],
            },
        )
        capture_scope(ctx.config, journal, tx_id, check_scope(ctx.config, paths))
        journal.set_state(tx_id, "snapshotted")
    except BaseException as exc:
        guard.disarm()
        return abort(ctx, tx_id, exc)
    try:
        journal.set_state(tx_id, "running")
        failure = _run_phases(ctx, tx_id, schema, {str(p) for p in paths})
    except Interrupted as exc:
        failure = str(exc)
    except Exception as exc:
        failure = f"internal error: {type(exc).__name__}: {exc}"
    guard.disarm()
    if failure is not None:
        return roll_back(ctx, tx_id, failure)
    return commit(ctx, tx_id)


def _future_modules(installed: dict[str, Module], schema: Phase1Plan | None) -> dict[str, Module]:
    """The modules as they will be once phase 1 is done (installed ones otherwise)."""
    future = dict(installed)
    for change in schema.changes if schema else []:
        future[change.name] = change.module
    return dict(sorted(future.items()))


def _run_phases(ctx: Context, tx_id: int, schema: Phase1Plan | None, scope: set[str]) -> str | None:
    """Phase 1 (when there is a source) and phase 2; return why they failed, or None."""
    versions_from: dict[str, str] = {}
    if schema is not None:
        versions_from = _run_phase1(ctx, tx_id, schema)
    modules = [m for m in discover(ctx.config.modules_dir) if m.enabled]
    for module in modules:
        outside = [p for p in module.backup_paths if not _covered(p, scope)]
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
        ctx.log(
            f"hs-tx: {'replacing' if change.version_from else 'installing'} module "
            f"{change.name} {change.version_from or ''}{' -> ' if change.version_from else ''}"
            f"{change.version_to}"
        )
        apply_change(schema.state, ctx.config.modules_dir, change, f"{tx_id}-m-{change.name}")
        ctx.journal.event(tx_id, "schema", "replace", "done", detail)
        if change.version_from:
            versions_from[change.name] = change.version_from
    return versions_from


def _covered(path: object, scope: set[str]) -> bool:
    text = str(path)
    return any(text == s or text.startswith(s.rstrip("/") + "/") for s in scope)
