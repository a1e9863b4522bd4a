"""`updates.utils`: helpers HOMESERVER modules import, re-exported as the
published package does (`from updates.utils import log_message`, ...).

The published package also re-exports version_control and maintenanceRunner
helpers; under hs-tx those are the orchestrator's own work (module versions
come from the source repo, maintenance runs in phase 2), so they are absent.
"""

from .index import get_module_version, log_message
from .permissions import (
    PermissionManager,
    PermissionTarget,
    create_service_permission_targets,
    fix_common_service_permissions,
    restore_service_permissions_simple,
)
from .state_manager import StateManager

__all__ = [
    "PermissionManager",
    "PermissionTarget",
    "StateManager",
    "create_service_permission_targets",
    "fix_common_service_permissions",
    "get_module_version",
    "log_message",
    "restore_service_permissions_simple",
]
