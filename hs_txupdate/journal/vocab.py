"""The journal's vocabulary: every word it stores, defined once as a StrEnum.

The values are the exact strings stored in SQLite, so journals written before
these types existed read back unchanged. Records read from the journal keep
plain strings (a newer hs-tx may have written a word this one does not know);
compare them with these members, never with string literals.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What started a transaction."""

    UPDATE = "update"
    UNDO = "undo"
    CONFIG = "config"
    PRUNE = "prune"  # hs-tx prune --orphans: deletes snapshots no journal relies on


class State(StrEnum):
    """Where a transaction is: four running states, four final ones."""

    OPEN = "open"
    SNAPSHOTTED = "snapshotted"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        """True for the states a transaction ends in."""
        return self in FINAL_STATES


RUNNING_STATES = (State.OPEN, State.SNAPSHOTTED, State.RUNNING, State.ROLLING_BACK)
FINAL_STATES = (State.COMMITTED, State.ROLLED_BACK, State.ROLLBACK_FAILED, State.ABORTED)


class Phase(StrEnum):
    """The part of a transaction an event belongs to."""

    PLAN = "plan"
    NET = "net"
    SOURCE = "source"
    SNAPSHOT = "snapshot"
    SCHEMA = "schema"
    MODULES = "modules"
    SELF_UPDATE = "self-update"
    CONFIG = "config"
    UNDO = "undo"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SERVICES = "services"
    RETENTION = "retention"
    RECOVER = "recover"
    AUDIT = "audit"
    STATEMANAGER = "statemanager"
    RUNTIME = "runtime"

    @property
    def changes_system(self) -> bool:
        """True when an event of this phase means the system may have been changed."""
        return self in CHANGING_PHASES


# Recovery rolls back a transaction that has an event of one of these phases.
CHANGING_PHASES = frozenset(
    {
        Phase.SCHEMA,
        Phase.MODULES,
        Phase.SELF_UPDATE,
        Phase.CONFIG,
        Phase.UNDO,
        Phase.ROLLBACK,
        Phase.STATEMANAGER,
        Phase.RUNTIME,
    }
)


class Step(StrEnum):
    """What an event's step did."""

    SCOPE = "scope"
    FETCH = "fetch"
    CAPTURE = "capture"
    PREFLIGHT = "preflight"
    GATE = "gate"
    CHECK = "check"
    REPLACE = "replace"
    RUN = "run"
    MAINTENANCE = "maintenance"
    GROUP = "group"
    INSTALL = "install"
    EXEC = "exec"
    SET_ENABLED = "set-enabled"
    SET_COMPONENT = "set-component"
    SET_BRANCH = "set-branch"
    DECISION = "decision"
    RESTORE = "restore"
    RESTORE_BATCH = "restore-batch"
    RESTART = "restart"
    DELETE_SNAPSHOTS = "delete-snapshots"
    START = "start"
    BACKUP = "backup"
    BUILD = "build"
    FINISH = "finish"
    KEEP_RUN_STATE = "keep-run-state"
    PUT_BACK = "put-back"
    DAEMON_RELOAD = "daemon-reload"
    ACCEPT_CURRENT = "accept-current"
    BROKEN = "broken"
    DELETE_ORPHAN = "delete-orphan"
    RELEASE_FOR_SPACE = "release-for-space"


class Status(StrEnum):
    """An event's status: the intent before a step acts, its outcome after."""

    INTENT = "intent"
    DONE = "done"
    FAILED = "failed"
    EXISTS = "exists"  # a network restore found what it was to add already there


class RunStatus(StrEnum):
    """How a module run ended (`running` while it runs)."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


class Decision(StrEnum):
    """The outcome a `decision` event records; once durable, recovery follows it."""

    COMMIT = "commit"
    ROLLBACK = "rollback"


class Origin(StrEnum):
    """Why a path is in a transaction's scope."""

    MODULE = "module"  # the module's own dir
    INDEX = "index.json"  # configuration.backup_paths
    STATEMANAGER = "statemanager"  # a StateManager backup call added it mid-run
    LEARNED = "learned"  # the module changed it outside the scope in an earlier run
    CONFIG = "config"  # [scope.modules.NAME] paths
    EXTRA = "extra_paths"  # [scope] extra_paths
    SELF = "self-update"  # hs-tx's own install dir
    RUNTIME = "runtime"  # the module runtime, rebuilt by this run
    UNDO = "undo"  # what the undone transaction changed
    SYSTEM = "system"  # a subvolume (or watched root) of the whole-system scope


POINT = "point"  # scope path role: a point-in-time snapshot only restore_module_state uses
