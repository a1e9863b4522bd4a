"""The TOML configuration: locating, parsing and type-checking it.

Loading never writes anything; the state dir is created later, by the commands
that need it.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/hs-tx/config.toml")
CONFIG_ENV = "HS_TX_CONFIG"
BACKENDS = ("auto", "btrfs", "tar")
SERVICE_MANAGERS = ("systemd", "command")
OUTSIDE_WRITES = ("warn", "fail")
SYSTEM_SCOPE = ("auto", "on", "off")
# never watched by the write audit, wherever they lie inside a watch root
BUILTIN_IGNORES = tuple(
    Path(p) for p in ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache")
)
# the service commands `[services] manager = "command"` may name, besides restart
SERVICE_ACTIONS = ("is_active", "is_enabled", "stop", "enable", "disable", "reload")


@dataclass(frozen=True)
class SourceConfig:
    """The `[source]` section: where phase 1 fetches module updates from."""

    url: str
    branch: str = "master"
    allowed_signers: str = ""
    max_age_days: int = 0
    fetch_timeout: int = 300  # seconds
    max_fetch_mb: int = 1024


@dataclass(frozen=True)
class Config:
    """Every setting hs-tx reads, with the defaults of the design."""

    state_dir: Path = Path("/var/lib/hs-tx")
    modules_dir: Path = Path("/usr/local/lib/hs-tx/modules")
    snapshot_backend: str = "auto"
    keep: int = 10
    min_free: str = "10%"  # "N%" of the filesystem, a size ("2G", "500M"), or "0": off
    extra_paths: tuple[Path, ...] = ()
    watch: tuple[Path, ...] = (Path("/"),)
    ignore: tuple[Path, ...] = ()
    outside_writes: str = "warn"
    system: str = "auto"  # whole-system scope on btrfs: auto | on | off
    module_paths: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    source: SourceConfig | None = None
    runtime_path: Path = Path("/usr/local/lib/hs-tx/runtime")
    runtime_wheels: Path | None = None
    net_guard: bool = True
    guard_interfaces: tuple[str, ...] = ()
    service_manager: str = "systemd"
    service_restart: tuple[str, ...] = ()
    service_is_active: tuple[str, ...] = ()
    service_commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    origin: str = "defaults"

    @property
    def journal_path(self) -> Path:
        """The SQLite journal file inside the state dir."""
        return self.state_dir / "journal.db"

    @property
    def lock_path(self) -> Path:
        """The flock file that serialises the commands that change anything."""
        return self.state_dir / "lock"

    @property
    def snapshots_dir(self) -> Path:
        """Where the tar backend keeps its archives and every backend its manifests."""
        return self.state_dir / "snapshots"

    @property
    def ignores(self) -> tuple[Path, ...]:
        """What the write audit never watches: the built-in ignores, the configured
        ones and the state dir (an ignore counts only inside a watch root)."""
        return (*BUILTIN_IGNORES, *self.ignore, self.state_dir)


# key -> (type name, validator); nested sections are dicts of the same shape
_SCHEMA: dict[str, Any] = {
    "state_dir": "abspath",
    "modules_dir": "abspath",
    "snapshot": {"backend": "backend", "keep": "keep", "min_free": "min_free"},
    "scope": {
        "extra_paths": "abspath_list",
        "watch": "abspath_list",
        "ignore": "abspath_list",
        "outside_writes": "outside_writes",
        "system": "system",
        "modules": "module_tables",
    },
    "runtime": {"path": "abspath", "wheels": "abspath"},
    "source": {
        "url": "nonempty_str",
        "branch": "nonempty_str",
        "allowed_signers": "str",
        "max_age_days": "days",
        "fetch_timeout": "positive_int",
        "max_fetch_mb": "positive_int",
    },
    "net": {"guard": "bool", "guard_interfaces": "str_list"},
    "services": {
        "manager": "manager",
        "restart": "str_list",
        **dict.fromkeys(SERVICE_ACTIONS, "str_list"),
    },
}


_SIZE = re.compile(r"([0-9]{1,15})(%|[KMGT]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_min_free(text: str) -> tuple[int, str] | None:
    """`[snapshot] min_free` as (number, "%" or a unit), or None when malformed."""
    match = _SIZE.fullmatch(text.strip().upper())
    if match is None or (match[2] == "%" and int(match[1]) > 99):
        return None
    return int(match[1]), match[2]


def min_free_bytes(text: str, total: int) -> int:
    """The bytes `[snapshot] min_free` asks to keep free on a filesystem of `total` bytes."""
    parsed = parse_min_free(text)
    assert parsed is not None, "checked when the config was loaded"
    number, unit = parsed
    return total * number // 100 if unit == "%" else number * _UNITS[unit]


def find_config_path(explicit: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """Given `--config` (or None) and the environment, return the one file to read.

    Returns None when no file applies (defaults). Raises ConfigError when an
    explicitly named file does not exist.
    """
    env = os.environ if environ is None else environ
    for candidate, origin in ((explicit, "--config"), (env.get(CONFIG_ENV), CONFIG_ENV)):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(
                    f"config file {path} (from {origin}) does not exist",
                    "create it or point to an existing file",
                )
            return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(explicit: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Locate, parse and check the configuration; return it. Raises ConfigError."""
    path = find_config_path(explicit, environ)
    if path is None:
        return check_state_dir(Config())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc}", "check its permissions"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply", "fix the syntax") from exc
    return check_state_dir(config_from_dict(data, str(path)))


