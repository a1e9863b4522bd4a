"""`hs-tx undo ID`: put back what a committed transaction changed, as a transaction.

The undo is itself journaled (kind `undo`) with its own snapshots, so an undo
can be undone. It refuses, before changing anything, when a later committed
transaction that is not undone changed an overlapping path (unless
`--cascade`, which undoes those too, newest first), when ID did not commit,
is already undone or its snapshots are gone, and when a path changed outside
hs-tx since (unless `--force`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..base.errors import EXIT_DAMAGED, EXIT_OK, UsageError
from ..core.audit import describe
from ..core.context import Context
from ..core.drift import RELS, fingerprint_now
from ..core.scope import Planned, fold
from ..core.services import put_back_services
from ..core.snapshots import restore_path, verify_snapshot
from ..core.start import open_transaction, recover_first, snapshot_scope
from ..core.system import restore_filter, restored_paths
from ..core.transaction import run_transaction
from ..journal import Kind, Origin, PathInfo, Phase, State, TxInfo


@dataclass(frozen=True)
class UndoOptions:
    """The switches of `hs-tx undo`."""

    cascade: bool = False
    force: bool = False
    wait: bool = False


def overlaps(a: str, b: str) -> bool:
    """True when one path is the other or lies inside it."""
    pa, pb = Path(a), Path(b)
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


def undo(ctx: Context, tx_id: int, options: UndoOptions | None = None) -> int:
    """Undo transaction `tx_id` (and with --cascade the later ones in its way).

    Returns the exit code; raises UsageError (exit 2) for a refused request and
    DamagedError (exit 3) when a snapshot needed is missing or corrupt — in
    both cases before anything changed.
    """
    options = options or UndoOptions()
    with ctx.lock(options.wait) as lock:
        if not recover_first(ctx, "undoing"):
            return EXIT_DAMAGED
        chain = _plan_chain(ctx, tx_id, options.cascade)
        for info in chain:
            for path in _changed(info):
                verify_snapshot(ctx.config, ctx.journal, path)
        _check_drift(ctx, chain, options.force)
        undo_id = open_transaction(ctx, lock, Kind.UNDO)
        ctx.journal.set_undoes(undo_id, tx_id)
        ctx.journal.link_undo(undo_id, [info.id for info in chain])
        ctx.log(f"hs-tx: transaction {undo_id} opened to undo {_ids(chain)}")
        return _run_undo(ctx, undo_id, chain)


def _run_undo(ctx: Context, undo_id: int, chain: list[TxInfo]) -> int:
    changed = [p for info in chain for p in _changed(info)]
    system = sorted({p.path for p in changed if p.origin == Origin.SYSTEM})
    others = fold(Path(p.path) for p in changed if p.origin != Origin.SYSTEM)
    planned = [Planned(Path(p), Origin.SYSTEM) for p in system]
    planned += [Planned(p, Origin.UNDO) for p in others]

    def prepare() -> None:
        # what the undo will change in a system scope, journaled before it acts
        rows = {c.path: c for info in chain for c in info.run_changes}
        ctx.journal.add_run_changes(undo_id, [replace(c, module=None) for c in rows.values()])
        snapshot_scope(ctx, undo_id, planned)

    def body(_plan: None) -> None:
        for info in chain:
            ctx.log(f"hs-tx: putting back what transaction {info.id} changed")
            # newest snapshot first: where a StateManager backup nests, the oldest state wins
            for path in sorted(_changed(info), key=lambda p: p.n, reverse=True):
                keep = None
                if path.origin == Origin.SYSTEM:
                    keep = restore_filter(ctx.config, info, path, listed=True)
                restore_path(ctx.config, ctx.journal, undo_id, path, phase=Phase.UNDO, keep=keep)
        for info in chain:
            put_back_services(ctx, undo_id, info, [Path(m) for m in changed_marks(info)])

    code = run_transaction(ctx, undo_id, prepare, body)
    outside = [o for info in chain for o in info.outside]
    if code == EXIT_OK and outside:
        ctx.log(
            f"hs-tx: every path in scope of {_ids(chain)} is back, but {len(outside)} path(s)"
            f" changed outside the scope are not: {describe(outside)}; see hs-tx show ID"
        )
        return EXIT_DAMAGED
    return code


def changed_marks(info: TxInfo) -> list[str]:
    """What `info` changed, as paths: each changed scope path, or, for a system entry,
    the entries the transaction changed in it."""
    return [str(m) for p in _changed(info) for m in restored_paths(info, p)]


def _changed(info: TxInfo) -> list[PathInfo]:
    return [p for p in info.paths if p.changed]


def _ids(chain: list[TxInfo]) -> str:
    return ", ".join(str(info.id) for info in chain)


def _undoable(ctx: Context, tx_id: int) -> TxInfo:
    """The transaction, if it can be undone; else UsageError naming why."""
    info = ctx.journal.transaction(tx_id)
    if info is None:
        raise UsageError(f"no transaction {tx_id}", "see hs-tx history for the ids")
    if info.state != State.COMMITTED:
        raise UsageError(
            f"transaction {tx_id} did not commit (it is {info.state}); there is nothing to undo",
            "only committed transactions can be undone",
        )
    if info.undone_by is not None:
        raise UsageError(
            f"transaction {tx_id} is already undone by transaction {info.undone_by}",
            f"to redo it, undo transaction {info.undone_by}",
        )
    if info.snapshots_pruned_at is not None:
        raise UsageError(
            f"the snapshots of transaction {tx_id} were deleted by retention",
            "raise snapshot.keep to keep more transactions undoable",
        )
    return info


def _plan_chain(ctx: Context, tx_id: int, cascade: bool) -> list[TxInfo]:
    """`tx_id` and (with cascade) every later transaction in its way, newest first."""
    target = _undoable(ctx, tx_id)
    marks = set(changed_marks(target))
    later_ids = sorted({t for t, _path, _fp in ctx.journal.committed_changes() if t > tx_id})
    chain = {tx_id: target}
    grew = True
    while grew:
        grew = False
        for later in later_ids:
            info = None if later in chain else ctx.journal.transaction(later)
            if info is None or info.undone_by is not None:
                continue
            hit = next((m for m in changed_marks(info) if any(overlaps(m, p) for p in marks)), None)
            if hit is None:
                continue
            if not cascade:
                raise UsageError(
                    f"transaction {later} changed {hit} after transaction {tx_id}",
                    f"undo {later} first, or run hs-tx undo {tx_id} --cascade",
                )
            chain[later] = _undoable(ctx, later)
            marks |= set(changed_marks(info))
            grew = True
    return [chain[i] for i in sorted(chain, reverse=True)]


def _check_drift(ctx: Context, chain: list[TxInfo], force: bool) -> None:
    """Refuse when a path changed outside hs-tx since hs-tx last changed it: compared,
    for each path the chain changed, with the newest transaction that changed it."""
    marks = {m for info in chain for m in changed_marks(info)}
    infos = {info.id: info for info in chain}
    latest: dict[str, tuple[int, str, str]] = {}
    for tx, path, fingerprint in ctx.journal.latest_fingerprints():  # newest first
        if len(latest) == len(marks):
            break
        if fingerprint is None:
            continue
        theirs = [path]
        if fingerprint.startswith(RELS):
            info = infos.get(tx) or ctx.journal.transaction(tx)
            if info is None:
                continue
            infos[tx] = info
            theirs = [str(m) for p in info.paths if p.path == path for m in restored_paths(info, p)]
        for wanted in marks:
            if wanted not in latest and any(overlaps(t, wanted) for t in theirs):
                latest[wanted] = (tx, path, fingerprint)
    now = {key: fingerprint_now(ctx.journal, infos, *key) for key in set(latest.values())}
    drifted = sorted({key[1] for key, fp in now.items() if fp is not None and fp != key[2]})
    unknown = sorted({key[1] for key, fp in now.items() if fp is None})
    problems = []
    if drifted:
        problems.append(f"changed outside hs-tx since its last transaction: {', '.join(drifted)}")
    if unknown:
        problems.append(
            f"cannot tell whether {', '.join(unknown)} changed outside hs-tx: the btrfs"
            " snapshot it is compared against is gone"
        )
    if problems and not force:
        raise UsageError(
            "; ".join(problems),
            "look at them first; run again with --force to undo anyway (those changes are lost)",
        )
    for path in drifted:
        ctx.log(f"hs-tx: warning: {path} changed outside hs-tx; --force: undoing anyway")
    for path in unknown:
        ctx.log(
            f"hs-tx: warning: {path} was not checked for changes outside hs-tx; --force:"
            " undoing anyway"
        )
