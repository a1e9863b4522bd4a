"""`hs-tx`: parse the command line, dispatch, print errors, map them to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..base.errors import EXIT_USAGE, HsTxError, exit_code_for
from ..commands.context import open_context
from . import history, modules, prune, recover, show, status, undo, update

COMMANDS = (update, history, show, undo, recover, status, prune, modules)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hs-tx", description="Transactional updates from a git repository of modules."
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file to read")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"hs-tx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run hs-tx with `argv` (default: sys.argv[1:]); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else 0
    os.umask(0o077)
    ctx = None
    try:
        ctx = open_context(args.config, ["hs-tx", *argv])
        return int(args.run(ctx, args))
    except HsTxError as exc:
        print(f"hs-tx: error: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return exc.exit_code
    except Exception as exc:
        print(f"hs-tx: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hs-tx: hint: run again with --debug for a traceback", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return exit_code_for(exc)
    finally:
        if ctx is not None:
            ctx.close()


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
