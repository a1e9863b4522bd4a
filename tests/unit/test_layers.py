"""The packages of hs_txupdate import one way only:
cli -> commands -> core -> {modules, sync, snapshot, net, journal, audit} -> base.

Every import in every file (lazy ones inside functions included) is read from
the source and checked against the table below, so a new upward import or a
cycle between packages fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "hs_txupdate"
BELOW_CORE = {"modules", "sync", "snapshot", "net", "journal", "audit", "base"}
# package -> the hs-tx packages it may import (besides itself and the root's __version__)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "journal": {"base"},
    "snapshot": {"base"},
    "sync": {"base"},
    "net": {"base"},
    "audit": {"base"},
    "modules": {"base", "sync"},  # same floor, one direction: version parsing
    "compat": {"base", "sync"},  # runs inside module workers: see COMPAT_MODULES
    "core": BELOW_CORE,
    "commands": {"core", *BELOW_CORE},
    "cli": {"commands", "base"},
}
# compat is loaded by every module process: only these light modules of hs-tx
COMPAT_MODULES = {
    "hs_txupdate.base.channel",
    "hs_txupdate.base.dbcopy",
    "hs_txupdate.base.fsio",
    "hs_txupdate.sync.versions",
}


def _imports(path: Path, repo: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every hs_txupdate import in `path`."""
    package = list(path.relative_to(repo).parts[:-1])  # what relative imports start from
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hs_txupdate":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name.split(".")[0] != "hs_txupdate":
                continue
            if name == "hs_txupdate" or name.count(".") == 1:
                # `from . import x` / `from .. import y`: each name may be a module
                for alias in node.names:
                    yield node.lineno, f"{name}.{alias.name}"
            else:
                yield node.lineno, name


def _layer(module: str, package: Path) -> str | None:
    """The top-level package of an hs_txupdate module (None for the root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (package / parts[1]).is_dir() else None


def _violations(package: Path = PACKAGE) -> list[str]:
    """One line per import that breaks the table, for every file under `package`."""
    repo = package.parent
    found = []
    for path in sorted(package.rglob("*.py")):
        own = _layer(".".join(path.relative_to(repo).with_suffix("").parts), package)
        if own is None:
            continue
        for line, module in _imports(path, repo):
            target = _layer(module, package)
            where = f"{path.relative_to(repo)}:{line} imports {module}"
            if target is None or target == own:
                continue
            if target not in ALLOWED[own]:
                found.append(f"{where}: {own} may import only {sorted(ALLOWED[own])}")
            elif own == "compat" and module not in COMPAT_MODULES:
                found.append(f"{where}: compat may import only {sorted(COMPAT_MODULES)}")
    return found


def test_every_package_is_in_the_table() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)


def test_imports_run_one_way() -> None:
    assert _violations() == []


def test_the_table_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, f"cycle: {' -> '.join((*path, package))}"
        if package not in done:
            for below in ALLOWED[package]:
                visit(below, (*path, package))
            done.add(package)

    for package in ALLOWED:
        visit(package, ())


def test_the_checker_sees_upward_imports(tmp_path: Path) -> None:
    # the rule must be able to fail: a lazy upward import and a heavy compat import
    package = tmp_path / "hs_txupdate"
    for name in ("journal", "core", "compat/updates"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "journal" / "x.py").write_text("def f():\n    from ..core.context import C\n")
    (package / "compat" / "updates" / "y.py").write_text("import hs_txupdate.journal.api\n")
    assert [v.split(":")[:2] for v in _violations(package)] == [
        ["hs_txupdate/compat/updates/y.py", "1 imports hs_txupdate.journal.api"],
        ["hs_txupdate/journal/x.py", "2 imports hs_txupdate.core.context"],
    ]