def config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> Config:
    """Type-check a parsed TOML document and build a Config. Raises ConfigError."""
    values = _check_table(data, _SCHEMA, "", origin)
    snapshot = values.get("snapshot", {})
    scope = values.get("scope", {})
    net = values.get("net", {})
    services = values.get("services", {})
    runtime = values.get("runtime", {})
    source = values.get("source")
    if source is not None and "url" not in source:
        raise ConfigError(f"{origin}: key 'source.url' is missing", "set url or remove [source]")
    manager = services.get("manager", "systemd")
    restart = tuple(services.get("restart", ()))
    if manager == "command" and not restart:
        raise ConfigError(
            f"{origin}: key 'services.restart' is empty but services.manager is 'command'",
            'give the restart command, e.g. restart = ["/usr/local/bin/svc", "restart", "{unit}"]',
        )
    defaults = Config()
    return Config(
        state_dir=values.get("state_dir", defaults.state_dir),
        modules_dir=values.get("modules_dir", defaults.modules_dir),
        snapshot_backend=snapshot.get("backend", defaults.snapshot_backend),
        keep=snapshot.get("keep", defaults.keep),
        min_free=snapshot.get("min_free", defaults.min_free),
        extra_paths=tuple(scope.get("extra_paths", ())),
        watch=tuple(scope.get("watch", defaults.watch)),
        ignore=tuple(scope.get("ignore", ())),
        outside_writes=scope.get("outside_writes", defaults.outside_writes),
        system=scope.get("system", defaults.system),
        module_paths=scope.get("modules", {}),
        source=SourceConfig(**source) if source is not None else None,
        runtime_path=runtime.get("path", defaults.runtime_path),
        runtime_wheels=runtime.get("wheels"),
        net_guard=net.get("guard", True),
        guard_interfaces=tuple(net.get("guard_interfaces", ())),
        service_manager=manager,
        service_restart=restart,
        service_is_active=tuple(services.get("is_active", ())),
        service_commands={
            action: tuple(services[action]) for action in SERVICE_ACTIONS if action in services
        },
        origin=origin,
    )


