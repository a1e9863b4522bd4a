"""Finding modules in `modules_dir` and validating their index.json.

The format is the HOMESERVER updates orchestrator's: `metadata` (schema_version,
enabled, priority, timeout, service_name, group, group_order) and
`configuration` or `config` (backup_paths, service_name, ...).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import ModuleDefinitionError
from ..sync.versions import Version, VersionError

DEFAULT_PRIORITY = 100
DEFAULT_TIMEOUT = 600.0
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Module:
    """One installed module, as its index.json describes it."""

    name: str
    path: Path
    index: dict[str, Any] = field(repr=False, compare=False)
    enabled: bool
    schema_version: str
    priority: int = DEFAULT_PRIORITY
    timeout: float = DEFAULT_TIMEOUT
    backup_paths: tuple[Path, ...] = ()
    service_name: str | None = None
    group: str | None = None
    group_order: int | None = None

    @property
    def sort_key(self) -> tuple[int, str]:
        """Run order: ascending priority, then name."""
        return (self.priority, self.name)


def check_module_name(name: str) -> str:
    """Return `name` if it can name a module dir; raise ModuleDefinitionError otherwise."""
    if not _NAME.match(name) or ".." in name:
        raise ModuleDefinitionError(
            f"invalid module name {name!r}",
            "a module name is letters, digits, '_', '-' and '.', with no '/' or '..'",
        )
    return name


def discover(modules_dir: Path) -> list[Module]:
    """Every module under `modules_dir`, sorted in run order.

    Raises ModuleDefinitionError for a module dir without index.json or with a
    malformed one (for a disabled module only the JSON itself must parse).
    """
    modules = []
    for entry in sorted(os.scandir(modules_dir), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith((".", "__")):
            continue
        modules.append(load_module(Path(entry.path)))
    return sorted(modules, key=lambda m: m.sort_key)


@dataclass(frozen=True)
class Listed:
    """One module dir as `hs-tx modules list` shows it, readable or not.

    `index` is the parsed index.json (None when it could not be read), `module`
    the validated Module (None when validation failed), `problem` why not.
    """

    name: str
    path: Path
    index: Any
    module: Module | None
    problem: str | None


def discover_all(modules_dir: Path) -> list[Listed]:
    """Every module dir under `modules_dir`, sorted by name, never raising for one.

    The tolerant sibling of `discover()` for read-only views: a malformed
    module is listed with what could be read and its problem.
    """
    listed = []
    for entry in sorted(os.scandir(modules_dir), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith((".", "__")):
            listed.append(_listed(Path(entry.path)))
    return listed


def discover_usable(modules_dir: Path) -> tuple[list[Module], list[Listed]]:
    """The modules under `modules_dir` that can run (in run order), and those whose
    index.json is unusable (each with its problem). Never raises for one module:
    a broken module must not keep the others from running."""
    listed = discover_all(modules_dir)
    usable = [item.module for item in listed if item.module is not None]
    broken = [item for item in listed if item.module is None]
    return sorted(usable, key=lambda m: m.sort_key), broken


def _listed(path: Path) -> Listed:
    try:
        module = load_module(path)
    except ModuleDefinitionError as exc:
        return Listed(path.name, path, _read_json(path / "index.json"), None, str(exc))
    return Listed(path.name, path, module.index, module, None)


def _read_json(path: Path) -> Any:
    """The parsed JSON of `path`, or None when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def is_installed(modules_dir: Path, name: str) -> bool:
    """Whether `name` is a module dir that discovery sees (no symlink, no hidden dir)."""
    path = modules_dir / name
    return path.is_dir() and not path.is_symlink() and not name.startswith((".", "__"))


def load_module(path: Path) -> Module:
    """Read and validate `path/index.json`; return the Module. Raises ModuleDefinitionError."""
    name = check_module_name(path.name)
    index_file = path / "index.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModuleDefinitionError(
            f"module {name}: {index_file} is missing",
            "every module dir needs an index.json; remove the dir if it is not a module",
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModuleDefinitionError(
            f"module {name}: index.json is malformed: {exc}", f"fix {index_file}"
        ) from exc
    return module_from_index(name, path, index)


def module_from_index(name: str, path: Path, index: Any) -> Module:
    """Validate a parsed index.json of module `name` living at `path`; return the Module.

    Raises ModuleDefinitionError naming the module and the field.
    """

    def bad(field_name: str, problem: str) -> ModuleDefinitionError:
        return ModuleDefinitionError(
            f"module {name}: field '{field_name}' {problem}", f"fix {path / 'index.json'}"
        )

    if not isinstance(index, dict):
        raise bad("(top level)", "must be a JSON object")
    meta = index.get("metadata")
    if not isinstance(meta, dict):
        raise bad("metadata", "is missing or not an object")
    config = index.get("configuration", index.get("config", {}))
    if not isinstance(config, dict):
        raise bad("configuration", "must be an object")
    enabled = meta.get("enabled", True)
    if not isinstance(enabled, bool):
        raise bad("metadata.enabled", "must be true or false")
    raw_version = meta.get("schema_version")
    try:
        version = str(Version.parse(raw_version))
    except VersionError as exc:
        if enabled:
            raise bad("metadata.schema_version", f"is not valid: {exc}") from exc
        version = str(raw_version)
    if not enabled:
        return Module(name, path, index, False, version)
    return Module(
        name=name,
        path=path,
        index=index,
        enabled=True,
        schema_version=version,
        priority=_int_field(meta, "priority", DEFAULT_PRIORITY, bad),
        timeout=_timeout(meta, bad),
        backup_paths=_backup_paths(config, bad),
        service_name=_opt_str(meta, "service_name", bad) or _opt_str(config, "service_name", bad),
        group=_opt_str(meta, "group", bad),
        group_order=_int_field(meta, "group_order", None, bad),
    )


def _int_field(table: dict[str, Any], key: str, default: int | None, bad: Any) -> Any:
    value = table.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad(f"metadata.{key}", "must be an integer")
    return value


def _timeout(meta: dict[str, Any], bad: Any) -> float:
    value = meta.get("timeout", DEFAULT_TIMEOUT)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise bad("metadata.timeout", "must be a positive number of seconds")
    return float(value)


def _opt_str(table: dict[str, Any], key: str, bad: Any) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise bad(key, "must be a string")
    return value or None


def _backup_paths(config: dict[str, Any], bad: Any) -> tuple[Path, ...]:
    raw = config.get("backup_paths", [])
    if not isinstance(raw, list):
        raise bad("configuration.backup_paths", "must be a list of absolute paths")
    paths = []
    for item in raw:
        if not isinstance(item, str) or not item.startswith("/") or "\0" in item:
            raise bad("configuration.backup_paths", f"has {item!r}, which is not an absolute path")
        if ".." in item.split("/"):
            raise bad("configuration.backup_paths", f"has {item!r}, which contains '..'")
        normal = Path(os.path.normpath(item))
        if normal == Path("/"):
            raise bad("configuration.backup_paths", "has '/', the whole system")
        paths.append(normal)
    return tuple(paths)
