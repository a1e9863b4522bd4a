"""Runs one module's `main(args)` in its own process and reports the outcome.

Started by `hs_txupdate.modules.runner` as
`python -m hs_txupdate.modules.worker MODULES_DIR NAME RESULT_FD ARGS_JSON [MODE]`,
MODE being `main` (default: call `main(args)` of `index.py`) or `maintenance`
(build the `*Maintenance` class of `maintenance.py` with the module's
index.json and call its `run_maintenance()`).
It imports nothing heavy (no SQLAlchemy or pyroute2), so starting
a module costs milliseconds. The outcome goes to RESULT_FD as one JSON object
`{"outcome": "success" | "again" | "failed", "error": str}`; the module's
output goes to stdout/stderr, which the parent streams and journals.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types

from ..base import channel
from . import cgroup

# os.path, not pathlib: every module run pays for the worker's imports
COMPAT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat")


def install_module_root(modules_dir: str) -> None:
    """Make `modules.<name>` importable from `modules_dir`, whatever that dir is called,
    and make the HOMESERVER `updates` package (the compat shim) importable."""
    package = types.ModuleType("modules")
    package.__path__ = [modules_dir]
    package.__package__ = "modules"
    sys.modules["modules"] = package
    sys.path.insert(0, COMPAT_DIR)


def _print_traceback() -> None:
    """Show the module's traceback in its output (imported only when needed)."""
    import traceback

    traceback.print_exc()


def classify(result: object) -> dict[str, object]:
    """Turn what `main` returned into an outcome (see the module contract)."""
    if result is False:
        return {"outcome": "again", "error": "main() returned False (asks to run again)"}
    if result is True:
        return {"outcome": "success", "error": ""}
    if isinstance(result, dict):
        if "success" not in result:
            return {"outcome": "failed", "error": "main() returned a dict without 'success'"}
        if result["success"] is True:
            return {"outcome": "success", "error": ""}
        error = result.get("error") or result.get("message") or "success is false"
        return {"outcome": "failed", "error": str(error)}
    return {"outcome": "failed", "error": f"main() returned {type(result).__name__}, not a dict"}


def run(modules_dir: str, name: str, args: object) -> dict[str, object]:
    """Import `modules.<name>.index` and call its `main(args)`; return the outcome."""
    install_module_root(modules_dir)
    sys.argv = [os.path.join(modules_dir, name, "index.py")]
    try:
        module = importlib.import_module(f"modules.{name}.index")
    except BaseException as exc:
        _print_traceback()
        return {"outcome": "failed", "error": f"import error: {type(exc).__name__}: {exc}"}
    main = getattr(module, "main", None)
    if not callable(main):
        return {"outcome": "failed", "error": "index.py defines no main()"}
    try:
        result = main(args)
    except SystemExit as exc:
        return {"outcome": "failed", "error": f"main() called sys.exit({exc.code})"}
    except BaseException as exc:
        _print_traceback()
        return {"outcome": "failed", "error": f"main() raised {type(exc).__name__}: {exc}"}
    outcome: dict[str, object] = {**classify(result), "result": _jsonable(result)}
    return outcome


def _jsonable(value: object) -> object:
    """What main returned, as JSON the parent can read (odd values as strings)."""
    text = json.dumps(value, default=str)
    return json.loads(text) if len(text) <= 65536 else {"truncated": text[:65536]}


def run_maintenance(modules_dir: str, name: str) -> dict[str, object]:
    """Run the maintenance task of `modules.<name>.maintenance`; return the outcome."""
    install_module_root(modules_dir)
    try:
        module = importlib.import_module(f"modules.{name}.maintenance")
        with open(os.path.join(modules_dir, name, "index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except BaseException as exc:
        _print_traceback()
        return {"outcome": "failed", "error": f"import error: {type(exc).__name__}: {exc}"}
    classes = [
        getattr(module, attr)
        for attr in sorted(dir(module))
        if attr.endswith("Maintenance")
        and isinstance(getattr(module, attr), type)
        and hasattr(getattr(module, attr), "run_maintenance")
    ]
    if not classes:
        return {"outcome": "failed", "error": "maintenance.py has no *Maintenance class"}
    try:
        result = classes[0](index).run_maintenance()
    except BaseException as exc:
        _print_traceback()
        return {
            "outcome": "failed",
            "error": f"run_maintenance() raised {type(exc).__name__}: {exc}",
        }
    if result is False:  # no second chance for maintenance: False is a failure
        return {"outcome": "failed", "error": "run_maintenance() returned False"}
    return classify(result)


def main(argv: list[str]) -> int:
    """Entry point: run the module, write the outcome to the result fd, exit 0."""
    modules_dir, name, fd_text, args_json, *rest = argv
    mode = rest[0] if rest else "main"
    result_fd = int(fd_text)
    # children the module starts must not hold the result pipe open
    os.set_inheritable(result_fd, False)
    cgroup.join_from_environ()  # first: nothing the module starts may escape it
    channel.configure_from_environ()
    # what the HOMESERVER orchestrator leaves its modules: files they create are 0644
    os.umask(0o022)
    outcome: dict[str, object]
    if mode == "maintenance":
        outcome = run_maintenance(modules_dir, name)
    else:
        outcome = run(modules_dir, name, json.loads(args_json))
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(result_fd, json.dumps(outcome).encode())
    os.close(result_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
