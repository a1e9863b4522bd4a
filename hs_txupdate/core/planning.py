"""Planning a run from the fetched source: what phases 1 and 3 will install and which
paths the run's scope holds. `update` and `update --check` both plan here, so a
check reports exactly what a real run would do. Changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..journal import Origin
from ..modules.discovery import Module
from ..sync.git import SourceState
from . import phase1, phase3
from .config import Config
from .runtime import RuntimeBuild, plan_runtime
from .scope import Planned, plan_paths
from .system import system_paths, system_scope, with_system


@dataclass
class RunPlan:
    """What a run will do, planned before anything changes."""

    installed: dict[str, Module]
    schema: phase1.Phase1Plan | None = None
    self_update: phase3.SelfUpdate | None = None
    runtime: RuntimeBuild | None = None
    paths: list[Planned] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def future(self) -> dict[str, Module]:
        """The modules as they will be once phase 1 ran, by name."""
        return self.schema.future(self.installed) if self.schema else self.installed


def plan_run(
    config: Config,
    installed: dict[str, Module],
    state: SourceState | None,
    allow_downgrade: bool = False,
    learned: list[tuple[str, str]] | None = None,
) -> RunPlan:
    """Given the installed modules, the fetched source (None without [source]) and
    the learned (module, path) footprints, return the run's plan: phase 1 changes,
    the self-update, the folded scope and the notes for the operator.

    Raises SourceError / ModuleDefinitionError when the source is unusable, ScopeError
    when `[scope] system = "on"` cannot be honoured (see core.system).
    """
    plan = RunPlan(installed)
    if state is not None:
        plan.schema = phase1.plan(state, config.modules_dir, installed, allow_downgrade)
        plan.notes.extend(plan.schema.notes)
        plan.self_update, note = phase3.plan(state)
        if note:
            plan.notes.append(note)
    plan.runtime = plan_runtime(config, state)
    own = []
    if plan.self_update is not None:
        own.append(Planned(plan.self_update.install_dir, Origin.SELF))
    if plan.runtime is not None:
        own.append(Planned(plan.runtime.path, Origin.RUNTIME))
    plan.paths = plan_paths(config, installed.values(), plan.future.values(), own, learned or [])
    system, note = system_scope(config)
    if note is not None:
        plan.notes.append(note)
    if system:
        plan.paths = with_system(config, system_paths(config), plan.paths)
    return plan
