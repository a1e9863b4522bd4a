"""The service layer: systemd in production, or commands the operator (or a test) gives;
recording services' states before a run and putting them back after a rollback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.proc import CommandError, run
from ..journal import Phase, Status, Step, TxInfo
from .config import Config

if TYPE_CHECKING:
    from .context import Context

_SYSTEMD = {
    "restart": ("systemctl", "restart", "{unit}"),
    "is_active": ("systemctl", "is-active", "{unit}"),
    "is_enabled": ("systemctl", "is-enabled", "{unit}"),
    "stop": ("systemctl", "stop", "{unit}"),
    "enable": ("systemctl", "enable", "{unit}"),
    "disable": ("systemctl", "disable", "{unit}"),
    "reload": ("systemctl", "daemon-reload"),
}


@dataclass(frozen=True)
class ServiceManager:
    """Restarts, stops, enables units and asks about them.

    Each command is an argument list where `{unit}` stands for the unit name;
    for systemd they are `systemctl restart|is-active|... {unit}`. A command the
    configuration does not give is not available (`None` answers, a reason).
    """

    restart_argv: tuple[str, ...]
    is_active_argv: tuple[str, ...]
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> ServiceManager:
        """The manager the configuration names."""
        if config.service_manager == "command":
            return cls(config.service_restart, config.service_is_active, config.service_commands)
        return cls(_SYSTEMD["restart"], _SYSTEMD["is_active"], dict(_SYSTEMD))

    def restart(self, unit: str) -> str | None:
        """Restart `unit`; return None on success, else a one-line reason."""
        return self._do(self.restart_argv, unit)

    def act(self, action: str, unit: str = "") -> str | None:
        """Run `action` (stop, enable, disable, reload) for `unit`; None on success,
        else a one-line reason (also when the action is not configured)."""
        argv = self.commands.get(action)
        if not argv:
            return f"no [services] {action} command is configured"
        return self._do(argv, unit)

    def is_active(self, unit: str) -> bool:
        """True when `unit` is active; a manager that cannot be reached counts as inactive."""
        if not self.is_active_argv:
            return False
        try:
            return run(_fill(self.is_active_argv, unit), check=False, timeout=30).returncode == 0
        except CommandError:
            return False

    def enabled(self, unit: str) -> str | None:
        """`is-enabled`'s word for `unit` (enabled, disabled, static, ...), or None when
        it cannot be asked."""
        argv = self.commands.get("is_enabled")
        if not argv:
            return None
        try:
            word = run(_fill(argv, unit), check=False, timeout=30).stdout.strip()
        except CommandError:
            return None
        return word or None

    def _do(self, argv: tuple[str, ...], unit: str) -> str | None:
        try:
            run(_fill(argv, unit), timeout=120)
        except CommandError as exc:
            return exc.message
        return None


def _fill(argv: tuple[str, ...], unit: str) -> list[str]:
    return [part.replace("{unit}", unit) for part in argv]


def service_state(ctx: Context, unit: str) -> dict[str, Any]:
    """`{"active": bool, "enabled": word or None}` of `unit` now."""
    return {"active": ctx.services.is_active(unit), "enabled": ctx.services.enabled(unit)}


def record_services(
    ctx: Context, tx_id: int, units: list[str], source: str
) -> dict[str, dict[str, Any]]:
    """Journal each unit's state before the run changes it (a unit's first record
    wins); return the states read now, by unit."""
    states = {unit: service_state(ctx, unit) for unit in dict.fromkeys(units)}
    for unit, state in states.items():
        ctx.journal.add_service(tx_id, unit, state["active"], state["enabled"], source)
    return states


def put_back(ctx: Context, tx_id: int, unit: str, active: bool | None, enabled: str | None) -> None:
    """Bring `unit` back to a recorded state, journaled on `tx_id`: its enablement
    (enabled or disabled only; static, masked and unknown ones are left alone),
    then running (restarted, so it reads its restored files) or stopped. A failure
    is warned about, never fatal."""
    detail = {"unit": unit, "active": active, "enabled": enabled}
    with ctx.journal.step(tx_id, Phase.SERVICES, Step.PUT_BACK, detail) as step:
        problems = []
        if enabled in ("enabled", "disabled") and ctx.services.enabled(unit) != enabled:
            problems.append(ctx.services.act("enable" if enabled == "enabled" else "disable", unit))
        if active:
            problems.append(ctx.services.restart(unit))
        elif active is False and ctx.services.is_active(unit):
            problems.append(ctx.services.act("stop", unit))
        errors = [p for p in problems if p is not None]
        if errors:
            step.fail(error="; ".join(errors))
    for error in errors:
        ctx.log(f"hs-tx: warning: service {unit}: {error}")


# where a changed unit file means systemd must reload its configuration
UNIT_DIRS = (Path("/etc/systemd/system"),)


def services_of(info: TxInfo) -> list[str]:
    """The services of the modules that started running in a transaction, in order."""
    units: list[str] = []
    for event in info.events:
        if event.phase == Phase.MODULES and event.status == Status.INTENT and event.detail:
            unit = event.detail.get("service")
            if unit and unit not in units:
                units.append(unit)
    return units


def put_back_services(ctx: Context, on_tx: int, info: TxInfo, changed: list[Path]) -> None:
    """After the files of transaction `info` were put back (`changed`: the paths a
    restore changed): reload systemd when a unit file was among them or among the
    run's outside-scope changes, then bring every service the transaction recorded
    back to its state before it, and restart the services of modules that ran but
    have no record (journals of an older hs-tx). Journaled on `on_tx`."""
    touched = [*changed, *(Path(o.path) for o in info.outside)]
    if any(p.is_relative_to(d) or d.is_relative_to(p) for p in touched for d in UNIT_DIRS):
        with ctx.journal.step(on_tx, Phase.SERVICES, Step.DAEMON_RELOAD) as step:
            problem = ctx.services.act("reload")
            if problem is not None:
                step.fail(error=problem)
                ctx.log(f"hs-tx: warning: systemd did not reload: {problem}")
    recorded = ctx.journal.services(info.id)
    for service in recorded:
        put_back(ctx, on_tx, service.unit, service.active, service.enabled)
    known = {service.unit for service in recorded}
    for unit in services_of(info):
        if unit not in known:
            put_back(ctx, on_tx, unit, True, None)


def unit_files(paths: list[Path]) -> list[str]:
    """The systemd units whose files lie at the given paths (a unit file, or a unit
    dir's files directly inside it), for the paths under UNIT_DIRS."""
    units = []
    for path in paths:
        if not any(path.is_relative_to(d) for d in UNIT_DIRS):
            continue
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        units += [p.name for p in candidates if p.suffix in _UNIT_SUFFIXES]
    return units


_UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
