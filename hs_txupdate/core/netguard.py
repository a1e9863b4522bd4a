"""The network guard inside a transaction: capture, preflight, gate, repair; all journaled.

The mechanics (capture, compare, restore over plain data) are `hs_txupdate.net`;
this module ties them to the transaction, its context and its journal.

Every function does nothing when `[net] guard = false`, and nothing reaches
pyroute2 until one of them runs with the guard on (`netlink` and `model` are imported
lazily), so a run without the guard pays nothing for it.

Journal events (phase `net`): `capture`, `preflight`, `gate` (done or failed
with the problems), `restore` (intent, then done / exists / failed, one per
change, with its `ip` command), `check` (whether the network was back, and the
commands to run by hand when it was not).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..base.errors import HsTxError
from ..journal import Phase, Status, Step
from .config import Config
from .context import Context

if TYPE_CHECKING:
    from ..net.model import NetState


def capture_before(ctx: Context, tx_id: int) -> None:
    """Capture the guarded network at the start of a transaction and journal it.

    Raises ConfigError (exit 2) when a configured guarded interface does not
    exist, NetGuardError when netlink fails; both before anything changed.
    """
    if not ctx.config.net_guard:
        return
    from ..net import netlink

    state = netlink.capture(ctx.config.guard_interfaces, strict=True)
    ctx.journal.set_net(tx_id, before=state)
    ctx.journal.event(
        tx_id, Phase.NET, Step.CAPTURE, Status.DONE, {"interfaces": state["interfaces"]}
    )


def preflight(ctx: Context, tx_id: int) -> None:
    """Before the fetch: make sure the kernel has a route to the source's host.

    Raises NoRouteError (the run is aborted, exit 1) when it has none.
    """
    source = ctx.config.source
    if not ctx.config.net_guard or source is None:
        return
    from ..net import netlink

    try:
        route = netlink.preflight(source.url, os.environ)
    except netlink.NoRouteError as exc:
        detail = {"url": source.url, "error": str(exc)}
        ctx.journal.event(tx_id, Phase.NET, Step.PREFLIGHT, Status.FAILED, detail)
        raise
    if route is not None:
        ctx.journal.event(
            tx_id, Phase.NET, Step.PREFLIGHT, Status.DONE, {"url": source.url, **route}
        )


def gate(ctx: Context, tx_id: int) -> str | None:
    """After phase 2 (and after a self-update): compare the network with the capture.

    Returns why the gate failed (the transaction then rolls back), or None
    when it holds or the transaction is not guarded.
    """
    before = _before(ctx, tx_id)
    if before is None:
        return None
    from ..net import model, netlink

    try:
        after = netlink.capture(before["interfaces"])
    except HsTxError as exc:
        problems = [f"cannot read the network state: {exc.message}"]
    else:
        ctx.journal.set_net(tx_id, after=after)
        problems = model.compare(before, after)
    status = Status.FAILED if problems else Status.DONE
    ctx.journal.event(tx_id, Phase.NET, Step.GATE, status, {"problems": problems})
    return f"network guard: {'; '.join(problems)}" if problems else None


def repair(ctx: Context, tx_id: int) -> str | None:
    """After a rollback restored the files and restarted the services: bring back
    whatever the guarded network still lacks, and check it.

    Returns None when the network is as captured (again), or an error that
    names the problems left and the exact `ip` commands to fix them by hand.
    """
    before = _before(ctx, tx_id)
    if before is None:
        return None
    from ..net import model, netlink

    now: NetState | None = None
    try:
        now = netlink.capture(before["interfaces"])
    except HsTxError as exc:
        problems = [f"cannot read the network state: {exc.message}"]
    else:
        if ctx.journal.net(tx_id)["after"] is None:
            ctx.journal.set_net(tx_id, after=now)  # the gate never ran: a module failed
        problems = model.compare(before, now)
    if not problems:
        ctx.journal.event(
            tx_id, Phase.NET, Step.CHECK, Status.DONE, {"problems": [], "restored": True}
        )
        return None
    ctx.log(f"hs-tx: network guard: {'; '.join(problems)}; restoring the network")
    result = _restore(ctx, tx_id, before, now)
    if result["problems"]:
        commands = result["commands"]
        ctx.journal.event(
            tx_id, Phase.NET, Step.CHECK, Status.FAILED, {**result, "restored": False}
        )
        return (
            f"the network could not be restored ({'; '.join(result['problems'])});"
            f" restore it by hand with: {'; '.join(commands)}"
        )
    ctx.journal.event(tx_id, Phase.NET, Step.CHECK, Status.DONE, {**result, "restored": True})
    ctx.log("hs-tx: network guard: the network is restored and checked")
    return None


def _restore(ctx: Context, tx_id: int, before: NetState, now: NetState | None) -> dict[str, Any]:
    """Run netlink.restore, journaling every change; return the problems left and
    the by-hand commands (both empty when the network is back)."""
    from ..net import model, netlink

    def record(action: dict[str, Any], status: str) -> None:
        keys = ("kind", "dev", "command", "error")
        detail: dict[str, Any] = {k: action.get(k) for k in keys if k in action}
        ctx.journal.event(tx_id, Phase.NET, Step.RESTORE, Status(status), detail)

    try:
        result = netlink.restore(before, record)
    except HsTxError as exc:
        fallback = now or {"interfaces": before["interfaces"], "links": [], "routes": []}
        commands = [a["command"] for a in model.plan_all(before, fallback)]
        return {"problems": [f"restore failed: {exc.message}"], "commands": commands}
    ctx.journal.set_net(tx_id, restored=result.state, actions=result.actions)
    return {"problems": result.problems, "commands": result.commands}


def _before(ctx: Context, tx_id: int) -> NetState | None:
    """The state captured at the start, or None when the transaction is not guarded."""
    if not ctx.config.net_guard:
        return None
    before: NetState | None = ctx.journal.net(tx_id)["before"]
    return before


def current(config: Config) -> dict[str, Any]:
    """`hs-tx status`: the guarded network now, as a JSON-ready dict.

    Never raises: a missing interface or a netlink failure is reported in
    `error`.
    """
    out: dict[str, Any] = {"guard": config.net_guard, "state": None, "lines": [], "error": None}
    if not config.net_guard:
        return out
    from ..net import model, netlink

    try:
        state = netlink.capture(config.guard_interfaces)
    except HsTxError as exc:
        out["error"] = str(exc)
        return out
    out["state"], out["lines"] = state, model.describe(state)
    missing = [n for n in state["interfaces"] if n not in {x["name"] for x in state["links"]}]
    if missing:
        out["error"] = f"guarded interface {missing[0]} does not exist"
    return out
