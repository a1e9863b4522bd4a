"""`hs-tx update`: every enabled module, run inside one transaction."""

from __future__ import annotations

from ..modules.discovery import discover
from .config import require_modules_dir
from .context import Context, who
from .errors import EXIT_DAMAGED, EXIT_OK, Interrupted
from .recovery import recover_all
from .scope import check_scope, plan_paths
from .signals import SignalGuard
from .snapshots import capture_scope
from .transaction import abort, commit, roll_back, run_phase2


def update(ctx: Context, *, wait: bool = False) -> int:
    """`hs-tx update`: run every enabled module in one transaction; return the exit code."""
    require_modules_dir(ctx.config)  # before the lock: a refusal writes nothing
    with ctx.lock(wait) as lock:
        if recover_all(ctx) != EXIT_OK:
            ctx.log("hs-tx: an earlier transaction could not be repaired; not starting a new one")
            return EXIT_DAMAGED
        user, host = who()
        tx_id = ctx.journal.begin("update", ctx.argv, user, host)
        lock.set_holder(tx_id)
        ctx.log(f"hs-tx: transaction {tx_id} opened")
        with SignalGuard() as guard:
            return _run_update(ctx, tx_id, guard)


def _run_update(ctx: Context, tx_id: int, guard: SignalGuard) -> int:
    journal = ctx.journal
    try:
        modules = discover(require_modules_dir(ctx.config))
        enabled = [m for m in modules if m.enabled]
        paths = plan_paths(
            ctx.config, [m.path for m in modules], [p for m in enabled for p in m.backup_paths]
        )
        journal.event(
            tx_id,
            "plan",
            "scope",
            "done",
            {"paths": [str(p) for p in paths], "modules": [m.name for m in enabled]},
        )
        entries = check_scope(ctx.config, paths)
        capture_scope(ctx.config, journal, tx_id, entries)
        journal.set_state(tx_id, "snapshotted")
    except BaseException as exc:
        guard.disarm()
        return abort(ctx, tx_id, exc)
    try:
        journal.set_state(tx_id, "running")
        failure = run_phase2(ctx, tx_id, enabled)
    except Interrupted as exc:
        failure = str(exc)
    except Exception as exc:
        failure = f"internal error: {type(exc).__name__}: {exc}"
    guard.disarm()
    if failure is not None:
        return roll_back(ctx, tx_id, failure)
    return commit(ctx, tx_id)
