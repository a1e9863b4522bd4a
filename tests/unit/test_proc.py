"""The one subprocess chokepoint: a two-command pipe with no shell and no file."""

from __future__ import annotations

import pytest

from hs_txupdate.base.proc import CommandError, run_pipe


def test_a_pipe_returns_what_its_second_command_wrote() -> None:
    result = run_pipe(["printf", "a b\\nc\\n"], ["tr", "a-z", "A-Z"])
    assert result.stdout == "A B\nC\n"


def test_a_failing_first_command_is_named_even_when_the_second_succeeds() -> None:
    with pytest.raises(CommandError) as caught:
        run_pipe(["sh", "-c", "echo partial; echo broken >&2; exit 3"], ["cat"])
    assert "sh failed: broken" in caught.value.message


def test_a_failing_second_command_is_named_and_the_first_does_not_hang() -> None:
    with pytest.raises(CommandError) as caught:  # `yes` writes forever: it must be ended
        run_pipe(["yes"], ["sh", "-c", "head -c 10 >/dev/null; echo refused >&2; exit 4"])
    assert "failed: refused" in caught.value.message


def test_a_missing_command_says_how_to_install_it() -> None:
    with pytest.raises(CommandError) as caught:
        run_pipe(["true"], ["no-such-command-hs-tx"])
    assert "command not found: no-such-command-hs-tx" in caught.value.message