def _check_table(
    table: dict[str, Any], schema: dict[str, Any], prefix: str, origin: str
) -> dict[str, Any]:
    """Check one TOML table against its schema; return the converted values."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(
                f"{origin}: unknown key '{name}'", f"remove it; known keys here: {known}"
            )
        kind = schema[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{name}' must be a table ([{name}])", "")
            out[key] = _check_table(value, kind, f"{name}.", origin)
        else:
            out[key] = _check_value(kind, value, name, origin)
    return out


def _check_value(kind: str, value: Any, name: str, origin: str) -> Any:
    """Check and convert one value of the given schema kind. Raises ConfigError."""

    def bad(expected: str, hint: str = "") -> ConfigError:
        return ConfigError(
            f"{origin}: key '{name}' must be {expected} (got {value!r})",
            hint or f"set {name} to {expected}",
        )

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in ("str", "nonempty_str"):
        if not isinstance(value, str) or (kind == "nonempty_str" and not value):
            raise bad("a non-empty string" if kind == "nonempty_str" else "a string")
        return value
    if kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return value
    if kind == "abspath":
        return _abspath(value, name, bad)
    if kind == "abspath_list":
        if not isinstance(value, list):
            raise bad("a list of absolute paths")
        return [_abspath(v, name, bad) for v in value]
    if kind == "keep":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("an integer >= 1", f"set {name} to 1 or more (snapshots kept for undo)")
        return value
    if kind == "backend":
        if value not in BACKENDS:
            raise bad("one of " + ", ".join(BACKENDS))
        return value
    if kind == "manager":
        if value not in SERVICE_MANAGERS:
            raise bad("one of " + ", ".join(SERVICE_MANAGERS))
        return value
    if kind == "min_free":
        if not isinstance(value, str) or parse_min_free(value) is None:
            raise bad('a percentage ("10%"), a size ("2G", "500M") or "0"')
        return value
    if kind == "positive_int":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 40:
            raise bad("a whole number >= 1")
        return value
    if kind == "days":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a whole number of days >= 0", f"set {name} to 0 (off) or more")
        return value
    if kind == "outside_writes":
        if value not in OUTSIDE_WRITES:
            raise bad("one of " + ", ".join(OUTSIDE_WRITES))
        return value
    if kind == "system":
        if value not in SYSTEM_SCOPE:
            raise bad("one of " + ", ".join(SYSTEM_SCOPE))
        return value
    if kind == "module_tables":
        return _module_tables(value, name, origin)
    raise AssertionError(f"unknown schema kind {kind}")


def _module_tables(value: Any, name: str, origin: str) -> dict[str, tuple[Path, ...]]:
    """`[scope.modules.NAME] paths = [...]`: the paths each named module adds to its scope."""
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: '{name}' must be a table ([{name}.NAME])", "")
    out = {}
    for module, table in value.items():
        where = f"{name}.{module}"
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: '{where}' must be a table ([{where}])", "")
        checked = _check_table(table, {"paths": "abspath_list"}, f"{where}.", origin)
        out[module] = tuple(checked.get("paths", ()))
    return out


def _abspath(value: Any, name: str, bad: Any) -> Path:
    """Return value as a normalised absolute Path, or raise the `bad` error."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise bad("an absolute path string")
    if not value.startswith("/"):
        raise bad("an absolute path", f"write {name} as an absolute path, e.g. /{value}")
    return Path(os.path.normpath(value))


def check_state_dir(config: Config) -> Config:
    """Refuse a state dir that exists and is writable by group or others, or that holds
    the module runtime (a rollback must be able to restore it); return config."""
    if config.runtime_path.is_relative_to(config.state_dir):
        raise ConfigError(
            f"key 'runtime.path': {config.runtime_path} lies inside the state dir",
            "put the module runtime elsewhere, e.g. /usr/local/lib/hs-tx/runtime",
        )
    try:
        st = config.state_dir.lstat()
    except FileNotFoundError:
        return config
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            f"key 'state_dir': {config.state_dir} is not a directory",
            "point state_dir at a directory (it is created 0700 when missing)",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"key 'state_dir': {config.state_dir} is writable by group or others",
            f"run: chmod go-w {config.state_dir}",
        )
    return config


def require_modules_dir(config: Config) -> Path:
    """Return the modules dir, or raise ConfigError naming the key when it is missing."""
    if not config.modules_dir.is_dir():
        raise ConfigError(
            f"key 'modules_dir': {config.modules_dir} does not exist or is not a directory",
            "create it, or set modules_dir in the config file",
        )
    return config.modules_dir
