"""base.activity: a long step is shown once it lasted QUIET_S, at most every EVERY_S,
and cleared at its end or for another line of output."""

from __future__ import annotations

import pytest

from hs_txupdate.base import activity


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int | None, int | None] | str] = []

    def show(self, what: str, elapsed_s: float, done: int | None, total: int | None) -> None:
        self.seen.append((what, round(elapsed_s), done, total))

    def clear(self) -> None:
        self.seen.append("clear")


def test_a_step_is_shown_after_the_quiet_time_rate_limited_then_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(activity.time, "monotonic", lambda: now[0])
    shown = Recorder()
    activity.set_display(shown)
    try:
        for t, done in ((0.0, 1), (1.9, 2), (2.0, 3), (2.1, 4), (2.3, 5), (5.0, 6)):
            now[0] = 100.0 + t
            activity.tick("restoring /srv", done, 9)
        activity.interrupt()
        activity.end()  # nothing shown since the interruption: nothing to clear
        now[0] = 200.0
        activity.tick("running module m")
    finally:
        activity.set_display(None)
        activity.end()

    assert shown.seen == [
        ("restoring /srv", 2, 3, 9),
        ("restoring /srv", 2, 5, 9),
        ("restoring /srv", 5, 6, 9),
        "clear",
    ], "a new step starts its own quiet time"


def test_without_a_display_nothing_happens() -> None:
    activity.set_display(None)
    activity.tick("anything", 1, 2)
    activity.end()
