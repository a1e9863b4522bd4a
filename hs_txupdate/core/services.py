"""The service layer: systemd in production, or commands the operator (or a test) gives."""

from __future__ import annotations

from dataclasses import dataclass

from ..base.proc import CommandError, run
from .config import Config


@dataclass(frozen=True)
class ServiceManager:
    """Restarts units and asks whether they are active.

    `restart` and `is_active` are argument lists where `{unit}` stands for the
    unit name; for systemd they are `systemctl restart|is-active {unit}`.
    """

    restart_argv: tuple[str, ...]
    is_active_argv: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config) -> ServiceManager:
        """The manager the configuration names."""
        if config.service_manager == "command":
            return cls(config.service_restart, config.service_is_active)
        return cls(("systemctl", "restart", "{unit}"), ("systemctl", "is-active", "{unit}"))

    def restart(self, unit: str) -> str | None:
        """Restart `unit`; return None on success, else a one-line reason."""
        try:
            run(_fill(self.restart_argv, unit), timeout=120)
        except CommandError as exc:
            return exc.message
        return None

    def is_active(self, unit: str) -> bool:
        """True when `unit` is active; a manager that cannot be reached counts as inactive."""
        if not self.is_active_argv:
            return False
        try:
            return run(_fill(self.is_active_argv, unit), check=False, timeout=30).returncode == 0
        except CommandError:
            return False


def _fill(argv: tuple[str, ...], unit: str) -> list[str]:
    return [part.replace("{unit}", unit) for part in argv]
