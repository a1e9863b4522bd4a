"""systemctl for the shim: recording a service's state and putting it back.

An unreachable systemctl (not installed, no systemd, timed out) is logged and
counts as a failure, never as an exception: a module's backup or restore goes on.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .index import log_message

QUERY_TIMEOUT_S = 30  # systemctl is-active / is-enabled
CHANGE_TIMEOUT_S = 120  # systemctl start / stop / enable / disable


def systemctl(*args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run `systemctl ARGS`; return the result, or None when systemctl cannot be run."""
    try:
        return subprocess.run(
            ["systemctl", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log_message(f"systemctl {' '.join(args)} could not run: {exc}", "WARNING")
        return None


def _systemctl_ok(*args: str) -> bool:
    """Run a state-changing systemctl command; log and return False when it fails."""
    result = systemctl(*args, timeout=CHANGE_TIMEOUT_S)
    if result is not None and result.returncode == 0:
        log_message(f"systemctl {' '.join(args)}: done")
        return True
    if result is None:
        why = "systemctl unreachable"
    else:
        why = result.stderr.strip() or f"exit status {result.returncode}"
    log_message(f"systemctl {' '.join(args)} failed: {why}", "ERROR")
    return False


def service_state(service: str) -> dict[str, Any]:
    """Return `{"active": bool, "enabled": bool, "enabled_state": str}` for a unit.

    An unreachable systemctl (not installed, no systemd, timed out) counts as
    inactive and not enabled, with enabled_state "unknown" (a restore then
    leaves the unit's enablement alone).
    """
    active = systemctl("is-active", service, timeout=QUERY_TIMEOUT_S)
    enabled = systemctl("is-enabled", service, timeout=QUERY_TIMEOUT_S)
    enabled_state = enabled.stdout.strip() if enabled is not None else "unknown"
    return {
        "active": active is not None and active.stdout.strip() == "active",
        "enabled": enabled_state == "enabled",
        "enabled_state": enabled_state,
    }


def restore_services(slot: Path, services: list[str]) -> bool:
    """Return each service to its recorded enabled and active state.

    A service without a recorded state is started. Returns False when the
    record is missing or any systemctl command failed.
    """
    if not services:
        return True
    try:
        states = json.loads((slot / "services.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log_message(f"No service states to restore: {exc}", "ERROR")
        return False
    return all([_restore_service(service, states.get(service)) for service in services])


def _restore_service(service: str, state: dict[str, Any] | None) -> bool:
    if state is None:
        log_message(f"No recorded state for service {service}; starting it", "WARNING")
        return _systemctl_ok("start", service)
    ok = True
    # only the two states enable/disable can produce are put back; static,
    # masked or generated units are left as they are
    legacy = "enabled" if state.get("enabled") else "disabled"  # entries without the text
    recorded = state.get("enabled_state", legacy)
    if recorded in ("enabled", "disabled"):
        ok = _systemctl_ok("enable" if recorded == "enabled" else "disable", service)
    return _systemctl_ok("start" if state.get("active") else "stop", service) and ok


def start_services(services: list[str]) -> bool:
    """Start every service; False when any start failed."""
    return all([_systemctl_ok("start", service) for service in services])
