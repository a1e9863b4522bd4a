"""`hs-tx`: parse the command line, dispatch, print errors, map them to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from .. import __version__
from ..base.errors import EXIT_USAGE, HsTxError, exit_code_for

# Each command's one-line help; `hs_txupdate.cli.<name>.register` adds its arguments.
# Only the command being run is imported: `hs-tx --help` loads none of them.
COMMANDS = {
    "update": "run every enabled module in one transaction",
    "history": "list transactions, newest first",
    "show": "everything journaled about one transaction",
    "undo": "put back what a committed transaction changed",
    "recover": "finish transactions an earlier run left unfinished",
    "status": "a run in progress, the last recovery, the last run",
    "prune": "delete snapshots no journal relies on (see status)",
    "modules": "list modules, enable or disable one, show its scope",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand listed, the one named in `argv` (None:
    all of them) with its arguments."""
    parser = argparse.ArgumentParser(
        prog="hs-tx", description="Transactional updates from a git repository of modules."
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file to read")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--log-format",
        choices=("plain", "homeserver"),
        default="plain",
        help="homeserver: every line as [YYYY-MM-DD HH:MM:SS] [LEVEL] message",
    )
    parser.add_argument("--version", action="version", version=f"hs-tx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = _command_word(argv)
    for name, text in COMMANDS.items():
        if argv is None or name == wanted:
            importlib.import_module(f"{__package__}.{name}").register(sub, text)
        else:
            sub.add_parser(name, help=text)
    return parser


def _command_word(argv: list[str] | None) -> str | None:
    """The command `argv` names: its first word that is no global option."""
    words = iter(argv or [])
    for word in words:
        if word in ("--config", "--log-format"):  # the global options that take a value
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    """Run hs-tx with `argv` (default: sys.argv[1:]); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else 0
    os.umask(0o077)
    if args.log_format == "homeserver":
        json_out = getattr(args, "json", False) or getattr(args, "progress", None) == "json"
        _stamp_output(json_out=bool(json_out))
    else:
        from .live import attach

        attach(sys.stderr)  # a live progress line, on a terminal only
    from ..commands.context import open_context  # after parsing: --help needs none of it

    ctx = None
    try:
        ctx = open_context(args.config, ["hs-tx", *argv])
        return int(args.run(ctx, args))
    except HsTxError as exc:
        print(f"hs-tx: error: {exc}", file=sys.stderr)
        if args.debug:
            _print_traceback()
        return exc.exit_code
    except Exception as exc:
        print(f"hs-tx: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hs-tx: hint: run again with --debug for a traceback", file=sys.stderr)
        if args.debug:
            _print_traceback()
        return exit_code_for(exc)
    finally:
        if ctx is not None:
            ctx.close()


def _print_traceback() -> None:
    import traceback  # here: only --debug after an error needs it

    traceback.print_exc()


def _stamp_output(json_out: bool) -> None:
    """Stamp every line hs-tx prints from here on (see cli.lines); a JSON document on
    stdout stays as it is."""
    from .lines import StampedLines

    sys.stderr = StampedLines(sys.stderr)
    if not json_out:
        sys.stdout = StampedLines(sys.stdout)


def entry() -> None:
    """Console-script entry point. Everything hs-tx opened is closed when `main`
    returns, so the process ends at once instead of tearing the interpreter down
    (15 to 20 ms of every command)."""
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away (`hs-tx history | head`): what it wanted, it got
    except OSError as exc:
        print(f"hs-tx: warning: cannot write the output: {exc}", file=sys.stderr)
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)
