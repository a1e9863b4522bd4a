"""Fetching the git source and planning phase 1, journaled, before anything changes."""

from __future__ import annotations

from pathlib import Path

from ..journal import Phase, Step
from ..sync.git import (
    SourceError,
    SourceState,
    commit_age_days,
    fetch,
    is_ancestor,
    verify_signature,
)
from .config import Config
from .context import Context


def fetch_configured(config: Config) -> SourceState:
    """Fetch `[source]` into the one clone in the state dir, within its time and size
    limits. Raises SourceError when that fails (nothing changed)."""
    source = config.source
    assert source is not None
    limit = source.max_fetch_mb << 20
    return fetch(
        config.state_dir / "source", source.url, source.branch, source.fetch_timeout, limit
    )


def fetch_source(ctx: Context, tx_id: int, accept_rewrite: bool = False) -> SourceState:
    """Fetch `[source]` into `state_dir/source`; record the commits before and after.

    Raises SourceError when the source is unreachable, or when its history no
    longer contains the commit the last committed update applied (unless
    `accept_rewrite`).
    """
    source = ctx.config.source
    assert source is not None
    detail = {"url": source.url, "branch": source.branch}
    with ctx.journal.step(tx_id, Phase.SOURCE, Step.FETCH, detail) as step:
        state = fetch_configured(ctx.config)
        before = ctx.journal.last_applied_source()
        ctx.journal.set_source(tx_id, before, state.commit)
        step.detail["commit"] = state.commit
        if source.allowed_signers:
            signature = verify_signature(state, Path(source.allowed_signers))
            step.detail.update(signer=signature.signer, key=signature.key)
            ctx.log(f"hs-tx: source commit signed by {signature.signer} ({signature.key})")
        if source.max_age_days:
            age = commit_age_days(state)
            step.detail["age_days"] = round(age, 1)
            if age > source.max_age_days:
                ctx.log(
                    f"hs-tx: warning: the source tip {state.commit[:12]} is {age:.0f} days old"
                    f" (more than [source] max_age_days = {source.max_age_days}): the source"
                    " may be frozen by an attacker withholding updates"
                )
    if before and not accept_rewrite and not is_ancestor(state, before):
        raise SourceError(
            f"the source history was rewritten: {before[:12]}, applied by the last update,"
            f" is not in the history of {source.branch} ({state.commit[:12]})",
            "if the new history is intended, run hs-tx update --accept-rewritten-source",
        )
    ctx.log(f"hs-tx: source {source.url} {source.branch} at {state.commit[:12]}")
    return state
